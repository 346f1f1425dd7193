"""Cold start, held-out split and the silence control used by the proof-of-learning recipe."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.data.manifest import load_manifest
from grpo_audio.data.synthetic import write_synthetic_set
from grpo_audio.model.tiny import build_tiny_model, build_tiny_tokenizer, tiny_tokenizer_corpus
from grpo_audio.recipe.schema import TinyModelSpec
from grpo_audio.train.coldstart import coldstart_target, draw_batch

LEARN_PITCH = Path(__file__).resolve().parents[1] / "configs" / "learn_pitch.yaml"


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
    from grpo_audio.train.run import train

    recipe = tiny_recipe(
        "data.synthetic.tasks=[pitch]",
        "data.synthetic.heldout_questions=8",
        "coldstart.steps=40",
        "coldstart.learning_rate=3e-3",
        "trainer.max_steps=1",
        "rollout.max_completion_length=24",
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


def test_coldstart_answers_are_balanced_per_batch_and_independent_of_the_truth():
    rows = [
        {"choices": ["low", "high"] if i % 3 else ["high", "low"], "answer": "high" if i % 2 else "low"}
        for i in range(40)
    ]
    rng, agree = random.Random(0), 0
    for _ in range(50):
        batch, targets = draw_batch(rows, rng, 16, "tone")
        answers = [t.split("<answer>")[1].split("</answer>")[0] for t in targets]
        assert Counter(answers) == {"high": 8, "low": 8}  # no batch pushes towards one option
        agree += sum(a == r["answer"] for a, r in zip(answers, batch, strict=True))
    assert 0.4 < agree / (50 * 16) < 0.6  # and the answers are at chance


def test_coldstart_random_answers_are_independent_draws():
    rows = [{"choices": ["low", "high"], "answer": "high" if i % 2 else "low"} for i in range(40)]
    rng, counts, agree = random.Random(0), Counter(), 0
    for _ in range(50):
        batch, targets = draw_batch(rows, rng, 16, "tone", balanced=False)
        answers = [t.split("<answer>")[1].split("</answer>")[0] for t in targets]
        counts[Counter(answers)["high"]] += 1
        agree += sum(a == r["answer"] for a, r in zip(answers, batch, strict=True))
    assert len(counts) > 3  # batches are not held at 8/8: the share of "high" varies as independent draws do
    assert 0.4 < agree / (50 * 16) < 0.6


@pytest.mark.slow
@pytest.mark.parametrize("family", ["covo_audio", "qwen2_audio", "qwen2_5_omni_thinker"])
def test_grpo_learns_pitch_from_audio_and_not_from_silence(tmp_path, family):
    """The proof-of-learning recipe, shortened, for each model family's tiny model: held-out accuracy rises well
    above the cold start's with audio, and stays at chance when every clip is silence (same prompts, no content)."""
    from grpo_audio.recipe import load_recipe
    from grpo_audio.train.run import train

    short = ["trainer.max_steps=50", "trainer.save_steps=1000", "data.synthetic.heldout_questions=16"]
    short.append(f"model.family={family}")
    results = {}
    for name, extra in (("audio", []), ("silence", ["model.audio_ablation=silence"])):
        recipe = load_recipe(LEARN_PITCH, [f"run.output_dir={tmp_path / name}", *short, *extra])
        status = json.loads((train(recipe) / "run.json").read_text())
        results[name] = status["heldout_before"], status["heldout_after"]
    before, after = results["audio"]
    assert before["sampled_accuracy"] < 0.6  # the cold start answers at chance ...
    assert after["sampled_accuracy"] >= before["sampled_accuracy"] + 0.25  # ... GRPO teaches it to listen
    assert after["accuracy"] >= 0.85 and after["format"] >= 0.9
    # Silence: the prompts differ only in the order of the options, which says nothing about the answer
    _, silent_after = results["silence"]
    assert silent_after["sampled_accuracy"] < 0.6
    assert silent_after["accuracy"] < 0.75
