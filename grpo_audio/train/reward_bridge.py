"""The one adapter between a ``rewards.Rubric`` and TRL's reward-function contract.

TRL receives a single reward function, ``R_total``, with weight 1: the rubric sums the terms (once, with the
recipe's weights) and the function reports every raw term, every weighted term and R_total through TRL's
``log_metric`` so ``metrics.jsonl`` shows exactly the numbers the advantages were computed from:
``rewards/<term>/mean``, ``rewards/<term>/weighted_mean``, ``rewards/<term>/none_frac``,
``rewards/<term>/failed_frac``, ``rewards/unscored`` (a count) and ``rewards/unscored_frac``, the combiner's own
values (``rewards/combiner/...``), the rewards' counters (judge requests, failures, ...) and TRL's own
``rewards/R_total/mean``. A term that is None for a completion (not applicable) is left out of its mean and counted
in ``none_frac``; one that failed (``RewardFailure``) is left out of its mean and counted in ``failed_frac`` instead.

A completion with no applicable term, or *unscored* because a term of non-zero weight failed, gets R_total None:
TRL 1.16 leaves a row whose every reward is None out of its group's mean and std and gives it advantage 0
(``AudioGRPOTrainer`` also drops it from the loss). When more than the recipe's ``rewards.max_unscored_fraction`` of
a batch is unscored, the run stops with ``UnscoredRowsError`` naming the failed terms, their counts and first
reasons.

With several training processes the trainer calls ``R_total`` once per step, on process 0, with the global batch
(``AudioGRPOTrainer._calculate_rewards``): group-level rewards see whole groups, an LLM judge is asked once per
completion, and the logged means are over the global batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from rewards import RewardContext, Rubric
from rewards.rubric import RewardBreakdown

TRL_CONTROL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids", "prompts")


def _fraction(flags: list[bool]) -> float:
    return sum(flags) / max(1, len(flags))


def _mean(values: list[float | None]) -> float:
    applicable = [v for v in values if v is not None]
    return sum(applicable) / len(applicable) if applicable else math.nan


def make_trl_reward(
    rubric: Rubric,
    group_size: int,
    on_breakdown: Callable[[RewardBreakdown, list[dict], float], None] | None = None,
):
    """TRL reward function ``R_total``; ``on_breakdown(breakdown, samples, seconds)`` sees every scored batch."""

    def R_total(completions: list, **kwargs: Any) -> list[float | None]:  # noqa: N802  (TRL logs the __name__)
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        columns = {k: v for k, v in kwargs.items() if k not in TRL_CONTROL_KWARGS}
        samples = [{k: v[i] for k, v in columns.items()} for i in range(len(texts))]
        state = kwargs.get("trainer_state")
        context = RewardContext(
            step=int(getattr(state, "global_step", 0) or 0),
            total_steps=max(1, int(getattr(state, "max_steps", 1) or 1)),
            group_size=group_size,
        )
        start = time.perf_counter()
        breakdown = rubric.score(texts, samples, context)
        seconds = time.perf_counter() - start
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for name, values in breakdown.terms.items():
                failed = [reason is not None for reason in breakdown.failed.get(name, [None] * len(values))]
                log_metric(f"rewards/{name}/mean", _mean(values))
                log_metric(f"rewards/{name}/weighted_mean", _mean(breakdown.weighted[name]))
                not_applicable = [v is None and not f for v, f in zip(values, failed, strict=True)]
                log_metric(f"rewards/{name}/none_frac", _fraction(not_applicable))
                log_metric(f"rewards/{name}/failed_frac", _fraction(failed))
            log_metric("rewards/unscored", float(breakdown.unscored_count()))
            log_metric("rewards/unscored_frac", _fraction([reason is not None for reason in breakdown.unscored]))
            for name, values in breakdown.extra.items():  # per-row values a combiner derived
                log_metric(f"rewards/combiner/{name}/mean", _mean(values))
            for name, value in breakdown.scalars.items():  # batch-level combiner values
                log_metric(f"rewards/combiner/{name}", float(value))
            for name, value in rubric.metrics().items():  # judge requests, cache hits, failures, ...
                log_metric(f"rewards/{name}", float(value))
        if on_breakdown is not None:
            on_breakdown(breakdown, samples, seconds)
        rubric.check_unscored(breakdown)  # after logging and on_breakdown: the record shows the failing batch
        return breakdown.total

    return R_total
