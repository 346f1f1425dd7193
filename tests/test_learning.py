"""Cold start, held-out split and the silence control used by the proof-of-learning recipe."""

import json

import pytest
import torch

from grpo_audio.audio_rows import AudioFeaturizer
from grpo_audio.coldstart import coldstart_target
from grpo_audio.data.manifest import load_manifest
from grpo_audio.data.synthetic import write_synthetic_set
from grpo_audio.model.tiny import build_tiny_model, build_tiny_tokenizer, tiny_tokenizer_corpus
from grpo_audio.recipe.schema import TinyModelSpec


def test_silence_control_keeps_the_placeholders_and_removes_the_content(tmp_path):
    rows = load_manifest(write_synthetic_set(tmp_path, 4, ["pitch"], seed=0))
    high = next(r.audio for r in rows if r.answer == "high")
    low = next(r.audio for r in rows if r.answer == "low")
    model = build_tiny_model(TinyModelSpec(), build_tiny_tokenizer(tiny_tokenizer_corpus(["x"]), 300), seed=0)
    heard = AudioFeaturizer(True).clip_embeddings([high, low], model, torch.device("cpu"))
    silent = AudioFeaturizer(True, ablation="silence").clip_embeddings([high, low], model, torch.device("cpu"))
    assert heard[0].shape == silent[0].shape  # same number of frames, so the same prompt
    assert not torch.allclose(heard[0], heard[1], atol=1e-3)  # the two pitches sound different ...
    assert torch.allclose(silent[0], silent[1])  # ... and not at all under the control


def test_coldstart_targets_have_the_paper_format():
    from rewards.answer_format import score

    assert score(coldstart_target("I listen.", "high"), {}) == 1.0


@pytest.mark.slow
def test_coldstart_teaches_the_format_and_heldout_is_measured(tiny_recipe):
    from grpo_audio.training import train

    recipe = tiny_recipe(
        "data.synthetic.tasks=[pitch]", "data.synthetic.heldout_questions=8", "coldstart.steps=40",
        "coldstart.learning_rate=3e-3", "trainer.max_steps=1", "rollout.max_completion_length=24",
    )
    run_dir = train(recipe)
    status = json.loads((run_dir / "run.json").read_text())
    before, after = status["heldout_before"], status["heldout_after"]
    assert before["n"] == after["n"] == 8
    assert before["format"] >= 0.75  # the warm-up taught <think>...</think><answer>...</answer>
    losses = [json.loads(line)["loss"] for line in (run_dir / "coldstart.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and losses[-1] < losses[0] / 5
    train_clips = {p.name for p in (run_dir / "data").glob("*.wav")}
    heldout_clips = {p.name for p in (run_dir / "data" / "heldout").glob("*.wav")}
    assert heldout_clips and all(
        (run_dir / "data" / "heldout" / n).read_bytes() != (run_dir / "data" / n).read_bytes()
        for n in heldout_clips & train_clips
    )
