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
reasons (in training, after a checkpoint of the last finished step: ``grpo_audio.train.scoring_stop``).

The rubric's ``RewardContext`` carries, per completion, its length |y| = ``len(completion_ids)`` in tokens (TRL passes
the ids as ``completion_ids``, in the order of ``completions``) and its finish reason: ``"length"`` when the last id
is not a stop id (the EOS ids and the pad id, ``stop_token_ids``), else ``"stop"``, the rule TRL's
``completions/clipped_ratio`` uses; and the run's length limit (``max_length``, ``rollout.max_completion_length``).
Without ``stop_token_ids`` the finish reasons are None (unknown), without ``completion_ids`` the lengths too.

Per category. When rows carry a category, every term's mean and R_total's mean are also logged per category:
``rewards_by_category/<category>/<term>/mean`` and ``rewards_by_category/<category>/R_total/mean``, each over that
category's rows of the batch whose value is not None (a category with no such row this step logs nothing for it).
A row's category is the first of its ``category_fields`` that is set, by default ``task`` (MMAU: sound, music,
speech; the synthetic tasks), ``question_type`` (AVQA) and ``category`` (MMSU, MMAR, a JSONL of your own); a row
with none of them is in no category. In the metric key, every run of characters other than letters, digits,
``_``, ``.`` and ``-`` becomes ``_`` (``"Come From"`` -> ``Come_From``; a ``/`` would nest the tag in TensorBoard and
W&B), so two categories that differ only there share a curve.

With several training processes the trainer calls ``R_total`` once per step, on process 0, with the global batch
(``AudioGRPOTrainer._calculate_rewards``): group-level rewards see whole groups, an LLM judge is asked once per
completion, and the logged means are over the global batch. This matters for the per-category means: TRL averages a
``log_metric`` value across processes weighted by how many values each logged, so per-process means of categories
of different sizes would be averaged as if they were equal; one call on the global batch gives the exact mean.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from rewards import RewardContext, Rubric
from rewards.rubric import RewardBreakdown

TRL_CONTROL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids", "prompts")
# Row fields naming a row's category, first set wins: MMAU's and the synthetic data's task, AVQA's question type,
# then a plain category (MMSU, MMAR, user JSONL). MMAU rows carry a category too; its task is the slice it reports.
CATEGORY_FIELDS = ("task", "question_type", "category")
_UNSAFE_IN_KEY = re.compile(r"[^\w.-]+")


def _fraction(flags: list[bool]) -> float:
    return sum(flags) / max(1, len(flags))


def _mean(values: list[float | None]) -> float:
    applicable = [v for v in values if v is not None]
    return sum(applicable) / len(applicable) if applicable else math.nan


def finish_reason(ids: Sequence[int], stop_ids: Collection[int]) -> str:
    """``"length"`` when the completion's last id is not a stop id (it was cut at the limit), else ``"stop"``; an empty
    completion counts as stopped (nothing was cut)."""
    return "length" if ids and ids[-1] not in stop_ids else "stop"


def metric_key_part(value: Any) -> str:
    """``value`` as one safe segment of a metric key (see the module docstring); ``_`` when nothing is left."""
    return _UNSAFE_IN_KEY.sub("_", str(value)).strip("_") or "_"


def row_categories(samples: Sequence[Mapping[str, Any]], fields: Sequence[str] = CATEGORY_FIELDS) -> list[str | None]:
    """Each row's category as a metric-key segment: its first field of ``fields`` that is set, else None."""
    out: list[str | None] = []
    for sample in samples:
        values = [sample.get(name) for name in fields]
        given = [v for v in values if v is not None and not isinstance(v, bool) and str(v).strip()]
        out.append(metric_key_part(str(given[0]).strip()) if given else None)
    return out


def log_by_category(log_metric: Callable[[str, float], None], breakdown: RewardBreakdown, categories) -> None:
    """Per category: every term's mean and R_total's mean over the category's rows that have a value."""
    columns = {**breakdown.terms, "R_total": breakdown.total}
    for category in sorted({c for c in categories if c is not None}):
        rows = [j for j, c in enumerate(categories) if c == category]
        for name, values in columns.items():
            mean = _mean([values[j] for j in rows])
            if not math.isnan(mean):
                log_metric(f"rewards_by_category/{category}/{name}/mean", mean)


