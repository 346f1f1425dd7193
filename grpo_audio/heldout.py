"""Held-out accuracy: greedy answers on questions never trained on, scored with the accuracy reward.

accuracy = (1/N) * sum_i accuracy(completion_i, row_i), with the recipe's accuracy options when it has an
``accuracy`` term (else the default MMAU token rule); format = the share of completions that pass the paper's
format rule. Decoding is greedy with the same rollout engine settings (text-only vocabulary, stop tokens).
"""

from __future__ import annotations

import torch

import rewards
from grpo_audio.audio_rows import AudioFeaturizer
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings


def heldout_accuracy(
    model,
    tokenizer,
    rows: list[dict],
    featurizer: AudioFeaturizer,
    max_new_tokens: int,
    audio_marker_ids: list[int],
    accuracy_options=None,
    batch_size: int = 32,
) -> dict:
    greedy = HFRolloutEngine(
        SamplingSettings(max_new_tokens=max_new_tokens, do_sample=False),
        list(model.generation_config.eos_token_id),
        tokenizer.pad_token_id,
        audio_marker_ids,
    )
    accuracy = rewards.get_reward("accuracy")
    fmt = rewards.get_reward("format")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, formatted, examples = 0.0, 0.0, []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in batch]
            audio = featurizer.rows([r["audio"] for r in batch], model, device)
            result = greedy.generate(model, prompts, audio)
            texts = tokenizer.batch_decode(result.completion_ids, skip_special_tokens=True)
            context = rewards.RewardContext()
            scores = accuracy.score_batch(texts, batch, context, **(accuracy_options or {}))
            correct += sum(v or 0.0 for v in scores)
            formatted += sum(v or 0.0 for v in fmt.score_batch(texts, batch, context))
            examples += [
                {"id": r["id"], "answer": r["answer"], "completion": t} for r, t in zip(batch, texts, strict=True)
            ]
    if was_training:
        model.train()
    return {"accuracy": correct / len(rows), "format": formatted / len(rows), "n": len(rows), "examples": examples[:4]}
