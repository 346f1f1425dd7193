"""The CLI wiring of the reward tools."""

import json

from grpo_audio.cli import main
from grpo_audio.resources import shipped_dir


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
