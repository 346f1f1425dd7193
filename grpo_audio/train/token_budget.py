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
    """Rows ``index`` of the batch, scored over columns ``start:end`` (``end`` exclusive)."""

    index: torch.Tensor
    start: int
    end: int

    @property
    def positions(self) -> int:
        return len(self.index) * (self.end - self.start)


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


def pack_rows(attention_mask: torch.Tensor, first_completion_column: int, max_tokens: int) -> list[Chunk]:
    """Chunks of at most ``max_tokens`` positions (``rows x span``), rows sorted by where their tokens end."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens}: must be at least 1")
    first, last = row_spans(attention_mask, first_completion_column)
    order = torch.argsort(last, stable=True).tolist()
    first, last = first.tolist(), last.tolist()
    chunks: list[Chunk] = []
    rows: list[int] = []
    start = end = 0
    for row in order:
        new_start, new_end = (min(start, first[row]), max(end, last[row])) if rows else (first[row], last[row])
        if rows and (len(rows) + 1) * (new_end - new_start) > max_tokens:
            chunks.append(Chunk(torch.tensor(rows), start, end))
            rows, (new_start, new_end) = [], (first[row], last[row])
        rows.append(row)
        start, end = new_start, new_end
    if rows:
        chunks.append(Chunk(torch.tensor(rows), start, end))
    return chunks


def fixed_chunks(rows: int, width: int, batch_size: int) -> list[Chunk]:
    """TRL's layout: consecutive chunks of ``batch_size`` rows, each the batch's full width."""
    return [Chunk(torch.arange(s, min(s + batch_size, rows)), 0, width) for s in range(0, rows, batch_size)]


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


__all__ = ["Chunk", "fixed_chunks", "pack_rows", "padding_fraction", "row_spans", "score_in_chunks"]
