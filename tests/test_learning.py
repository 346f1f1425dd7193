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
from grpo_audio.train.coldstart import coldstart_target, draw_batch

LEARN_PITCH = Path(__file__).resolve().parents[1] / "configs" / "learn_pitch.yaml"


def test_silence_control_keeps_the_placeholders_and_removes_the_content(tmp_path, model):
    rows = load_manifest(write_synthetic_set(tmp_path, 4, ["pitch"], seed=0))
    high = next(r.audio for r in rows if r.answer == "high")
    low = next(r.audio for r in rows if r.answer == "low")
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
    from rewards.answer_format import score

    recipe = tiny_recipe(
        "data.synthetic.tasks=[pitch]",
        "data.synthetic.heldout_questions=8",
        "eval.sets=[{name: tones, source: synthetic}]",
        "coldstart.steps=40",
        "coldstart.learning_rate=3e-3",
        "trainer.max_steps=1",
        "rollout.max_completion_length=24",
    )
    run_dir = train(recipe)
    evaluation = json.loads((run_dir / "run.json").read_text())["eval"]
    assert evaluation["sets"]["tones"]["items"] == 8
    assert [evaluation[e]["step"] for e in ("first", "last")] == [0, 1]  # after the cold start, after GRPO
    # the warm-up taught <think>...</think><answer>...</answer>: the step-0 greedy answers have the paper's format
    step_0 = run_dir / "eval_sets" / "tones" / "step_0.jsonl"
    answers = [json.loads(line) for line in step_0.read_text().splitlines()]
    assert len(answers) == 8 and sum(score(a["completion"], {}) for a in answers) >= 6
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
    """The proof-of-learning recipe, shortened, for each model family's tiny model: the held-out eval set's sampled
    accuracy at the training temperature rises well above the cold start's with audio, and stays at chance when every
    clip is silence (same prompts, no content)."""
    from grpo_audio.recipe import load_recipe
    from grpo_audio.train.run import train

    short = ["trainer.max_steps=50", "trainer.save_steps=1000", "data.synthetic.heldout_questions=16"]
    short += ["eval.every_steps=0", f"model.family={family}"]
    results = {}
    for name, extra in (("audio", []), ("silence", ["model.audio_ablation=silence"])):
        recipe = load_recipe(LEARN_PITCH, [f"run.output_dir={tmp_path / name}", *short, *extra])
        evaluation = json.loads((train(recipe) / "run.json").read_text())["eval"]
        assert evaluation["sampling"]["temperature"] == recipe.rollout.temperature == 0.7
        assert evaluation["first"]["step"] == 0 and evaluation["last"]["step"] == 50
        results[name] = evaluation["first"]["metrics"], evaluation["last"]["metrics"]
    before, after = results["audio"]
    assert before["eval/tones/sampled_accuracy"] < 0.6  # the cold start answers at chance ...
    # ... GRPO teaches it to listen
    assert after["eval/tones/sampled_accuracy"] >= before["eval/tones/sampled_accuracy"] + 0.25
    assert after["eval/tones/accuracy"] >= 0.85 and after["eval/tones/unparsed"] <= 0.1
    # Silence: the prompts differ only in the order of the options, which says nothing about the answer
    _, silent_after = results["silence"]
    assert silent_after["eval/tones/sampled_accuracy"] < 0.6
    assert silent_after["eval/tones/accuracy"] < 0.75
