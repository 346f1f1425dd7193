"""Cold start: a short supervised warm-up on format-correct completions, before GRPO.

The Covo-Audio paper runs chain-of-thought SFT before its GRPO stage. Here the warm-up teaches only the output
format: each target is ``<think>{reasoning}</think><answer>{choice}</answer><|endoftext|>`` with a random choice,
so the warmed-up model writes well-formed answers at chance accuracy and any later gain in accuracy is GRPO's.

The random answers are balanced within each batch: rows are drawn at random (``random.Random(seed)``) and the i-th
row of a batch gets option ``(offset + i) mod k`` of its choices in sorted order, ``offset`` random per batch. The
answer a row gets is thus independent of its true answer (chance accuracy), and every batch holds each option
equally often (when its size is a multiple of k), so no step pushes the model towards one option: the warm-up
ends with its answers near 50/50 instead of at whatever bias the last random batches left, which GRPO would then
have to undo first. ``answers: random`` draws each row's answer independently instead (for ablations).

Loss: mean token cross-entropy over the target tokens (prompt tokens are masked with -100), with the rows' audio
spliced in exactly as in GRPO (the same ``AudioFeaturizer``), AdamW on the trainable parameters.
"""

from __future__ import annotations

import random
import time

import torch

from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.recipe.schema import ColdStartSection


def coldstart_target(reasoning: str, answer: str) -> str:
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


def draw_batch(
    rows: list[dict], rng: random.Random, batch_size: int, reasoning: str, balanced: bool = True
) -> tuple[list[dict], list[str]]:
    """``batch_size`` random rows and their targets, the answers balanced over the batch (see the module doc) or,
    with ``balanced=False``, each drawn uniformly and independently from the row's choices."""
    batch = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
    if balanced:
        offset = rng.randrange(batch_size)
        answers = [sorted(r["choices"])[(offset + i) % len(r["choices"])] for i, r in enumerate(batch)]
    else:
        answers = [rng.choice(sorted(r["choices"])) for r in batch]
    return batch, [coldstart_target(reasoning, a) for a in answers]


def run_coldstart(
    model, tokenizer, rows: list[dict], featurizer: AudioFeaturizer, spec: ColdStartSection, seed: int, log=print
) -> list[dict]:
    """Train ``model`` in place for ``spec.steps`` steps; returns one ``{"step", "loss", "seconds"}`` per step."""
    rng = random.Random(seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate)
    history = []
    model.train()
    start = time.perf_counter()
    for step in range(1, spec.steps + 1):
        batch, targets = draw_batch(rows, rng, spec.batch_size, spec.reasoning, spec.answers == "balanced")
        input_ids, labels, mask = _pack(tokenizer, [r["prompt"] for r in batch], targets)
        audio = featurizer.rows([r["audio"] for r in batch], model, device)
        loss = model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            labels=labels.to(device),
            **audio.as_dict(),
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"step": step, "loss": loss.item(), "seconds": time.perf_counter() - start})
        if step == 1 or step % 20 == 0 or step == spec.steps:
            log(f"cold start {step}/{spec.steps} | loss {loss.item():.4f}", flush=True)
    return history


def _pack(tokenizer, prompts: list[str], targets: list[str]):
    """Right-padded ids, labels (prompt masked) and attention mask for prompt + target + end of text."""
    ids, labels = [], []
    for prompt, target in zip(prompts, targets, strict=True):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    label_ids = torch.full((len(ids), width), -100, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
        input_ids[i, : len(x)] = torch.tensor(x)
        label_ids[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return input_ids, label_ids, mask
