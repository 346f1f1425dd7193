"""A judge that dies mid-run: a real judge server process (``tests/helpers/judge_server.py``) killed after a step and
started again later.

* Within ``rewards.max_unscored_fraction`` the run goes on: the rows scored while the judge is down are unscored,
  counted and logged with the connection error, and scoring resumes when the judge answers again.
* Past it, the run stops before the step's update with one line naming the failures and a checkpoint of the last
  finished step; once the judge is back the same command resumes, and the run ends exactly as one whose judge never
  went down (``grpo_audio.train.scoring_stop``).
"""

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers.ports import start_on_some_port
from safetensors.torch import load_file
from transformers import TrainerCallback

from grpo_audio.cli import main
from grpo_audio.recipe import load_recipe
from grpo_audio.train import run as training
from grpo_audio.train.run import train
from rewards.judge.scorers import reset_judges

SERVER = Path(__file__).resolve().parent / "helpers" / "judge_server.py"
UNSTABLE = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")


class JudgeProcess:
    """The judge server as a separate process: started, SIGKILLed, and started again on the same port."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.process, self.url = start_on_some_port(self.command, {}, log, "/v1/models", timeout_s=60)
        self.port = int(self.url.rsplit(":", 1)[1])

    @staticmethod
    def command(port: int) -> list[str]:
        return [sys.executable, str(SERVER), str(port)]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def restart(self) -> None:
        with self.log.open("a") as out:
            self.process = subprocess.Popen(self.command(self.port), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/v1/models", timeout=5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the judge did not come back: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.2)


class Outage(TrainerCallback):
    """Kills the judge when step ``down_after`` ends; starts it again when step ``up_after`` ends (if given)."""

    def __init__(self, judge: JudgeProcess, down_after: int, up_after: int | None = None) -> None:
        self.judge, self.down_after, self.up_after = judge, down_after, up_after

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.down_after:
            self.judge.kill()
        if state.global_step == self.up_after:
            self.judge.restart()


@pytest.fixture
def judge(tmp_path):
    process = JudgeProcess(tmp_path / "judge.log")
    reset_judges()  # verdicts are cached in memory per judge: each run in this process starts with none
    yield process
    process.process.kill()
    process.process.wait(timeout=30)
    reset_judges()


def overrides(run_dir: Path, url: str, *extra: str) -> list[str]:
    options = f'{{url: "{url}/v1", model: judge-8b, retries: 0, timeout_s: 10}}'
    terms = f'[{{name: accuracy}}, {{name: "helpers.judged_rewards:consistency_of_stand_ins", label: judge, weight: 0.5, options: {options}}}]'  # noqa: E501
    return [
        f"run.output_dir={run_dir}",
        "data.synthetic.num_questions=8",
        "rollout.max_completion_length=12",
        "trainer.max_steps=6",
        "trainer.save_steps=100",  # no periodic checkpoint: the one written on the stop is the only one
        "trainer.learning_rate=1e-3",
        f"rewards.terms={terms}",
        *extra,
    ]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stable_metrics(run_dir: Path) -> list[dict]:
    rows = jsonl(run_dir / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in UNSTABLE and not k.startswith("time/")} for r in rows]


def rollouts(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "audio"} for r in jsonl(run_dir / "rollouts.jsonl")]  # audio: a path


def weights(run_dir: Path) -> dict:
    return load_file(next((run_dir / "final_model").glob("*.safetensors")))


@pytest.mark.slow
def test_a_judge_down_for_two_steps_leaves_them_unscored_and_scoring_resumes(tmp_path, judge, capsys):
    run_dir = tmp_path / "run"
    recipe = load_recipe(None, overrides(run_dir, judge.url, "rewards.max_unscored_fraction=1.0"))
    train(recipe, extra_callbacks=[Outage(judge, down_after=2, up_after=4)])

    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    records = jsonl(run_dir / "rollouts.jsonl")
    by_step = {step: [r for r in records if r["step"] == step] for step in range(1, 7)}
    for step in (3, 4):  # the judge was down: every row unscored, with the connection error, and no advantage
        for record in by_step[step]:
            assert record["R_total"] is None and record["advantage"] == 0.0
            assert record["unscored"].startswith("judge: connection: ConnectionRefusedError")
            assert f"(consistency judge 'judge-8b' at {judge.url}/v1)" in record["unscored"]
    for step in (1, 2, 5, 6):  # up: every row scored by a verdict of the judge
        assert all(r["unscored"] is None and r["rewards"]["judge"] in (0.0, 1.0) for r in by_step[step])
    unscored = [m["rewards/unscored_frac"] for m in jsonl(run_dir / "metrics.jsonl") if "rewards/unscored_frac" in m]
    assert unscored == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.startswith(f"step {i}/6 | R_total n/a |") for i, line in enumerate(progress, 1)] == [
        False,
        False,
        True,
        True,
        False,
        False,
    ]
    assert all("unscored 8 (100%)" in line for line in progress[2:4])


@pytest.mark.slow
def test_a_judge_down_past_the_limit_stops_after_a_checkpoint_and_the_same_command_resumes_exactly(
    tmp_path, judge, monkeypatch, capsys
):
    uninterrupted = tmp_path / "uninterrupted"
    train(load_recipe(None, overrides(uninterrupted, judge.url)))
    reset_judges()

    run_dir = tmp_path / "run"
    build = training.build_training
    monkeypatch.setattr(
        training, "build_training", lambda recipe, callbacks=(), opened=None: build(recipe, [Outage(judge, 2)], opened)
    )
    argv = ["train"] + [arg for item in overrides(run_dir, judge.url) for arg in ("--set", item)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    checkpoint = run_dir / "trainer" / "checkpoint-2"
    # The refusal's own wording (socket or event loop) is the OS's: match its kind, pin the rest.
    head = (
        "error: 8 of 8 completions (100%) are unscored, more than rewards.max_unscored_fraction=0.2 allows: judge "
        'failed on 8 (first: "connection: ConnectionRefusedError: [Errno 111] '
    )
    tail = (
        f"(consistency judge 'judge-8b' at {judge.url}/v1)\"); the run stopped at step 3, before its update; "
        f"checkpoint {checkpoint} holds step 2, and the same command resumes from it"
    )
    assert re.fullmatch(re.escape(head) + r"[^\n]*" + re.escape(tail), err.splitlines()[-1]), err
    assert sorted(p.name for p in (run_dir / "trainer").glob("checkpoint-*")) == ["checkpoint-2"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("ScoringStoppedError: 8 of 8 completions")

    monkeypatch.setattr(training, "build_training", build)
    judge.restart()
    reset_judges()
    train(load_recipe(None, overrides(run_dir, judge.url)))  # the same command, the judge answering again
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["resumes"][0]["checkpoint"] == str(checkpoint)
    assert stable_metrics(run_dir) == stable_metrics(uninterrupted)
    assert rollouts(run_dir) == rollouts(uninterrupted)  # the stopped step's batch was drawn again, alike
    a, b = weights(run_dir), weights(uninterrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_stop_together_after_one_checkpoint_when_scoring_fails(tmp_path):
    """The stop past the limit with 2 processes (accelerate, gloo): rewards are scored on process 0, every process
    sees the global breakdown, so both stop before step 3's update after one checkpoint of step 2 holding both
    processes' state, each with the same one line."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_scale_out import launch

    run_dir = tmp_path / "run"
    terms = '[{name: "failing_rewards:down_after", label: judge, options: {calls: 2}}]'
    done = launch(
        run_dir, 2, tmp_path / "probe.jsonl", f"rewards.terms={terms}", "trainer.max_steps=4",
        "trainer.save_steps=100", expect_failure=True,
    )  # fmt: skip
    checkpoint = run_dir / "trainer" / "checkpoint-2"
    line = (
        "error: 12 of 12 completions (100%) are unscored, more than rewards.max_unscored_fraction=0.2 allows: judge "
        "failed on 12 (first: 'stub judge went down'); the run stopped at step 3, before its update; checkpoint "
        f"{checkpoint} holds step 2, and the same command resumes from it"
    )
    assert done.stderr.count(line) == 2, done.stderr[-4000:]  # one per process (their lines may interleave)
    assert sorted(p.name for p in (run_dir / "trainer").glob("checkpoint-*")) == ["checkpoint-2"]
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
