"""The report draws the rewards logged per row category (``rewards_by_category/<category>/<term>/mean``)."""

import json

import pytest

from grpo_audio.evaluation.report import category_panels, panels, render, series


def _run(tmp_path, name: str, categories: bool):
    run = tmp_path / name
    run.mkdir()
    metrics = []
    for step in (1, 2, 3):
        row = {"step": step, "reward": 0.5 + 0.1 * step, "rewards/accuracy/mean": 0.1 * step, "kl": 0.0}
        if categories:
            row |= {
                "rewards_by_category/sound/R_total/mean": 0.2 * step,
                "rewards_by_category/music/R_total/mean": 0.1 * step,
                "rewards_by_category/sound/accuracy/mean": 0.3,
                "rewards_by_category/Come_From/accuracy/mean": 0.4,
            }
        metrics.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


def test_category_panels_group_the_keys_by_term_with_r_total_first(tmp_path):
    data = series(_run(tmp_path, "run", categories=True))
    assert category_panels(data) == [
        (
            "R_total by category",
            {
                "music": "rewards_by_category/music/R_total/mean",
                "sound": "rewards_by_category/sound/R_total/mean",
            },
        ),
        (
            "accuracy by category",
            {
                "Come_From": "rewards_by_category/Come_From/accuracy/mean",
                "sound": "rewards_by_category/sound/accuracy/mean",
            },
        ),
    ]
    # the per-category keys are not mistaken for reward terms of their own
    assert [title for title, _ in panels(data)] == ["R_total", "reward term: accuracy", "KL to reference"]
    steps, values = data["rewards_by_category/sound/R_total/mean"]
    assert steps == [1, 2, 3] and values == pytest.approx([0.2, 0.4, 0.6])


def test_the_report_draws_rewards_per_category(tmp_path):
    run = _run(tmp_path, "run", categories=True)
    other = _run(tmp_path, "other", categories=True)
    page = render(run, run / "report", compare=other)
    assert (run / "report" / "r_total_by_category.png").stat().st_size > 0
    assert (run / "report" / "accuracy_by_category.png").stat().st_size > 0
    text = page.read_text()
    assert "<h2>Rewards per category</h2>" in text
    assert "alt='R_total by category'" in text and "alt='accuracy by category'" in text
    assert text.index("alt='KL to reference'") < text.index("Rewards per category") < text.index("alt='R_total by")


def test_a_run_without_categories_has_no_category_section(tmp_path):
    run = _run(tmp_path, "run", categories=False)
    page = render(run, run / "report")
    assert "Rewards per category" not in page.read_text()
    assert not list((run / "report").glob("*by_category.png"))


def test_report_steps_past_the_last_logged_step_are_named(tmp_path, capsys):
    from grpo_audio.evaluation.report import main as report_main

    run = tmp_path / "run"
    run.mkdir()
    rollout = {
        "step": 1,
        "prompt_id": "a",
        "completion": "x",
        "rewards": {},
        "R_total": 1.0,
        "advantage": 0.0,
        "finish_reason": "stop",
        "length": 1,
    }
    (run / "rollouts.jsonl").write_text("".join(json.dumps({**rollout, "step": s}) + "\n" for s in (1, 2)))
    metrics = [{"step": s, "reward": 1.0, "rewards/accuracy/mean": 1.0} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    assert report_main([str(run), "--steps", "2,99"]) == 0
    assert "grpo-audio: no rollouts at step(s) 99 (the run logged steps 1-2)" in capsys.readouterr().out
