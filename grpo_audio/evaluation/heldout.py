"""Held-out accuracy: answers on questions never trained on, scored with the accuracy reward.

accuracy = (1/N) * sum_i accuracy(completion_i, row_i) over greedy completions, with the recipe's accuracy options
when it has an ``accuracy`` term (else the default MMAU token rule) but always the benchmarks' answer extraction
(``answer_source: tag_or_text``: the ``<answer>`` span, else the text after ``</think>``, else the whole output),
whatever the training term reads; format = the share of greedy completions that pass the paper's format rule.
Decoding uses the HF engine's settings (text-only vocabulary, stop tokens).

sampled_accuracy = (1/(N k)) * sum_i sum_j accuracy(sample_ij, row_i) over k completions sampled per question at
temperature 1 (the model's own distribution; seeded, and the caller's random state is left untouched): the
expected accuracy of the policy, and the sampled format share likewise. Greedy decoding of a model at chance is a
knife edge: when every clip of a class sounds alike, a 51/49 preference that happens to depend on the audio turns
into a whole class right or wrong, so a model at chance can score far from 1/k greedily; its sampled accuracy
stays near chance.
"""

from __future__ import annotations

import torch

import rewards
from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.data.dataset import build_dataset
from grpo_audio.data.manifest import AudioQuestion, DataError
from grpo_audio.data.prompting import PromptTemplate
from grpo_audio.data.sources import SkipReport
from grpo_audio.model.family import COVO_AUDIO, ModelFamily, family_of_model
from grpo_audio.recipe import Recipe
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings


def evaluation_options(training_options=None) -> dict:
    """The accuracy reward's options for scoring an evaluation: the training term's rule and its settings, with the
    official answer extraction (``answer_source: tag_or_text``) in place of the training default (tag only)."""
    return {**(training_options or {}), "answer_source": "tag_or_text"}


def heldout_accuracy(
    model,
    tokenizer,
    rows: list[dict],
    featurizer: AudioFeaturizer,
    max_new_tokens: int,
    audio_marker_ids: list[int],
    accuracy_options=None,
    batch_size: int = 32,
    samples: int = 8,
    seed: int = 0,
) -> dict:
    # The rows come through load_manifest and its row rules; an unlabeled row here would count as wrong, silently
    unlabeled = [r["id"] for r in rows if r.get("answer") is None]
    if unlabeled:
        raise DataError(
            f"held-out accuracy needs a gold answer on every row; {len(unlabeled)} have none (first: {unlabeled[:3]})"
        )
    greedy = HFRolloutEngine(
        SamplingSettings(max_new_tokens=max_new_tokens, do_sample=False),
        list(model.generation_config.eos_token_id),
        tokenizer.pad_token_id,
        audio_marker_ids,
        first_banned_id=len(tokenizer),
    )
    sampler = HFRolloutEngine(
        SamplingSettings(max_new_tokens=max_new_tokens, temperature=1.0, do_sample=True),
        list(model.generation_config.eos_token_id),
        tokenizer.pad_token_id,
        audio_marker_ids,
        first_banned_id=len(tokenizer),
    )
    accuracy = rewards.get_reward("accuracy")
    options = evaluation_options(accuracy_options)
    fmt = rewards.get_reward("format")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, formatted, examples = 0.0, 0.0, []
    sampled_correct, sampled_formatted = 0.0, 0.0
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in batch]
            audio = featurizer.rows([r["audio"] for r in batch], model, device)
            result = greedy.generate(model, prompts, audio)
            texts = tokenizer.batch_decode(result.completion_ids, skip_special_tokens=True)
            context = rewards.RewardContext()
            scores = accuracy.score_batch(texts, batch, context, **options)
            correct += sum(v or 0.0 for v in scores)
            formatted += sum(v or 0.0 for v in fmt.score_batch(texts, batch, context))
            examples += [
                {"id": r["id"], "answer": r["answer"], "completion": t} for r, t in zip(batch, texts, strict=True)
            ]
            if samples > 0:
                repeated = [r for r in batch for _ in range(samples)]
                audio = featurizer.rows([r["audio"] for r in repeated], model, device)
                result = sampler.generate(model, [p for p in prompts for _ in range(samples)], audio)
                texts = tokenizer.batch_decode(result.completion_ids, skip_special_tokens=True)
                scores = accuracy.score_batch(texts, repeated, context, **options)
                sampled_correct += sum(v or 0.0 for v in scores)
                sampled_formatted += sum(v or 0.0 for v in fmt.score_batch(texts, repeated, context))
    if was_training:
        model.train()
    result = {"accuracy": correct / len(rows), "format": formatted / len(rows), "n": len(rows)}
    if samples > 0:
        result.update(
            sampled_accuracy=sampled_correct / (len(rows) * samples),
            sampled_format=sampled_formatted / (len(rows) * samples),
            samples_per_question=samples,
        )
    return {**result, "examples": examples[:4]}


def heldout_rows(
    split: tuple[list[AudioQuestion], SkipReport],
    tokenizer,
    template: PromptTemplate,
    family: ModelFamily = COVO_AUDIO,
) -> list[dict]:
    """The held-out split (``load_heldout_rows``: the same row reader, rules and audio policy as the training rows)
    as prompt rows in ``family``'s layout; [] when the recipe has none."""
    rows, report = split
    return list(build_dataset(rows, tokenizer, template, report.clip_lengths, family)) if rows else []


def accuracy_options(recipe: Recipe) -> dict:
    """The options of the recipe's ``accuracy`` term ({} without one: the default rule)."""
    return next((dict(t.options) for t in recipe.rewards.terms if t.name == "accuracy"), {})


def measure_heldout(recipe: Recipe, model, tokenizer, rows: list[dict], featurizer: AudioFeaturizer) -> dict | None:
    """``heldout_accuracy`` with the recipe's completion length and accuracy options; None without rows."""
    if not rows:
        return None
    markers = tokenizer.convert_tokens_to_ids(list(family_of_model(model).prompt_only_tokens))
    return heldout_accuracy(
        model, tokenizer, rows, featurizer, recipe.rollout.max_completion_length, markers, accuracy_options(recipe)
    )


def heldout_summary(score: dict) -> str:
    """One line of held-out scores: greedy accuracy, sampled accuracy when measured, greedy format, n."""
    sampled = f", {score['sampled_accuracy']:.3f} sampled" if "sampled_accuracy" in score else ""
    return f"{score['accuracy']:.3f} greedy{sampled} (format {score['format']:.3f}, n={score['n']})"
