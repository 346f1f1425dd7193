"""The CLI wiring of the reward tools."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_audio.cli import main
from grpo_audio.resources import shipped_dir

ROOT = Path(__file__).resolve().parents[1]


def test_rewards_score_uses_the_recipes_reward_section(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    sample = {"answer": "high", "choices": ["high", "low"]}
    rows.write_text(
        json.dumps({"completion": "<think>a high tone</think><answer>high</answer>", "sample": sample})
        + "\n"
        + json.dumps({"completion": "low", "sample": sample})
        + "\n"
    )
    demo = shipped_dir("configs") / "demo.yaml"
    assert main(["rewards", "score", "--rewards", str(demo), "--input", str(rows)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["accuracy"][2] == "0.5000" and lines["format"][2] == "0.5000"
    assert lines["R_total"][1] == "1.0000"


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_naming_the_checkpoint_to_resume_from(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "grpo_audio", "train", "configs/demo.yaml"]
    for item in (f"run.output_dir={run_dir}", "trainer.max_steps=200", "trainer.save_steps=1"):
        command += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    for line in proc.stdout:  # the second step is done: checkpoint-1 is complete
        if line.startswith("step 2/"):
            break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("grpo-audio: interrupted. Last checkpoint: ") and "checkpoint-" in last
    assert last.endswith("Run the same command to resume from it.")
    # with run.overwrite the same command would start again: the hint says how to resume instead
    from grpo_audio.cli import resume_hint
    from grpo_audio.recipe import load_recipe

    recipe = load_recipe(ROOT / "configs" / "demo.yaml", [f"run.output_dir={run_dir}", "run.overwrite=true"])
    assert resume_hint(recipe).endswith("add --set run.overwrite=false to resume from it.")
