"""The CLI wiring of the reward tools."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.training_process import start_until_step

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
    proc = start_until_step(command, 2, ROOT, env)  # the second step is done: checkpoint-1 is complete
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("grpo-audio: interrupted. Last checkpoint: ") and "checkpoint-" in last
    assert last.endswith("Run the same command to resume from it.")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "stopped" and record["error"] == "interrupted"
    # with run.overwrite the same command would start again: the hint says how to resume instead
    from grpo_audio.cli import resume_hint
    from grpo_audio.recipe import load_recipe

    recipe = load_recipe(ROOT / "configs" / "demo.yaml", [f"run.output_dir={run_dir}", "run.overwrite=true"])
    assert resume_hint(recipe).endswith("add --set run.overwrite=false to resume from it.")


def test_rewards_score_has_a_real_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["rewards", "score", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: grpo-audio rewards score")
    for option in ("--rewards", "--input", "--group-size", "--show", "--scale-rewards", "--output", "--max-length"):
        assert option in text
    assert "rollouts.jsonl" in text and "Example:" in text


@pytest.mark.slow
def test_rewards_score_reproduces_the_trainers_advantages_from_a_runs_rollouts(tiny_recipe, capsys):
    from grpo_audio.train.run import train

    run_dir = train(tiny_recipe("trainer.max_steps=1"))
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    out = run_dir.parent / "scores.jsonl"
    args = ["--rewards", str(run_dir / "recipe.yaml"), "--input", str(run_dir / "rollouts.jsonl")]
    code = main(["rewards", "score", *args, "--group-size", "4", "--show", "-1", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    scores = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(scores) == len(rollouts) == 8
    for record, score in zip(rollouts, scores, strict=True):
        assert score["total"] == record["R_total"]
        assert score["advantage"] == pytest.approx(record["advantage"], abs=1e-5)  # TRL's, from the trainer
    # one line per row on the terminal: its id, an excerpt of the completion, and its advantage
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("row  id"))
    rows = lines[header + 1 : header + 9]
    assert [line.split()[1] for line in rows] == [r["prompt_id"] for r in rollouts]
    assert [float(line.split()[-1]) for line in rows] == pytest.approx([r["advantage"] for r in rollouts], abs=1e-3)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["train", "--bogus"], ["nonsense"], ["eval", "--help"], ["eval", "--model"]]
    + [["rewards", "score", "--help"], ["rewards", "score", "--bogus"]],
)
def test_help_version_and_argument_errors_import_no_heavy_library(argv):
    """What makes them quick (bench/bench_cli_start.py times it): torch, transformers, trl and vllm stay unimported."""
    probe = (
        "import sys\nfrom grpo_audio.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'vllm', 'datasets') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []", done.stdout + done.stderr
    if argv == ["--version"]:
        from grpo_audio import __version__

        assert done.stdout.startswith(f"grpo-audio {__version__}")


def test_the_eval_parsers_rule_names_are_the_scoring_rules():
    from grpo_audio.evaluation.cli import RULE_NAMES
    from grpo_audio.evaluation.scoring import RULES

    assert RULE_NAMES == RULES
