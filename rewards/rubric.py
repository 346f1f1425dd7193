"""A rubric: the recipe's reward terms, their weights and options, and the combiner that makes R_total.

This is the single place where terms are combined. The trainer logs every raw term, every weighted term and R_total
from the same ``RewardBreakdown``, so the logged numbers are the ones the advantages were computed from.

Everything that can be checked without data is checked when the rubric is built, so a bad recipe fails before
step 0: unknown reward names (with a suggestion), unknown or invalid options, duplicate keys, non-finite weights,
and the combiner's requirements (e.g. ``audio_thinker`` needs accuracy/format/consistency/thinking terms).
``Rubric.probe()`` then asks each reward that has a live dependency (the LLM judges) one made-up question.

Failures (``RewardFailure``, e.g. a judge that never answered) are not values: the combiner sees None for them, and
afterwards every row on which a term of non-zero weight failed is *unscored*: R_total None and every weighted term
None, whatever the combiner (built-in or a user's), so no total is ever computed without a term that failed. A
failed term of weight 0 is recorded but leaves the row scored. ``RewardBreakdown.failed`` keeps the reasons per term
and ``RewardBreakdown.unscored`` per row; ``Rubric.check_unscored`` stops a run when more than
``max_unscored_fraction`` of a batch is unscored.

The recipe section it is built from (``rubric_from_config``)::

    rewards:
      combiner: sum                  # or audio_thinker, cesar, step_audio_r1, package.module:function
      combiner_options: {}           # optional, per combiner (roles, none, think_prefilled)
      max_unscored_fraction: 0.2     # optional: stop when a batch has more unscored rows than this share
      terms:
        - {name: accuracy, weight: 1.0, options: {rule: mmau}}
        - {name: consistency_rule, label: consistency}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards.combiners import Combined, call_combiner, get_combiner, validate_combiner
from rewards.registry import RegisteredReward, RewardContext, RewardFailure, get_reward

DEFAULT_MAX_UNSCORED_FRACTION = 0.2


class UnscoredRowsError(RuntimeError):
    """More of a batch's rows are unscored (a weighted term failed) than ``max_unscored_fraction`` allows."""


class RewardProbeError(RuntimeError):
    """A reward's live check before training failed (an unreachable judge, or one whose reply does not parse)."""


@dataclass(frozen=True)
class TermSpec:
    """One recipe entry: ``{name: accuracy, weight: 1.0, options: {rule: mmau}}``.

    ``label`` is the name the term is logged under (defaults to ``name``; set it to use one reward twice, or to give
    a reward a combiner role, e.g. ``{name: consistency_rule, label: consistency}``).
    """

    name: str
    weight: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class RewardBreakdown:
    """Per-completion rewards of one batch.

    ``terms``: raw values per term key (None where the term does not apply or failed); ``weighted``: each term's
    contribution to R_total (w_i * r_i for sums); ``weights``: the coefficients actually applied (recipe weight times
    the combiner's coefficient); ``total``: R_total per completion (None = no advantage: no term applied, or the row
    is unscored). ``extra``: per-row values the combiner derived (e.g. Audio-Thinker's adaptive accuracy);
    ``scalars``: batch-level values (e.g. the share of thinking rollouts). ``failed[k][j]``: why term k could not
    score row j (None where it did); ``unscored[j]``: why row j has no R_total because a term of non-zero weight
    failed (``"consistency: timeout: ..."``), None for a scored row.
    """

    terms: dict[str, list[float | None]]
    weighted: dict[str, list[float | None]]
    weights: dict[str, float]
    total: list[float | None]
    extra: dict[str, list[float | None]] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    failed: dict[str, list[str | None]] = field(default_factory=dict)
    unscored: list[str | None] = field(default_factory=list)

    def rows(self, start: int, end: int) -> RewardBreakdown:
        """The per-completion values of rows ``start:end`` (batch-level ``weights``/``scalars`` kept whole)."""
        return self.take(range(start, min(end, len(self.total))))

    def take(self, indices: Sequence[int]) -> RewardBreakdown:
        """The per-completion values of the rows at ``indices``, in that order (batch-level values kept whole)."""

        def pick(values: list) -> list:
            return [values[i] for i in indices] if values else []

        def part(columns: dict[str, list]) -> dict[str, list]:
            return {name: pick(values) for name, values in columns.items()}

        return RewardBreakdown(
            part(self.terms), part(self.weighted), dict(self.weights), pick(self.total), part(self.extra),
            dict(self.scalars), part(self.failed), pick(self.unscored),
        )  # fmt: skip

    @staticmethod
    def concat(parts: Sequence[RewardBreakdown]) -> RewardBreakdown:
        """The rows of several batches' breakdowns, one after another; batch-level ``weights`` and ``scalars`` are
        the first batch's."""
        first = parts[0]

        def joined(columns: str) -> dict[str, list]:
            names = getattr(first, columns)
            return {name: [v for p in parts for v in getattr(p, columns)[name]] for name in names}

        return RewardBreakdown(
            joined("terms"), joined("weighted"), dict(first.weights), [t for p in parts for t in p.total],
            joined("extra"), dict(first.scalars), joined("failed"),
            [u for p in parts for u in p.unscored] if all(p.unscored for p in parts) else [],
        )  # fmt: skip

    def unscored_count(self) -> int:
        return sum(reason is not None for reason in self.unscored)


