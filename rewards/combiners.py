"""Combiners turn the per-term rewards of a batch into R_total.

A combiner is ``combine(terms, weights, context) -> list[float | None]`` where ``terms`` maps each term key (the
recipe label, default the reward name) to one value per completion (``None`` = not applicable) and ``weights`` maps
the same keys to the recipe's weights. Combiners that need more declare it with keyword-only parameters, which
``Rubric`` fills in: ``completions`` and ``samples`` (the batch texts and rows) and ``options`` (the recipe's
``combiner_options``). A combiner may return a ``Combined`` instead of a plain list when its weighted terms are not
simply ``w_i * r_i`` (so that the logged weighted terms always add up to R_total).

Built-in combiners (the recipe weight of a term always *multiplies* the combiner's own coefficient, so weight 1
reproduces the published formula and weight 0 keeps a term in the logs without training on it):

* ``sum`` (default): R = sum_i w_i r_i (Covo-Audio's R_acc + R_format + R_consistency + R_thinking at weights 1);
* ``audio_thinker``: R = R_a (1 + 0.5 R_c) + 0.5 R_f + R_t with the batch-balanced adaptive accuracy R_a;
* ``cesar``: R = 5 acc + format + consistency + keywords + overthinking (CESAR's weights);
* ``step_audio_r1``: R = 0.8 acc + 0.2 has_reasoning.

Roles: the formula-based combiners find their terms by role name (``accuracy``, ``format``, ...). A term fills a
role when its key equals the role (a rule-based reward can take a role through its label, e.g.
``{name: consistency_rule, label: consistency}``) or through ``combiner_options: {roles: {consistency: my_key}}``.

None policy (``combiner_options: {none: skip|propagate}``, not for audio_thinker): ``skip`` (default) leaves a term
that is None (not applicable) out of the sum; ``propagate`` makes R_total None (row unscorable, zero advantage)
when any term with a non-zero weight is None, for recipes where every weighted term must apply to every row.

Failures are not the combiners' business: a term that could not score a row (``RewardFailure``, e.g. a judge that
never answered) reaches the combiner as None, and ``Rubric.score`` then sets R_total to None for that row whatever the
combiner computed (see ``rewards.rubric``), so a user combiner needs no failure handling of its own.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards.answer_span import parse_completion
from rewards.registry import RewardContext, import_function

Combiner = Callable[..., "list[float | None] | Combined"]
Values = Sequence[float | None]


@dataclass(frozen=True)
class Combined:
    """What a combiner may return besides the totals.

    ``weighted[k][j]`` is term k's contribution to ``total[j]`` (they add up, up to rounding); ``weights[k]`` the
    coefficient actually applied to term k; ``extra`` per-row derived values worth logging (e.g. the adaptive
    accuracy); ``scalars`` batch-level values (e.g. the share of thinking rollouts).
    """

    total: list[float | None]
    weighted: dict[str, list[float | None]]
    weights: dict[str, float]
    extra: dict[str, list[float | None]] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)


def _length(terms: Mapping[str, Values]) -> int:
    return len(next(iter(terms.values()))) if terms else 0


def weighted_sum(
    terms: Mapping[str, Values],
    weights: Mapping[str, float],
    context: RewardContext,
    *,
    options: Mapping[str, Any] | None = None,
) -> list[float | None]:
    """R_total = sum_i w_i * r_i over the terms that apply (r_i is not None).

    With every weight 1 this is the Covo-Audio paper's R_total = R_accuracy + R_format + R_consistency +
    R_thinking. A weight of 0 keeps a term in the logs without training on it. A completion for which no term
    applies gets ``None`` (it is unscorable and receives zero advantage), never 0; with ``options={"none":
    "propagate"}`` so does a completion for which any weighted term is None. (A term that *failed* also arrives
    here as None; the rubric unscores such rows afterwards, so skipping it here never reaches the advantage.)

    Example: terms {acc: [1, 0], fmt: [1, None]}, weights {acc: 2, fmt: 1} -> [3.0, 0.0].
    """
    propagate = (options or {}).get("none", "skip") == "propagate"
    totals: list[float | None] = []
    for j in range(_length(terms)):
        if propagate and any(values[j] is None and weights[name] != 0 for name, values in terms.items()):
            totals.append(None)
            continue
        applicable = [(weights[name], values[j]) for name, values in terms.items() if values[j] is not None]
        totals.append(sum(w * v for w, v in applicable) if applicable else None)
    return totals


# --- roles ------------------------------------------------------------------------------------------------------


def resolve_roles(
    combiner: str, roles: Sequence[str], required: Sequence[str], keys: Sequence[str], options: Mapping[str, Any]
) -> dict[str, str]:
    """Map each role to a term key (see the module docstring); raise ValueError naming what is missing."""
    mapping = dict(options.get("roles") or {})
    unknown_roles = sorted(set(mapping) - set(roles))
    if unknown_roles:
        raise ValueError(f"combiner {combiner!r} has no role(s) {unknown_roles}; its roles are {list(roles)}")
    resolved: dict[str, str] = {}
    for role in roles:
        key = mapping.get(role, role)
        if key in keys:
            resolved[role] = key
        elif role in mapping:
            raise ValueError(f"combiner {combiner!r}: role {role!r} is mapped to {key!r}, which is not a term key")
    missing = [r for r in required if r not in resolved]
    if missing:
        example = missing[0]
        raise ValueError(
            f"combiner {combiner!r} needs term(s) for role(s) {missing}; the terms are {list(keys)}. Add a term "
            f"named or labelled {example!r} (e.g. {{name: {example}_rule, label: {example}}}) or map one with "
            f"combiner_options: {{roles: {{{example}: <term key>}}}}"
        )
    return resolved


def _check_none_option(combiner: str, options: Mapping[str, Any]) -> None:
    if options.get("none", "skip") not in ("skip", "propagate"):
        raise ValueError(f"combiner {combiner!r}: option 'none' must be 'skip' or 'propagate'")


def _check_options(combiner: str, options: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"combiner {combiner!r} has no option(s) {unknown}; it accepts: {list(allowed) or 'none'}")


def _validate_sum(keys: Sequence[str], weights: Mapping[str, float], options: Mapping[str, Any]) -> None:
    _check_options("sum", options, ("none",))
    _check_none_option("sum", options)


weighted_sum.validate = _validate_sum  # type: ignore[attr-defined]


# --- coefficient sums: CESAR, Step-Audio-R1 -----------------------------------------------------------------------


def _coefficient_sum(name: str, coefficients: Mapping[str, float], required: Sequence[str]) -> Callable[..., Combined]:
    def validate(keys: Sequence[str], weights: Mapping[str, float], options: Mapping[str, Any]) -> None:
        _check_options(name, options, ("roles", "none"))
        _check_none_option(name, options)
        resolve_roles(name, list(coefficients), required, keys, options)

    def combine(
        terms: Mapping[str, Values], weights: Mapping[str, float], context: RewardContext, *, options: Mapping
    ) -> Combined:
        roles = resolve_roles(name, list(coefficients), required, list(terms), options)
        role_of = {key: role for role, key in roles.items()}
        used = {k: coefficients[role_of[k]] * weights[k] if k in role_of else weights[k] for k in terms}
        total = weighted_sum(terms, used, context, options=options)
        weighted = {k: [None if v is None else used[k] * v for v in values] for k, values in terms.items()}
        return Combined(total=total, weighted=weighted, weights=used)

    combine.validate = validate  # type: ignore[attr-defined]
    combine.__name__ = name
    return combine


CESAR_WEIGHTS = {"accuracy": 5.0, "format": 1.0, "consistency": 1.0, "keywords": 1.0, "overthinking": 1.0}
cesar = _coefficient_sum("cesar", CESAR_WEIGHTS, required=("accuracy",))
cesar.__doc__ = """CESAR: R = 5 acc + format + consistency + keywords + overthinking (times the recipe weights).

