"""Token-budget micro-batches for the log-prob and loss passes: rows packed by token count, padding trimmed.

TRL runs its passes over a batch of rows laid out as ``[left-padded prompt | right-padded completion]``, every row
as wide as the longest one, in chunks of a fixed number of rows. Chain-of-thought completions range from tens to
about a thousand tokens, so most of such a chunk can be padding, and every padded position costs a full forward
(and, in the loss pass, backward) through the model.

With ``trainer.max_tokens_per_microbatch = M`` the rows are instead sorted by where their tokens end and packed
greedily into chunks of at most M token positions, counted as ``rows x width`` where ``width`` is the chunk's own
span: from the first column any of its rows uses to the last (all-padding columns at either end are cut). A row
wider than M goes alone. Each chunk is scored on its own and the per-token results are put back in the original
row order at their original columns, zeros where the chunk was cut, as TRL's padded positions are zeros:

    out[i, j] = chunk_out[i', j - first_completion_column_of_chunk]   (j inside the chunk's span), else 0

The values at every scored position are those of the unpacked pass: attention never reaches padding, and the
rotary position encoding depends on relative positions only, so cutting leading padding shifts no score (to float
rounding, ``tests/test_token_budget.py``). The gradient is the fixed-size path's for the same reason.

Memory: the forward's peak (activations of one chunk, and the vocabulary projection) is bounded by M tokens. In the
loss pass the activations saved for backward add up over the micro-batch's chunks, as they do over TRL's rows:
smaller than padded by the padding removed, not bounded by M.

Padding-free (``trainer.padding_free: true``): each chunk's rows are laid end to end in a single token row, their
padding dropped, with position ids that restart at 0 for every row (``pack_tokens``). Given position ids and no
attention mask, transformers' attention keeps each token to its own row's earlier tokens: a block-diagonal causal
mask on the SDPA and eager kernels, variable-length kernels (``cu_seqlens`` from the position ids) with
flash-attention. A chunk then costs its tokens, not ``rows x width``, and its packing budget counts tokens. The
results are scattered back to the ``rows x width`` grid (``unpack_tokens``), so the rest of the pass is unchanged.
Position ids counted from each row's first token rather than from the padded column shift every position of a row
alike, which the rotary encoding does not see.

``padding_fraction`` reports the share of positions a pass spends on padding (logged per step as
``microbatch/padding_frac``, with ``microbatch/chunks``); ``bench/padding_waste.py`` measures both layouts on a
CoT-like length distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Chunk:
    """Rows ``index`` of the batch, scored over columns ``start:end`` (``end`` exclusive); ``tokens`` is set when the
    rows are scored padding-free (their token count, what the chunk's forward covers)."""

    index: torch.Tensor
    start: int
    end: int
    tokens: int | None = None

    @property
    def positions(self) -> int:
        """Token positions the chunk's forward covers: ``rows x width``, or its tokens when padding-free."""
        return len(self.index) * (self.end - self.start) if self.tokens is None else self.tokens


def row_spans(attention_mask: torch.Tensor, first_completion_column: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last + 1) column of each row's tokens. A row's span reaches at least ``first_completion_column + 1``,
    so that every chunk scores at least one completion column (a row whose completion is fully masked still has a
    place in the output)."""
    columns = torch.arange(attention_mask.size(1), device=attention_mask.device)
    used = attention_mask.bool()
    width = attention_mask.size(1)
    first = torch.where(used, columns, width).min(dim=1).values.clamp(max=first_completion_column)
    last = torch.where(used, columns, -1).max(dim=1).values.clamp(min=first_completion_column) + 1
    return first, last


def pack_rows(
    attention_mask: torch.Tensor, first_completion_column: int, max_tokens: int, padding_free: bool = False
) -> list[Chunk]:
    """Chunks of at most ``max_tokens`` positions (``rows x span``; padding-free: the rows' tokens), rows sorted by
    where their tokens end."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens}: must be at least 1")
    first, last = row_spans(attention_mask, first_completion_column)
    order = torch.argsort(last, stable=True).tolist()
    first, last = first.tolist(), last.tolist()
    counts = attention_mask.sum(dim=1).tolist()
    chunks: list[Chunk] = []
    rows: list[int] = []
    start = end = tokens = 0
    for row in order:
        new_start, new_end = (min(start, first[row]), max(end, last[row])) if rows else (first[row], last[row])
        cost = tokens + counts[row] if padding_free else (len(rows) + 1) * (new_end - new_start)
        if rows and cost > max_tokens:
            chunks.append(Chunk(torch.tensor(rows), start, end, tokens if padding_free else None))
            rows, (new_start, new_end), tokens = [], (first[row], last[row]), 0
        rows.append(row)
        start, end, tokens = new_start, new_end, tokens + counts[row]
    if rows:
        chunks.append(Chunk(torch.tensor(rows), start, end, tokens if padding_free else None))
    return chunks


def fixed_chunks(rows: int, width: int, batch_size: int, attention_mask: torch.Tensor | None = None) -> list[Chunk]:
    """TRL's layout: consecutive chunks of ``batch_size`` rows, each the batch's full width (padding-free: pass the
    ``attention_mask`` to count each chunk's tokens)."""
    chunks = []
    for s in range(0, rows, batch_size):
        index = torch.arange(s, min(s + batch_size, rows))
        tokens = None if attention_mask is None else int(attention_mask[index].sum())
        chunks.append(Chunk(index, 0, width, tokens))
    return chunks


def pack_tokens(
    ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A chunk's rows (``ids``, ``mask``, ``labels``: rows x width) laid end to end without padding (module
    docstring): ``(ids, labels, position_ids)``, each (1, T) with T the chunk's tokens, and the rows' token counts
    (rows,). Row i's tokens keep their order and get positions ``0 .. n_i - 1``."""
    kept = mask.bool()
    lengths = kept.sum(dim=1)
    starts = torch.cumsum(lengths, 0) - lengths  # where each row begins in the packed row
    flat = torch.arange(int(lengths.sum()), device=ids.device)
    positions = flat - torch.repeat_interleave(starts, lengths)
    return ids[kept].unsqueeze(0), labels[kept].unsqueeze(0), positions.unsqueeze(0), lengths


def unpack_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token outputs of a packed forward back on the chunk's grid. ``values`` (1, T - 1) holds the outputs for
    packed tokens 1 .. T-1 (position t predicts token t + 1, as ``logprob_labels`` are scored); the result (rows,
    width - 1) holds them for columns 1 .. width-1, as the padded forward's outputs are laid, zeros elsewhere.
    Differentiable."""
    kept = mask.bool()
    every = torch.cat([values.new_zeros(1, 1), values], dim=1)[0]  # token 0 has no prediction: a prompt token
    return values.new_zeros(kept.shape).masked_scatter(kept, every)[:, 1:]


def padding_fraction(attention_mask: torch.Tensor, chunks: list[Chunk]) -> float:
    """Share of the positions the chunks cover that hold no token: ``1 - tokens / sum(rows x width)``."""
    covered = sum(c.positions for c in chunks)
    return 1.0 - float(attention_mask.sum()) / covered if covered else 0.0


def score_in_chunks(
    score: Callable[[Chunk, int], list[torch.Tensor | None]],
    chunks: list[Chunk],
    rows: int,
    width: int,
    logits_to_keep: int,
) -> list[torch.Tensor | None]:
    """Run ``score(chunk, keep)`` on every chunk and reassemble its per-token outputs in batch order.

    ``score`` returns a list of tensors of shape (chunk rows, keep) (or None for an output not computed), where
    ``keep`` is the number of completion columns the chunk spans. Each is padded with zeros to ``logits_to_keep``
    columns and the rows are put back in their original order; the result is differentiable.
    """
    first_completion_column = width - logits_to_keep
    pieces: list[list[torch.Tensor]] | None = None
    for chunk in chunks:
        keep = chunk.end - first_completion_column
        outputs = score(chunk, keep)
        if pieces is None:
            pieces = [[] if out is not None else None for out in outputs]
        for slot, out in zip(pieces, outputs, strict=True):
            if slot is not None:
                slot.append(torch.nn.functional.pad(out, (0, logits_to_keep - keep)))
    order = torch.cat([c.index for c in chunks])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(rows)
    return [None if slot is None else torch.cat(slot)[inverse.to(slot[0].device)] for slot in pieces]


__all__ = [
    "Chunk",
    "fixed_chunks",
    "pack_rows",
    "pack_tokens",
    "padding_fraction",
    "row_spans",
    "score_in_chunks",
    "unpack_tokens",
]
