"""The next-token distribution rollouts are sampled from, applied identically by the samplers and the log-prob passes.

GRPO's update is only the update of the policy that produced the rollouts if the trainer scores each sampled token
under the distribution it was drawn from. That distribution is the model's, after processing of the raw next-token
logits ``z`` (one row of V values), in this order (the order of transformers' warpers and of vLLM's sampler):

1. text-only mask: ``z_v = NEG`` for every banned id ``v`` (ids >= ``first_banned_id``, the discrete speech tokens,
   and ``banned_ids``, the audio markers only a prompt may carry). ``NEG`` is a large finite negative number, not
   -inf: ``exp(NEG - max z)`` underflows to exactly 0 in float32, so banned ids get probability 0 and zero gradient,
   while entropies ``-sum p log p`` stay finite (``0 * -inf`` would be NaN);
2. temperature: ``z / T``;
3. top-k (``k > 0``): ids whose value is below the k-th largest are set to ``NEG`` (ties with the k-th are kept);
4. top-p (``p < 1``): sort ascending, drop the ids whose cumulative probability is ``<= 1 - p`` (the largest is
   always kept). Steps 3 and 4 are transformers' ``TopKLogitsWarper`` / ``TopPLogitsWarper`` with ``NEG`` as the
   fill value;
5. ``log p = log_softmax(z)``.

The truncation sets of steps 3 and 4 depend on the logits but are constants for the gradient (as in the sampler,
which never differentiates through them): ``d log p_y / d z`` is the softmax gradient restricted to the kept ids.

``token_logprobs`` evaluates this for sampled tokens from hidden states and the LM-head weight, in row chunks whose
(rows, V) logits are recomputed in the backward pass (activation checkpointing), so memory stays at one chunk of
logits whatever the completion length. On request it also reports, per position, the probability the unmasked
temperature-scaled distribution puts on banned ids (``outside_mass``), the size of the text-only intervention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import TopKLogitsWarper, TopPLogitsWarper

NEG = -1.0e9  # the score of a removed id: finite (see the module docstring), and far below any real logit
# Positions per chunk: one (rows, V) float32 tensor is 256 x 168,055 x 4 B = 172 MB for the 7B vocabulary
DEFAULT_CHUNK_ROWS = 256
# Peak of one chunk's forward + backward in (rows, V) float32 tensors, with the text-only mask and entropies (the
# policy pass); measured 5.3 by tests/test_memory_plan.py (9.5 with top-k and top-p, which sort the row)
CHUNK_WORKING_SET_COPIES = 5.5


@dataclass(frozen=True)
class SamplingDistribution:
    """How raw logits become the sampling distribution (module docstring). Neutral values switch a step off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    first_banned_id: int | None = None
    banned_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 to sample, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def restricts_vocabulary(self) -> bool:
        return self.first_banned_id is not None or bool(self.banned_ids)

    def banned_mask(self, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(V,) bool, True for banned ids."""
        banned = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        if self.first_banned_id is not None:
            banned[self.first_banned_id :] = True
        if self.banned_ids:
            banned[list(self.banned_ids)] = True
        return banned

    def process(self, logits: torch.Tensor, banned: torch.Tensor | None = None) -> torch.Tensor:
        """Raw logits (..., V) -> processed float32 scores (steps 1-4); ``log_softmax`` of them is step 5.

        ``banned``: the (V,) mask of ``banned_mask``, passed in by callers that process many rows.
        """
        z = logits.float()
        if self.restricts_vocabulary:
            if banned is None:
                banned = self.banned_mask(z.size(-1), z.device)
            z = z.masked_fill(banned, NEG)
        if self.temperature != 1.0:
            z = z / self.temperature
        # transformers' own warpers, with a finite fill: their truncation sets are boolean masks, constants for the
        # gradient, and masked_fill passes the gradient through to the kept ids only
        if self.top_k:
            z = TopKLogitsWarper(self.top_k, filter_value=NEG)(None, z)
        if self.top_p < 1.0:
            z = TopPLogitsWarper(self.top_p, filter_value=NEG)(None, z)
        return z


@dataclass
class TokenLogProbs:
    """Per scored position: ``log_probs`` log p(label) under the processed distribution, ``entropy`` of that
    distribution (nats), ``outside_mass`` the unmasked temperature-scaled probability of the banned ids (no
    gradient; zeros when nothing is banned). Each of the last two is None when not asked for."""

    log_probs: torch.Tensor
    entropy: torch.Tensor | None
    outside_mass: torch.Tensor | None


def _chunk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    banned: torch.Tensor | None,
    distribution: SamplingDistribution,
    with_entropy: bool,
    with_outside_mass: bool,
) -> tuple[torch.Tensor, ...]:
    """(log-probs, [entropies], [outside mass]) of one chunk, the optional ones in that order when asked for."""
    logits = F.linear(hidden.to(weight.dtype), weight).float()  # (n, V), computed in the head's dtype as generate does
    logp = distribution.process(logits, banned).log_softmax(dim=-1)
    out = [logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)]
    if with_entropy:
        out.append(-(logp.exp() * logp).sum(dim=-1))
    if with_outside_mass:
        with torch.no_grad():
            if banned is None:
                out.append(logits.new_zeros(logits.size(0)))
            else:
                scaled = logits.detach() / distribution.temperature
                out.append((scaled.masked_fill(~banned, float("-inf")).logsumexp(-1) - scaled.logsumexp(-1)).exp())
    return tuple(out)


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    distribution: SamplingDistribution,
    *,
    with_entropy: bool = False,
    with_outside_mass: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> TokenLogProbs:
    """Log-probs of ``labels`` (N,) given the hidden states (N, H) that predict them and the LM-head weight (V, H).

    Each chunk of ``chunk_rows`` positions is checkpointed when a gradient is needed: its logits are recomputed in
    the backward pass instead of being kept (V floats per position would dominate memory for long completions).
    """
    banned = distribution.banned_mask(weight.size(0), weight.device) if distribution.restricts_vocabulary else None
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    flags = (distribution, with_entropy, with_outside_mass)
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, hidden.size(0), chunk_rows):
        args = (hidden[start : start + chunk_rows], weight, labels[start : start + chunk_rows], banned)
        if needs_grad:
            parts.append(checkpoint(_chunk, *args, *flags, use_reentrant=False))
        else:
            parts.append(_chunk(*args, *flags))
    if not parts:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return TokenLogProbs(empty, empty if with_entropy else None, empty if with_outside_mass else None)
    columns = iter(torch.cat(column) for column in zip(*parts, strict=True))
    log_probs = next(columns)
    entropy = next(columns) if with_entropy else None
    return TokenLogProbs(log_probs, entropy, next(columns) if with_outside_mass else None)