class Rubric:
    """Resolves term specs against the registry once, then scores batches."""

    def __init__(
        self,
        specs: Sequence[TermSpec],
        combiner: str = "sum",
        combiner_options: Mapping[str, Any] | None = None,
        max_unscored_fraction: float = DEFAULT_MAX_UNSCORED_FRACTION,
    ) -> None:
        if not specs:
            raise ValueError("a rubric needs at least one reward term")
        if (
            isinstance(max_unscored_fraction, bool)
            or not isinstance(max_unscored_fraction, (int, float))
            or not 0.0 <= max_unscored_fraction <= 1.0
        ):
            raise ValueError(f"max_unscored_fraction must be a number in [0, 1], got {max_unscored_fraction!r}")
        self.max_unscored_fraction = float(max_unscored_fraction)
        keys = [s.key for s in specs]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"reward term(s) listed twice: {duplicates}; give one of them a distinct 'label'")
        for spec in specs:
            if (
                isinstance(spec.weight, bool)
                or not isinstance(spec.weight, (int, float))
                or not math.isfinite(spec.weight)
            ):
                raise ValueError(f"reward term {spec.key!r}: weight must be a finite number, got {spec.weight!r}")
        self.specs = list(specs)
        self._resolved: dict[str, RegisteredReward] = {}
        for spec in self.specs:
            reward = get_reward(spec.name)
            reward.validate(spec.options)
            self._resolved[spec.key] = reward
        self.combiner_name = combiner
        self._combine = get_combiner(combiner)
        self.combiner_options = self._inherit_think_prefilled(dict(combiner_options or {}))
        validate_combiner(self._combine, combiner, keys, self.weights, self.combiner_options)

    def _inherit_think_prefilled(self, options: dict[str, Any]) -> dict[str, Any]:
        # audio_thinker detects thinking rollouts itself; it must parse completions the way the terms do.
        if self.combiner_name != "audio_thinker":
            return options
        values = {bool(s.options["think_prefilled"]) for s in self.specs if "think_prefilled" in s.options}
        if "think_prefilled" not in options and len(values) == 1:
            options["think_prefilled"] = values.pop()
        elif "think_prefilled" in options and values - {options["think_prefilled"]}:
            raise ValueError(
                "combiner 'audio_thinker': combiner_options.think_prefilled disagrees with a term's think_prefilled"
            )
        elif len(values) > 1:
            raise ValueError("reward terms disagree on think_prefilled; set it the same way on every term")
        return options

    @property
    def weights(self) -> dict[str, float]:
        return {s.key: float(s.weight) for s in self.specs}

    def score(
        self, completions: Sequence[str], samples: Sequence[Mapping[str, Any]], context: RewardContext | None = None
    ) -> RewardBreakdown:
        context = context or RewardContext()
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
        context.check_rows(len(completions))
        raw = {
            spec.key: self._resolved[spec.key].score_batch(completions, samples, context, **dict(spec.options))
            for spec in self.specs
        }
        # A failure is not a value: the combiner sees None (as if the term did not apply) and the row is unscored below
        failed = {k: [v.reason if isinstance(v, RewardFailure) else None for v in values] for k, values in raw.items()}
        terms = {k: [None if isinstance(v, RewardFailure) else v for v in values] for k, values in raw.items()}
        weights = self.weights
        result = call_combiner(
            self._combine, terms, weights, context,
            completions=completions, samples=samples, options=self.combiner_options,
        )  # fmt: skip
        combined = result if isinstance(result, Combined) else None
        total = list(combined.total if combined is not None else result)
        if len(total) != len(completions):
            raise ValueError(
                f"combiner {self.combiner_name!r} returned {len(total)} totals for {len(completions)} completions"
            )
        if combined is not None:
            weighted = {k: list(v) for k, v in combined.weighted.items()}
        else:
            weighted = {k: [None if v is None else weights[k] * v for v in values] for k, values in terms.items()}
        unscored = self._unscored(failed, len(completions))
        for j, reason in enumerate(unscored):
            if reason is not None:  # whatever the combiner made of the None it was handed, the row has no total
                total[j] = None
                for values in weighted.values():
                    values[j] = None
        return RewardBreakdown(
            terms=terms,
            weighted=weighted,
            weights=dict(combined.weights) if combined is not None else weights,
            total=total,
            extra={k: list(v) for k, v in combined.extra.items()} if combined is not None else {},
            scalars=dict(combined.scalars) if combined is not None else {},
            failed=failed,
            unscored=unscored,
        )

    def _unscored(self, failed: Mapping[str, Sequence[str | None]], n: int) -> list[str | None]:
        """Per row, ``"key: reason; ..."`` over the failed terms of non-zero recipe weight, or None."""
        weights = self.weights
        out: list[str | None] = []
        for j in range(n):
            reasons = [f"{k}: {v[j]}" for k, v in failed.items() if v[j] is not None and weights[k] != 0]
            out.append("; ".join(reasons) if reasons else None)
        return out

    def check_unscored(self, breakdown: RewardBreakdown) -> None:
        """Raise ``UnscoredRowsError`` when more than ``max_unscored_fraction`` of the batch's rows are unscored.

        The message names each failed term with its count and its first reason, e.g. ``12 of 16 completions (75%)
        are unscored, more than rewards.max_unscored_fraction=0.2 allows: consistency failed on 12 (first: 'timeout:
        no reply within 60.0s')``.
        """
        n = len(breakdown.unscored)
        count = breakdown.unscored_count()
        if not n or count / n <= self.max_unscored_fraction:
            return
        parts = []
        for key, reasons in breakdown.failed.items():
            failures = [r for r in reasons if r is not None]
            if failures:
                weight = "" if self.weights[key] != 0 else " (weight 0: logged only)"
                parts.append(f"{key} failed on {len(failures)}{weight} (first: {failures[0]!r})")
        raise UnscoredRowsError(
            f"{count} of {n} completions ({count / n:.0%}) are unscored, more than rewards.max_unscored_fraction="
            f"{self.max_unscored_fraction:g} allows: {'; '.join(parts)}"
        )

    def probe(self) -> dict[str, str]:
        """Run each term's ``probe`` hook once (one made-up request to each LLM judge), before training.

        Returns ``{term key: what answered}`` for the terms that have a probe; raises ``RewardProbeError`` naming the
        term (and, through the hook's message, the URL and the reply or connection error) at the first that fails.
        """
        results: dict[str, str] = {}
        for spec in self.specs:
            try:
                outcome = self._resolved[spec.key].probe(spec.options)
            except (ValueError, RuntimeError, OSError) as exc:
                raise RewardProbeError(f"reward term {spec.key!r}: probe failed: {exc}") from exc
            if outcome is not None:
                results[spec.key] = outcome
        return results

    def metrics(self) -> dict[str, float]:
        """Counters of the terms that keep some (the LLM judges: requests, cache hits, failures, retries...).

        Keys are ``"{term key}/{counter}"``; values are cumulative since the process started. Empty for rule rewards.
        """
        out: dict[str, float] = {}
        for spec in self.specs:
            for name, value in self._resolved[spec.key].metrics(spec.options).items():
                out[f"{spec.key}/{name}"] = value
        return out