def reward_samples(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The per-row columns ``R_total`` hands the rubric for dataset rows: every column but the prompt and completion
    (TRL's ``_calculate_rewards`` passes the others as keyword lists) and TRL's control arguments."""
    skip = {"prompt", "completion", "completion_ids", *TRL_CONTROL_KWARGS}
    return [{k: v for k, v in row.items() if k not in skip} for row in rows]


def reward_context(
    completion_ids: Sequence[Sequence[int]] | None,
    rows: int,
    *,
    step: int,
    total_steps: int,
    group_size: int,
    max_length: int | None,
    stop_token_ids: Collection[int],
) -> RewardContext:
    """The ``RewardContext`` of a batch of ``rows`` completions at optimizer step ``step`` (module docstring)."""
    if completion_ids is not None and len(completion_ids) != rows:
        raise ValueError(f"R_total: {len(completion_ids)} completion_ids for {rows} completions")
    stop_ids, ids = set(stop_token_ids), completion_ids  # ids: the rows' token ids, stop token included
    return RewardContext(
        step=step,
        total_steps=max(1, total_steps),
        group_size=group_size,
        lengths=None if ids is None else [len(row) for row in ids],  # |y| in tokens, stop token included
        finish_reasons=None if ids is None or not stop_ids else [finish_reason(row, stop_ids) for row in ids],
        max_length=max_length,
    )


def make_trl_reward(
    rubric: Rubric,
    group_size: int,
    on_breakdown: Callable[[RewardBreakdown, list[dict], float], None] | None = None,
    *,
    max_length: int | None = None,
    stop_token_ids: Collection[int] | Callable[[], Collection[int]] = (),
    category_fields: Sequence[str] = CATEGORY_FIELDS,
    check_unscored: bool = True,
    prescored: Callable[[list[str], list[dict], RewardContext], RewardBreakdown | None] | None = None,
):
    """TRL reward function ``R_total``; ``on_breakdown(breakdown, samples, seconds)`` sees every scored batch.

    Args:
        rubric: the recipe's terms, weights and combiner.
        group_size: G, the completions per prompt (``GRPOConfig.num_generations``).
        on_breakdown: called with each batch's breakdown, its samples and the seconds scoring took.
        max_length: the run's limit on a completion's length in tokens (``GRPOConfig.max_completion_length``), handed
            to the rewards as ``RewardContext.max_length``.
        stop_token_ids: the ids that end a completion (TRL's ``eos_token_ids`` and the pad id), or a function
            returning them, called at scoring time (TRL knows its EOS ids only once its constructor has run); a
            completion whose last id is not among them finished by ``"length"``. Empty: finish reasons unknown.
        category_fields: the row fields naming a row's category, first set wins (module docstring).
        check_unscored: raise ``UnscoredRowsError`` here when too much of the batch is unscored; the trainer checks
            the global batch itself on every process instead (``AudioGRPOTrainer._calculate_rewards``).
        prescored: called with the rubric's arguments before scoring; a breakdown it returns is used instead of
            scoring again (the batch was scored ahead, with exactly these arguments: ``rollout.overlap``).
    """

    def R_total(completions: list, **kwargs: Any) -> list[float | None]:  # noqa: N802  (TRL logs the __name__)
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        columns = {k: v for k, v in kwargs.items() if k not in TRL_CONTROL_KWARGS}
        samples = [{k: v[i] for k, v in columns.items()} for i in range(len(texts))]
        state = kwargs.get("trainer_state")
        context = reward_context(
            kwargs.get("completion_ids"),
            len(texts),
            step=int(getattr(state, "global_step", 0) or 0),
            total_steps=int(getattr(state, "max_steps", 1) or 1),
            group_size=group_size,
            max_length=max_length,
            stop_token_ids=stop_token_ids() if callable(stop_token_ids) else stop_token_ids,
        )
        start = time.perf_counter()
        found = prescored(texts, samples, context) if prescored is not None else None
        breakdown = found if found is not None else rubric.score(texts, samples, context)
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
            log_by_category(log_metric, breakdown, row_categories(samples, category_fields))
        if on_breakdown is not None:
            on_breakdown(breakdown, samples, seconds)
        if check_unscored:
            rubric.check_unscored(breakdown)  # after logging and on_breakdown: the record shows the failing batch
        return breakdown.total

    return R_total
