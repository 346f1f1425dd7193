"""Preemption: SIGTERM (a cluster's time limit) ends the run after the step in flight with a complete checkpoint,
run.json says ``stopped``, the exit status is 128 + the signal, and the same command resumes to exactly the run an
uninterrupted one would have been."""

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from helpers.accelerate_launch import accelerate_launch
from helpers.training_process import start_until_step
from safetensors.torch import load_file

from grpo_audio.recipe import load_recipe
from grpo_audio.train.preemption import PreemptedError
from grpo_audio.train.run import train

ROOT = Path(__file__).resolve().parents[1]
UNSTABLE = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")


def overrides(run_dir: Path) -> list[str]:
    return [
        f"run.output_dir={run_dir}",
        "data.synthetic.num_questions=8",
        "rollout.max_completion_length=12",
        "trainer.max_steps=6",
        "trainer.save_steps=100",  # no periodic checkpoint: the one written on the signal is the only one
        "trainer.learning_rate=1e-3",
    ]


def stable_metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in UNSTABLE and not k.startswith("time/")} for r in rows]


def weights(run_dir: Path) -> dict:
    return load_file(next((run_dir / "final_model").glob("*.safetensors")))


def test_the_exit_status_is_128_plus_the_signal():
    assert PreemptedError(signal.SIGTERM, 3, None).exit_status == 143
    assert PreemptedError(signal.SIGUSR1, 3, "c").exit_status == 138
    assert str(PreemptedError(signal.SIGUSR1, 3, "c")) == "stopped by SIGUSR1 after step 3; checkpoint c"


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_in_flight_and_the_same_command_resumes_exactly(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    train(load_recipe(None, overrides(uninterrupted)))

    run_dir = tmp_path / "preempted"
    command = [sys.executable, "-m", "grpo_audio", "train"]
    for item in overrides(run_dir):
        command += ["--set", item]
    proc = start_until_step(command, 2, ROOT, {**os.environ, "HF_HUB_OFFLINE": "1"})
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "stopped" and record["error"].startswith("stopped by SIGTERM after step ")
    checkpoints = sorted(p.name for p in (run_dir / "trainer").glob("checkpoint-*"))
    assert checkpoints in (["checkpoint-2"], ["checkpoint-3"])  # the step in flight was finished, none lost
    last = err.strip().splitlines()[-1]
    assert last == (
        f"grpo-audio: {record['error']}. Last checkpoint: {run_dir / 'trainer' / checkpoints[0]}. "
        "Run the same command to resume from it."
    )
    assert not (run_dir / "final_model").exists()

    train(load_recipe(None, overrides(run_dir)))  # the same command
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert stable_metrics(run_dir) == stable_metrics(uninterrupted)
    a, b = weights(run_dir), weights(uninterrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
    """SIGUSR1 (SLURM's --signal) reaches rank 1 only: the all-reduce at the step's end stops rank 0 at the same
    step, the checkpoint holds both ranks' state, and a 2-process resume ends as the uninterrupted 1-process run."""
    import psutil

    sys.path.insert(0, str(ROOT / "tests"))
    from test_scale_out import final_weights, launch

    one = tmp_path / "one"
    launch(one, 1, tmp_path / "one_probe.jsonl", "trainer.max_steps=5", "trainer.save_steps=100")

    run_dir = tmp_path / "two"
    command = [*accelerate_launch(), "-m", "grpo_audio", "train"]
    from test_scale_out import COMMON, PROMPTS_PER_STEP, G

    settings = [f"run.output_dir={run_dir}", f"trainer.per_device_train_batch_size={PROMPTS_PER_STEP * G // 2}"]
    for item in [*settings, *COMMON, "trainer.max_steps=5", "trainer.save_steps=100"]:
        command += ["--set", item]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "helpers"), os.environ.get("PYTHONPATH", "")]),
        "GROUP_PROBE_LOG": str(tmp_path / "two_probe.jsonl"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    proc = start_until_step(command, 2, ROOT, env)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "grpo_audio" in " ".join(p.cmdline())]
    rank1 = next(p for p in workers if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGUSR1)
    proc.communicate(timeout=600)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "stopped" and record["error"].startswith("stopped by SIGUSR1 after step ")
    (checkpoint,) = list((run_dir / "trainer").glob("checkpoint-*"))
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}

    launch(run_dir, 2, tmp_path / "two_probe.jsonl", "trainer.max_steps=5", "trainer.save_steps=100")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    a, b = final_weights(run_dir), final_weights(one)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
