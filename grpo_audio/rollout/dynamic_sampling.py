"""Dynamic sampling (DAPO's group filtering): only groups whose rewards differ reach the update.

A group of G completions whose R_total is the same for every completion has advantage
``A_i = (r_i - mean(r)) / (std(r) + eps) = 0`` for all i: it adds no policy gradient, yet costs G rollouts and every
log-prob pass. DAPO (Yu et al., arXiv 2503.14476, Sec. 3.2, "Dynamic Sampling") over-samples and filters such
groups out, sampling again until the batch is full of groups with signal. Here, per optimizer step's generation
batch of ``n`` groups (``n = generation_batch_size / G`` prompts over all processes):

1. round 0 samples the ``n`` prompts the data loader gave; each later round samples ``n`` more prompts drawn from the
   training set (``refill_indices``), up to ``max_extra_rounds`` extra rounds;
2. a group is *informative* when at least two of its completions are scored and their R_total differ (the same test
   TRL uses for ``frac_reward_zero_std``); groups with no variance, or no scored completion, are dropped
   (``classify_groups``);
3. the step trains on the first ``n`` informative groups in sampling order (``select_groups``). Informative groups
   past the ``n``-th are surplus and dropped. When the rounds run out with fewer than ``n``, the step is filled with
   dropped groups that are kept out of the loss (*fillers*: masked like unscored rows, so the step trains on the
   informative groups it has), and the trainer says so in the log.

Only rollouts and rewards are computed for the rounds; the log-prob passes (old policy, reference, policy) run once,
on the selected batch.

Departures from DAPO, written down: refill prompts come from a stream of their own (as in ms-swift's
``dynamic_sample``), drawn without replacement from the training set minus the prompts this step has already
sampled, seeded by ``(run seed, optimizer step, round)``. It holds no state, so a resumed run draws the same prompts
as an uninterrupted one, and so does every process. The data loader's own order is untouched: with dynamic sampling
off, a run is exactly the run it was before.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ZERO_VARIANCE = "zero reward variance"
NO_SCORED_ROW = "no scored completion"
SURPLUS = "surplus: the step was already full"
# The tolerance of torch.isclose(std, 0), TRL's test for frac_reward_zero_std, applied to the group's std
STD_ATOL = 1e-8


def group_drop_reason(totals: Sequence[float | None]) -> str | None:
    """Why one group teaches nothing (``ZERO_VARIANCE``, ``NO_SCORED_ROW``), or None when it is informative.

    ``totals``: the group's R_total per completion, None or NaN where unscored. Informative means at least two
    scored completions whose sample standard deviation (TRL's ``nanstd``, ddof 1) is not close to 0.
    """
    scored = [float(t) for t in totals if t is not None and not math.isnan(float(t))]
    if not scored:
        return NO_SCORED_ROW
    if len(scored) < 2 or float(np.std(scored, ddof=1)) <= STD_ATOL:
        return ZERO_VARIANCE
    return None


def classify_groups(totals: Sequence[float | None], group_size: int) -> list[str | None]:
    """``group_drop_reason`` of each consecutive group of ``group_size`` completions."""
    if group_size < 1 or len(totals) % group_size:
        raise ValueError(f"{len(totals)} completions do not form whole groups of {group_size}")
    return [group_drop_reason(totals[i : i + group_size]) for i in range(0, len(totals), group_size)]


def refill_indices(
    dataset_size: int, count: int, seed: int, step: int, round_index: int, exclude: set[int]
) -> list[int]:
    """``count`` dataset indices for refill round ``round_index`` (>= 1) of optimizer step ``step``.

    A permutation of the training set seeded by a hash of ``(seed, step, round_index)``; indices in ``exclude`` (the
    prompts this step has sampled) come last, so they repeat only when the set has fewer than ``count`` others. A
    request larger than the set wraps around the permutation.
    """
    if dataset_size < 1 or count < 1:
        raise ValueError(f"cannot draw {count} prompts from a set of {dataset_size}")
    digest = hashlib.blake2b(f"grpo-audio-refill:{seed}:{step}:{round_index}".encode(), digest_size=8).digest()
    order = np.random.default_rng(int.from_bytes(digest, "little")).permutation(dataset_size).tolist()
    order = [i for i in order if i not in exclude] + [i for i in order if i in exclude]
    return [order[k % dataset_size] for k in range(count)]


@dataclass
class Selection:
    """Which candidate groups (indices into the rounds' groups, in sampling order) the step trains on.

    ``kept``: informative groups, at most the target; ``fillers``: dropped groups that fill the step when the rounds
    ran out (kept out of the loss); ``dropped``: group index -> reason, for every group not in ``kept``/``fillers``.
    """

    kept: list[int]
    fillers: list[int]
    dropped: dict[int, str] = field(default_factory=dict)

    @property
    def batch(self) -> list[int]:
        """The groups of the step's batch, in order: the kept ones, then the fillers."""
        return self.kept + self.fillers

    @property
    def short(self) -> int:
        return len(self.fillers)


def select_groups(reasons: Sequence[str | None], target: int) -> Selection:
    """The first ``target`` informative groups; when fewer exist, filled with the earliest dropped groups.

    ``reasons``: ``group_drop_reason`` of every candidate group, in sampling order (round by round).
    """
    informative = [g for g, reason in enumerate(reasons) if reason is None]
    kept = informative[:target]
    dropped = {g: reason for g, reason in enumerate(reasons) if reason is not None}
    for g in informative[target:]:
        dropped[g] = SURPLUS
    fillers = sorted(g for g, reason in dropped.items() if reason != SURPLUS)[: target - len(kept)]
    for g in fillers:
        del dropped[g]
    return Selection(kept=kept, fillers=fillers, dropped=dropped)