Roles ``accuracy`` (required), ``format``, ``consistency``, ``keywords``, ``overthinking`` get CESAR's coefficients
5/1/1/1/1, multiplied by their recipe weights; any other term is added with its recipe weight. The rule-based
rewards that fit are ``accuracy``, ``format``, ``consistency_cesar`` (label it ``consistency``), ``keywords_rule``
(label ``keywords``) and ``overthinking``. Example: acc 1, format 1, consistency 0.5, keywords 0.75, overthinking
0.6 -> 5 + 1 + 0.5 + 0.75 + 0.6 = 7.85.
"""

STEP_AUDIO_R1_WEIGHTS = {"accuracy": 0.8, "has_reasoning": 0.2}
step_audio_r1 = _coefficient_sum("step_audio_r1", STEP_AUDIO_R1_WEIGHTS, required=("accuracy", "has_reasoning"))
step_audio_r1.__doc__ = """Step-Audio-R1: R = 0.8 acc + 0.2 has_reasoning (times the recipe weights).

Example: a correct answer without reasoning -> 0.8; with reasoning -> 1.0; wrong with reasoning -> 0.2.
"""


# --- Audio-Thinker ------------------------------------------------------------------------------------------------

AUDIO_THINKER_ROLES = ("accuracy", "format", "consistency", "thinking")


def _validate_audio_thinker(keys: Sequence[str], weights: Mapping[str, float], options: Mapping[str, Any]) -> None:
    _check_options("audio_thinker", options, ("roles", "think_prefilled"))
    if not isinstance(options.get("think_prefilled", False), bool):
        raise ValueError("combiner 'audio_thinker': option 'think_prefilled' must be true or false")
    resolve_roles("audio_thinker", AUDIO_THINKER_ROLES, AUDIO_THINKER_ROLES, keys, options)


def adaptive_accuracy(correct: float, thinks: bool, g_think: float, g_nothink: float) -> float:
    """Audio-Thinker's balanced accuracy for one rollout.

    think:    correct -> g_think,       wrong -> -(1 - g_think)
    no-think: correct -> 2 g_nothink,   wrong -> -g_nothink - 2 (1 - g_nothink)

    A fractional ``correct`` (a plugin accuracy in [0, 1]) interpolates linearly between the two cases.
    """
    if thinks:
        right, wrong = g_think, -(1.0 - g_think)
    else:
        right, wrong = 2.0 * g_nothink, -g_nothink - 2.0 * (1.0 - g_nothink)
    return correct * right + (1.0 - correct) * wrong


def audio_thinker(
    terms: Mapping[str, Values],
    weights: Mapping[str, float],
    context: RewardContext,
    *,
    completions: Sequence[str],
    options: Mapping[str, Any],
) -> Combined:
    """Audio-Thinker (arXiv 2508.08039): R = R_a (1 + 0.5 R_c) + 0.5 R_f + R_t.

    Per batch (the whole generation batch the trainer scores at once):

    * thinks_j: completion j has a closed, non-blank ``<think>`` (``think_prefilled`` option for templates that
      open it); lambda = share of thinking rollouts; p = clip(step / total_steps, 0, 1);
    * g_think = exp(-lambda (1 - p)), g_nothink = exp(-(1 - lambda)(1 - p));
    * R_a = ``adaptive_accuracy(accuracy_j, thinks_j, g_think, g_nothink)`` (base values 1, 0, 2, -1 at p = 1);
    * R_c = the consistency term for thinking rollouts, 1 for no-think ones;
    * R_t = the thinking term for thinking rollouts; for no-think ones the mean thinking score of the batch's
      thinking rollouts (0 when there are none: then every row gets the same constant, which no group advantage
      sees).

    With recipe weights w: R = w_a R_a (1 + 0.5 w_c R_c) + 0.5 w_f R_f + w_t R_t, so all-1 weights are the paper and
    ``weight: 0`` on consistency/thinking gives its ablations. Logged weighted terms: accuracy w_a R_a, consistency
    the bonus w_a R_a 0.5 w_c R_c, format 0.5 w_f R_f, thinking w_t R_t (they add up to R); weights used: w_a,
    0.5 w_c, 0.5 w_f, w_t. Other terms are added as w_i r_i. A row whose accuracy or format is None, or a thinking
    row whose consistency/thinking (with non-zero weight) is None, gets R = None (unscorable); a row on which a
    judge failed is unscored by the rubric in any case.

    Audio-Thinker's R_f also accepts a bare ``<answer>`` (no-think rollouts): use ``{name: format, options: {mode:
    adaptive}}`` for the format term, as the paper's prompt lets the model skip reasoning.

    Example (p = 1, so g = 1): a thinking rollout, correct, consistent, format 1, thinking 0.8:
    1 * (1 + 0.5) + 0.5 + 0.8 = 2.8. A no-think correct rollout in a batch whose thinkers average 0.6:
    2 * (1 + 0.5) + 0.5 + 0.6 = 4.1.
    """
    roles = resolve_roles("audio_thinker", AUDIO_THINKER_ROLES, AUDIO_THINKER_ROLES, list(terms), options)
    a, f, c, t = (roles[r] for r in AUDIO_THINKER_ROLES)
    prefilled = bool(options.get("think_prefilled", False))
    n = _length(terms)
    thinks = [parse_completion(text, prefilled).thinks for text in completions]
    share = sum(thinks) / n if n else 0.0
    progress = min(1.0, max(0.0, context.step / context.total_steps)) if context.total_steps > 0 else 1.0
    g_think = math.exp(-share * (1.0 - progress))
    g_nothink = math.exp(-(1.0 - share) * (1.0 - progress))
    thinker_scores = [v for v, th in zip(terms[t], thinks, strict=True) if th and v is not None]
    mean_thinking = sum(thinker_scores) / len(thinker_scores) if thinker_scores else 0.0

    used = {k: float(weights[k]) for k in terms}
    used[c] = 0.5 * weights[c]
    used[f] = 0.5 * weights[f]
    others = [k for k in terms if k not in (a, f, c, t)]
    weighted: dict[str, list[float | None]] = {k: [] for k in terms}
    total: list[float | None] = []
    r_a: list[float | None] = []
    r_c: list[float | None] = []
    r_t: list[float | None] = []
    for j in range(n):
        acc, fmt = terms[a][j], terms[f][j]
        cons = terms[c][j] if thinks[j] else 1.0
        think_score = terms[t][j] if thinks[j] else mean_thinking
        ra = None if acc is None else adaptive_accuracy(acc, thinks[j], g_think, g_nothink)
        r_a.append(ra)
        r_c.append(cons)
        r_t.append(think_score)
        unscorable = (
            ra is None
            or fmt is None
            or (cons is None and weights[c] != 0)
            or (think_score is None and weights[t] != 0)
        )
        if unscorable:
            for k in terms:
                weighted[k].append(None)
            total.append(None)
            continue
        contributions = {
            a: used[a] * ra,
            c: used[a] * ra * used[c] * (cons or 0.0),  # cons None only when its weight is 0
            f: used[f] * fmt,
            t: used[t] * (think_score or 0.0),
        }
        for k in others:
            value = terms[k][j]
            contributions[k] = None if value is None else used[k] * value
        for k in terms:
            weighted[k].append(contributions[k])
        total.append(sum(v for v in contributions.values() if v is not None))
    return Combined(
        total=total,
        weighted=weighted,
        weights=used,
        extra={
            "audio_thinker/thinks": [float(x) for x in thinks],
            "audio_thinker/accuracy_adaptive": r_a,
            "audio_thinker/consistency_used": r_c,
            "audio_thinker/thinking_used": r_t,
        },
        scalars={
            "audio_thinker/think_share": share,
            "audio_thinker/progress": progress,
            "audio_thinker/g_think": g_think,
            "audio_thinker/g_nothink": g_nothink,
            "audio_thinker/mean_thinking": mean_thinking,
        },
    )


audio_thinker.validate = _validate_audio_thinker  # type: ignore[attr-defined]


COMBINERS: dict[str, Combiner] = {
    "sum": weighted_sum,
    "audio_thinker": audio_thinker,
    "cesar": cesar,
    "step_audio_r1": step_audio_r1,
}


def get_combiner(name: str) -> Combiner:
    """A built-in combiner by name, or a user one by ``package.module:function`` path."""
    if name in COMBINERS:
        return COMBINERS[name]
    if ":" in name:
        return import_function(name, "combiner")
    raise KeyError(f"unknown reward combiner {name!r}; available: {', '.join(sorted(COMBINERS))}")


def validate_combiner(
    combiner: Combiner, name: str, keys: Sequence[str], weights: Mapping[str, float], options: Mapping[str, Any]
) -> None:
    """Run the combiner's ``validate`` hook, if any; a combiner without one accepts no options."""
    hook = getattr(combiner, "validate", None)
    if hook is not None:
        hook(list(keys), dict(weights), dict(options))
    elif options and "options" not in inspect.signature(combiner).parameters:
        raise ValueError(f"combiner {name!r} takes no combiner_options, got {sorted(options)}")


def call_combiner(
    combiner: Combiner,
    terms: Mapping[str, Values],
    weights: Mapping[str, float],
    context: RewardContext,
    *,
    completions: Sequence[str],
    samples: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
) -> list[float | None] | Combined:
    """Call ``combiner`` with the keyword arguments it declares (completions, samples, options)."""
    params = inspect.signature(combiner).parameters
    available = {"completions": list(completions), "samples": list(samples), "options": dict(options)}
    kwargs = {k: v for k, v in available.items() if k in params}
    return combiner(terms, weights, context, **kwargs)
