"""overlong in [-1, 0]: DAPO's soft overlong punishment (DAPO, arXiv 2503.14476, Sec. 3.4, Eq. 13).

    R(y) = 0                                    if |y| <= L_max - L_cache
    R(y) = ((L_max - L_cache) - |y|) / L_cache    if L_max - L_cache < |y| <= L_max
    R(y) = -1                                   if |y| > L_max

|y| is the completion's length in tokens, read from the batch's ``RewardContext.lengths`` (the stop token counted,
as TRL counts ``completions/mean_length``). Options, named after the paper's symbols, both in tokens:

* ``l_cache`` (L_cache, required): the width of the punishment ramp. DAPO uses L_cache = 4,096 with L_max = 20,480,
  so completions up to 16,384 tokens go unpunished;
* ``l_max`` (L_max, default: the run's length limit ``rollout.max_completion_length``, ``RewardContext.max_length``):
  the length at which the punishment reaches -1. With the default, |y| never exceeds L_max (the engine cuts there),
  so the third case only applies when ``l_max`` is set below the limit.

The value is never None: every completion has a length. A batch whose context carries no lengths (``rewards score``
on rows without a ``length`` field) is an error, not a column of zeros; so is an ``l_max`` that is neither given nor
known from the context, and an ``l_cache`` larger than L_max (the ramp would start below length 0).

DAPO adds R(y) to the rule-based correctness reward; here it is one term of R_total, added with the recipe's weight
(weight 1 and the ``sum`` combiner reproduce the paper). DAPO's other length device, leaving truncated samples out
of the loss ("overlong filtering", its Sec. 3.4), is TRL's ``mask_truncated_completions``, not a reward.

Example: with ``l_max: 20, l_cache: 8``, completions of 12, 16, 20 tokens score 0, -0.5, -1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rewards import _checks
from rewards.registry import RewardContext, register_reward


def validate(options: Mapping[str, Any]) -> None:
    if "l_cache" not in options:
        raise ValueError(
            "option 'l_cache' (DAPO's L_cache, the punishment ramp's width in tokens) is required; the paper uses "
            "4,096 with L_max 20,480"
        )
    _checks.number(options, "l_cache", minimum=1, integer=True)
    _checks.number(options, "l_max", minimum=1, integer=True)
    if "l_max" in options and options["l_cache"] > options["l_max"]:
        raise ValueError(f"option 'l_cache' ({options['l_cache']}) must be <= 'l_max' ({options['l_max']})")


def punishment(length: int, l_max: int, l_cache: int) -> float:
    """DAPO's Eq. 13 for one completion of ``length`` tokens (see the module docstring)."""
    expected = l_max - l_cache  # L_max - L_cache: the longest completion that goes unpunished
    if length <= expected:
        return 0.0
    if length <= l_max:
        return (expected - length) / l_cache
    return -1.0


@register_reward("overlong", batched=True, validate=validate)
def score(
    completions: Sequence[str],
    samples: Sequence[Mapping[str, Any]],
    context: RewardContext,
    l_cache: int,
    l_max: int | None = None,
) -> list[float]:
    if context.lengths is None:
        raise ValueError(
            "overlong needs each completion's length in tokens and this batch's context has none: training supplies "
            "them; `rewards score` reads a 'length' field on each input row (rollouts.jsonl records carry one)"
        )
    if l_max is None:
        l_max = context.max_length
    if l_max is None:
        raise ValueError(
            "overlong: no 'l_max' option and no length limit in the context; set 'l_max' (tokens), or pass "
            "--max-length to `rewards score`"
        )
    if l_cache > l_max:
        raise ValueError(f"overlong: l_cache ({l_cache}) must be <= L_max ({l_max})")
    return [punishment(length, l_max, l_cache) for length in context.lengths]
