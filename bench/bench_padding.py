"""Padding waste of the log-prob and loss passes: TRL's fixed-size chunks against token-budget packing.

    python bench/bench_padding.py [--rows 64] [--chunk-rows 8] [--rounds 3] [--seed 0]

A generation batch of ``--rows`` completions with chain-of-thought-like lengths: completion lengths log-normal
(median 250 tokens) clipped to 50..1,024, prompt lengths uniform in 80..220 (audio placeholders and the question).
The batch is laid out as TRL lays it out (left-padded prompts, right-padded completions, as wide as the longest).

* ``fixed``: TRL's chunks of ``--chunk-rows`` rows at the batch's full width;
* ``packed``: ``grpo_audio.train.token_budget.pack_rows`` with the same worst-case memory (``chunk-rows x width``
  positions per chunk), and with a quarter of it;
* ``padding-free``: the same packer counting tokens (``trainer.padding_free``), each chunk's rows laid end to end in
  one row with position ids restarting per row and no attention mask (``pack_tokens``): transformers then builds a
  block-diagonal causal mask, so on SDPA (this CPU) attention still spans the whole packed row, masked, while the
  projections and MLP see only tokens; flash-attention's variable-length kernels (GPU) skip the masked part too.

Reported per layout: the share of positions that are padding, the positions computed, and the median wall time of
a no-grad forward of the harness's tiny backbone (hidden 128, 2 layers) over every chunk, the layouts taking turns
for ``--rounds`` rounds. The padding shares are exact counts; the times are this machine's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import Qwen2Config, Qwen2Model

from grpo_audio.train.token_budget import fixed_chunks, pack_rows, pack_tokens, padding_fraction


def cot_lengths(rows: int, seed: int) -> tuple[list[int], list[int]]:
    gen = torch.Generator().manual_seed(seed)
    completions = torch.exp(torch.randn(rows, generator=gen) * 0.7 + torch.log(torch.tensor(250.0)))
    completions = completions.round().clamp(50, 1024).long().tolist()
    prompts = torch.randint(80, 221, (rows,), generator=gen).tolist()
    return prompts, completions


def trl_layout(prompts: list[int], completions: list[int]) -> tuple[torch.Tensor, int]:
    """The attention mask TRL builds (left-padded prompts | right-padded completions) and its first completion
    column."""
    p_width, c_width = max(prompts), max(completions)
    mask = torch.zeros(len(prompts), p_width + c_width, dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        mask[row, p_width - p : p_width + c] = 1
    return mask, p_width


def forward_seconds(model, mask: torch.Tensor, chunks) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for chunk in chunks:
            part = mask[chunk.index, chunk.start : chunk.end]
            if chunk.tokens is None:
                embeds = torch.randn(part.size(0), part.size(1), model.config.hidden_size)
                model(inputs_embeds=embeds, attention_mask=part)
            else:  # padding-free: one row of the chunk's tokens, positions restarting per row
                _, _, positions, _ = pack_tokens(part, part, part)
                embeds = torch.randn(1, positions.size(1), model.config.hidden_size)
                model(inputs_embeds=embeds, position_ids=positions)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--chunk-rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    prompts, completions = cot_lengths(args.rows, args.seed)
    mask, first_completion = trl_layout(prompts, completions)
    width = mask.size(1)
    budget = args.chunk_rows * width
    layouts = {
        f"fixed, {args.chunk_rows} rows x {width} columns": fixed_chunks(args.rows, width, args.chunk_rows),
        f"packed, budget {budget} positions (same worst case)": pack_rows(mask, first_completion, budget),
        f"packed, budget {budget // 4} positions (a quarter)": pack_rows(mask, first_completion, budget // 4),
        f"padding-free, budget {budget} tokens": pack_rows(mask, first_completion, budget, padding_free=True),
        f"padding-free, budget {budget // 4} tokens": pack_rows(mask, first_completion, budget // 4, True),
    }
    config = Qwen2Config(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=1000, max_position_embeddings=4096,
    )  # fmt: skip
    model = Qwen2Model(config).eval()
    forward_seconds(model, mask, layouts[next(iter(layouts))][:1])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(args.rounds):
        for name, chunks in layouts.items():
            times[name].append(forward_seconds(model, mask, chunks))

    threads = torch.get_num_threads()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads)")
    median = int(statistics.median(completions))
    print(
        f"{args.rows} rows: completions {min(completions)}..{max(completions)} tokens (median {median}), prompts "
        f"{min(prompts)}..{max(prompts)}; {int(mask.sum())} tokens"
    )
    print()
    print("| layout | chunks | positions computed | padding | median forward s | vs fixed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    base = statistics.median(next(iter(times.values())))
    for name, chunks in layouts.items():
        seconds = statistics.median(times[name])
        positions = sum(c.positions for c in chunks)
        print(f"| {name} | {len(chunks)} | {positions} | {padding_fraction(mask, chunks):.1%} | {seconds:.3f} | "
              f"{seconds / base:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
