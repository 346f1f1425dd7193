"""``grpo-audio eval`` on the first command's own model: the run's held-out split by default, never the training
data; the training-time ``eval`` section never blocks it; held-out ids are not training ids."""

import json
from pathlib import Path

import pytest

from grpo_audio.cli import main
from grpo_audio.recipe import load_recipe
from grpo_audio.train.run import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """configs/learn_pitch.yaml, shortened: its eval section (the synthetic held-out split) and its data."""
    run_dir = tmp_path_factory.mktemp("learn_pitch") / "run"
    overrides = [
        f"run.output_dir={run_dir}",
        "coldstart.steps=4",
        "trainer.max_steps=1",
        "data.synthetic.num_questions=8",
        "data.synthetic.heldout_questions=6",
        "trainer.per_device_train_batch_size=8",
        "eval.every_steps=0",
    ]
    train(load_recipe(ROOT / "configs" / "learn_pitch.yaml", overrides))
    return run_dir


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_eval_without_flags_scores_the_runs_heldout_split(first_run, capsys):
    out = first_run / "eval_default"
    assert main(["eval", "--model", str(first_run / "final_model"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = first_run / "data" / "heldout" / "manifest.jsonl"
    assert f"no --benchmark: the run's held-out split, {manifest}" in printed
    rows = predictions(out)
    assert len(rows) == 6 and all(r["id"].startswith("heldout-") for r in rows)
    training_ids = {
        json.loads(line)["id"] for line in (first_run / "data" / "manifest.jsonl").read_text().splitlines()
    }
    assert training_ids and not training_ids & {r["id"] for r in rows}  # held-out ids are never training ids


@pytest.mark.slow
def test_the_training_eval_section_never_blocks_a_benchmark(first_run, capsys):
    """The issue's command: the run's recipe has an eval section on the synthetic split; --benchmark a JSONL."""
    manifest = first_run / "data" / "heldout" / "manifest.jsonl"
    out = first_run / "eval_benchmark"
    argv = ["eval", "--model", str(first_run / "final_model"), "--benchmark", str(manifest), "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert len(predictions(out)) == 6


def test_a_model_outside_a_run_needs_a_benchmark(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    assert main(["eval", "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no --benchmark, and ") and err.count("\n") == 1
    assert "the training data is never evaluated by default" in err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "placeholder"), [("qwen2_audio", "<|AUDIO|>"), ("qwen2_5_omni_thinker", "<|AUDIO|>")]
)
def test_eval_scores_a_qwen_familys_model_in_its_own_layout(tmp_path, family, placeholder):
    """``grpo-audio eval`` on a Qwen family's final model: the family is read from the model's config.json, and the
    held-out split is scored with the family's prompt layout and front end."""
    run_dir = tmp_path / "run"
    overrides = [
        f"run.output_dir={run_dir}", f"model.family={family}", "coldstart.steps=2", "trainer.max_steps=1",
        "data.synthetic.num_questions=8", "data.synthetic.heldout_questions=6", "eval.every_steps=0",
    ]  # fmt: skip
    train(load_recipe(ROOT / "configs" / "learn_pitch.yaml", overrides))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(run_dir / "final_model"), "--out", str(out)]) == 0
    assert len(predictions(out)) == 6
    prompt = (out / "prompt.txt").read_text()
    assert "<|audio_bos|><|AUDIO|>" in prompt and "<|cAUDIO|>" not in prompt
    trained = (run_dir / "prompt.txt").read_text()
    assert prompt.split("<|AUDIO|>")[0] == trained.split("<|AUDIO|>")[0]  # the layout the model trained with
