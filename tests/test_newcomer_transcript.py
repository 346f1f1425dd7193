"""A newcomer's second day, as a transcript of real commands: train the first command's recipe briefly, evaluate
the trained model on its held-out split without flags, stop a run with Ctrl-C and resume it with the same command,
and score rewards by hand. Each step exits as the README says and prints what it says."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.training_process import start_until_step

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SHORT = ["coldstart.steps=4", "eval.every_steps=0", "trainer.save_steps=1", "data.synthetic.heldout_questions=8"]


def grpo_audio(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "grpo_audio", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600
    )
    return done


def train_args(run_dir: Path, steps: int) -> list[str]:
    args = ["train", "configs/learn_pitch.yaml"]
    for item in [f"run.output_dir={run_dir}", f"trainer.max_steps={steps}", *SHORT]:
        args += ["--set", item]
    return args


@pytest.mark.slow
def test_a_newcomers_second_day(tmp_path):
    run_dir = tmp_path / "learn_pitch"
    first = grpo_audio(*train_args(run_dir, 2))
    assert first.returncode == 0, first.stderr[-3000:]
    # the eval set 'tones' before the first step and at the end, sampled at the training temperature
    for step in (0, 2):
        assert f"grpo-audio: eval 'tones' at step {step}: accuracy " in first.stdout
    assert "sampled at T=0.7 (8 per item)" in first.stdout and "n=8" in first.stdout
    assert f"report (curves and rollout browser) in {run_dir / 'report' / 'index.html'}" in first.stdout

    evaluated = grpo_audio("eval", "--model", str(run_dir / "final_model"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"no --benchmark: the run's held-out split, {run_dir / 'data' / 'heldout' / 'manifest.jsonl'}" in (
        evaluated.stdout
    )
    assert (run_dir / "eval" / "final_model-manifest-greedy" / "metrics.md").is_file()

    scored = grpo_audio(
        "rewards", "score", "--rewards", "configs/learn_pitch.yaml", "--input", str(run_dir / "rollouts.jsonl"),
        "--group-size", "4",
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "R_total" in scored.stdout and "advantage" in scored.stdout

    second = tmp_path / "stopped"
    proc = start_until_step([sys.executable, "-m", "grpo_audio", *train_args(second, 40)], 2, ROOT, ENV)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Run the same command to resume from it." in err.strip().splitlines()[-1]
    resumed = grpo_audio(*train_args(second, 40))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "checkpoint-" in resumed.stdout