_SECTION_KEYS = {"combiner", "combiner_options", "terms", "max_unscored_fraction"}
_TERM_KEYS = {"name", "weight", "options", "label"}


def rubric_from_config(section: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Rubric:
    """Build a Rubric from a recipe's ``rewards:`` section (see the module docstring); unknown keys are errors.

    A bare list of terms is accepted too and means ``combiner: sum``.
    """
    if isinstance(section, Sequence) and not isinstance(section, (str, bytes)):
        section = {"terms": section}
    if not isinstance(section, Mapping):
        raise ValueError(f"the rewards section must be a mapping or a list of terms, got {type(section).__name__}")
    unknown = sorted(set(section) - _SECTION_KEYS)
    if unknown:
        raise ValueError(f"rewards: unknown key(s) {unknown}; allowed: {sorted(_SECTION_KEYS)}")
    terms = section.get("terms")
    if not isinstance(terms, Sequence) or isinstance(terms, (str, bytes)) or not terms:
        raise ValueError("rewards: 'terms' must be a non-empty list of {name, weight, options, label}")
    specs = []
    for i, term in enumerate(terms):
        if isinstance(term, str):
            term = {"name": term}
        if not isinstance(term, Mapping) or "name" not in term:
            raise ValueError(f"rewards.terms[{i}]: expected a mapping with a 'name', got {term!r}")
        bad = sorted(set(term) - _TERM_KEYS)
        if bad:
            raise ValueError(
                f"rewards.terms[{i}] ({term['name']!r}): unknown key(s) {bad}; allowed: {sorted(_TERM_KEYS)}"
            )
        options = term.get("options") or {}
        if not isinstance(options, Mapping):
            raise ValueError(f"rewards.terms[{i}] ({term['name']!r}): 'options' must be a mapping")
        specs.append(
            TermSpec(
                name=str(term["name"]),
                weight=term.get("weight", 1.0),
                options=dict(options),
                label=term.get("label"),
            )
        )
    options = section.get("combiner_options") or {}
    if not isinstance(options, Mapping):
        raise ValueError("rewards: 'combiner_options' must be a mapping")
    return Rubric(
        specs,
        combiner=str(section.get("combiner") or "sum"),
        combiner_options=options,
        max_unscored_fraction=section.get("max_unscored_fraction", DEFAULT_MAX_UNSCORED_FRACTION),
    )
