"""One flat registry of reward functions, addressed by name in recipes.

Two kinds of entry:

* per-completion rewards: ``score(completion: str, sample: Mapping, **options) -> float | None | RewardFailure``;
* batched rewards (``batched=True``): ``score(completions: list[str], samples: list[Mapping], context:
  RewardContext, **options) -> list[float | None | RewardFailure]``, for rewards that need the whole batch or group
  (an LLM judge batching its requests, a batch-balanced adaptive accuracy). ``group_level=True`` (implies batched)
  declares a reward that needs all G completions of each prompt: the batch it receives must hold whole groups
  (rows ``[i*G:(i+1)*G]`` share a prompt, ``G = context.group_size``), which is checked.

A recipe names a registered reward (``accuracy``) or a user function by import path (``my_pkg.my_mod:my_reward``);
the function's flags are read from the ``batched``/``group_level`` attributes that ``@register_reward`` sets, so a
plugin can be as small as::

    def my_reward(completion, sample, bonus=1.0):
        return bonus if "audio" in completion else 0.0

Optional hooks a reward function may carry (``@register_reward`` sets the first):

* ``validate_options(options)``: raise ``ValueError`` on bad option values, called once when the rubric is built;
* ``metrics(**options) -> dict[str, float]``: counters the trainer can log (the LLM judges report requests, cache
  hits, failures and retries this way);
* ``probe(**options) -> str``: one cheap live check (an LLM judge asks one made-up question) run before training;
  raise ``ValueError``/``RuntimeError`` with a one-line reason when the reward cannot work, return a short
  description of what answered otherwise.

Three kinds of value per row: a finite real number (the reward), ``None`` (not applicable: the reward does not
apply to this row, e.g. no gold answer, and is left out of R_total), and ``RewardFailure(reason)`` (the reward
applies but could not be computed, e.g. the judge never answered). A failure is never a number: the rubric leaves
a row on which a weighted term failed unscored (R_total None, no advantage, no loss).

``score_batch`` is the adapter every caller goes through. It enforces the contract: one value per completion,
each a finite real number, None or a ``RewardFailure``. A reward that raises, miscounts or returns NaN/inf stops the
run with an error naming the reward (and the row, where known); nothing is turned into a silent 0.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class UnknownRewardError(KeyError):
    """A recipe names a reward that is neither registered nor importable."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class DuplicateRewardError(ValueError):
    """Two rewards were registered under the same name."""


class RewardError(RuntimeError):
    """A reward function raised while scoring; the message names the reward and, for per-row rewards, the row.

    The original exception is chained as ``__cause__``.
    """

    def __init__(self, reward: str, message: str) -> None:
        super().__init__(message)
        self.reward = reward


class RewardOutputError(ValueError):
    """A reward returned the wrong number of values, or a value that is not a finite number or None."""

    def __init__(self, reward: str, message: str) -> None:
        super().__init__(message)
        self.reward = reward


@dataclass(frozen=True)
class RewardFailure:
    """A row the reward applies to but could not score; ``reason`` says why (one line, e.g. ``"timeout: no reply
    within 60s"``).

    Distinct from ``None`` ("not applicable"): the rubric never treats it as a value, it makes the row unscored when
    the term's weight is non-zero (see ``rewards.rubric``).
    """

    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise TypeError(f"RewardFailure needs a non-empty reason string, got {self.reason!r}")


Value = float | None | RewardFailure


FINISH_REASONS = ("stop", "length")


def _is_count(value: Any, minimum: int) -> bool:
    """An integer (numpy's too, not a bool) of at least ``minimum``."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= minimum


@dataclass(frozen=True)
class RewardContext:
    """What a batched reward may know about the batch besides the texts.

    ``step``/``total_steps`` are optimizer steps (for schedules such as Audio-Thinker's progress p = step / total);
    ``group_size`` is G, the completions per prompt, which lie next to each other in the batch.

    Per row, when the caller knows them (training, through ``grpo_audio.train.reward_bridge``; ``rewards score`` when
    its input rows carry them):
    ``lengths[j]`` is completion j's length |y_j| in tokens, its stop token included (TRL's
    ``completions/mean_length`` counts the same way); ``finish_reasons[j]`` is ``"stop"`` (a stop token ended it) or
    ``"length"`` (cut at the length limit). ``max_length`` is the run's limit on |y| in tokens
    (``rollout.max_completion_length``). Plain numbers and strings: the reward room needs no tokenizer. None means
    "not known here"; a reward that needs the value raises rather than guess (see ``rewards.overlong``).
    """

    step: int = 0
    total_steps: int = 1
    group_size: int = 1
    lengths: list[int] | None = None
    finish_reasons: list[str] | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.lengths is not None:
            bad = [n for n in self.lengths if not _is_count(n, 0)]
            if bad:
                raise ValueError(f"RewardContext.lengths must be token counts (integers >= 0), got {bad[0]!r}")
        if self.finish_reasons is not None:
            bad = [r for r in self.finish_reasons if r not in FINISH_REASONS]
            if bad:
                raise ValueError(f"RewardContext.finish_reasons must be one of {FINISH_REASONS}, got {bad[0]!r}")
        if self.lengths is not None and self.finish_reasons is not None:
            if len(self.lengths) != len(self.finish_reasons):
                raise ValueError(
                    f"RewardContext: {len(self.lengths)} lengths but {len(self.finish_reasons)} finish reasons"
                )
        if self.max_length is not None and not _is_count(self.max_length, 1):
            raise ValueError(f"RewardContext.max_length must be an integer >= 1, got {self.max_length!r}")

    def check_rows(self, count: int) -> None:
        """The per-row fields, where given, hold one entry per completion of the batch (``count``)."""
        for name in ("lengths", "finish_reasons"):
            values = getattr(self, name)
            if values is not None and len(values) != count:
                raise ValueError(f"RewardContext.{name} has {len(values)} entries for {count} completions")


def _row_label(samples: Sequence[Mapping[str, Any]], index: int) -> str:
    sample = samples[index] if index < len(samples) else None
    if isinstance(sample, Mapping) and "id" in sample:
        return f"row {index} (sample id {sample['id']!r})"
    return f"row {index}"


@dataclass(frozen=True)
class RegisteredReward:
    name: str
    fn: Callable[..., Any]
    batched: bool
    group_level: bool = False

    def option_names(self) -> list[str]:
        """Keyword options the function accepts beyond its positional inputs (for recipe validation)."""
        params = list(inspect.signature(self.fn).parameters.values())
        skip = 3 if self.batched else 2
        return [p.name for p in params[skip:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def accepts_any_option(self) -> bool:
        """True when the function takes ``**options``, so any option name is passed through."""
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())

    def validate(self, options: Mapping[str, Any]) -> None:
        """Check option names and, through the function's ``validate_options`` hook, their values."""
        if not self.accepts_any_option():
            allowed = self.option_names()
            unknown = sorted(set(options) - set(allowed))
            if unknown:
                close = [m for u in unknown for m in difflib.get_close_matches(u, allowed, n=1)]
                hint = f" (did you mean {close}?)" if close else ""
                raise ValueError(
                    f"reward {self.name!r} has no option(s) {unknown}{hint}; it accepts: {allowed or 'no options'}"
                )
        hook = getattr(self.fn, "validate_options", None)
        if hook is not None:
            try:
                hook(dict(options))
            except ValueError as exc:
                raise ValueError(f"reward {self.name!r}: {exc}") from exc

    def metrics(self, options: Mapping[str, Any]) -> dict[str, float]:
        """Counters from the function's ``metrics`` hook (empty when it has none)."""
        hook = getattr(self.fn, "metrics", None)
        return dict(hook(**options)) if hook is not None else {}

    def probe(self, options: Mapping[str, Any]) -> str | None:
        """The function's ``probe`` hook (a live check before training); None when it has none."""
        hook = getattr(self.fn, "probe", None)
        return str(hook(**options)) if hook is not None else None

    def score_batch(
        self, completions: Sequence[str], samples: Sequence[Mapping[str, Any]], context: RewardContext, **options
    ) -> list[Value]:
        """Score a batch; per-completion rewards are applied row by row. Enforces the reward contract: each value is a
        finite float, None (not applicable) or a ``RewardFailure`` (could not score), passed through as such."""
        if len(completions) != len(samples):
            raise ValueError(f"reward {self.name!r}: {len(completions)} completions but {len(samples)} samples")
        context.check_rows(len(completions))
        if self.group_level and context.group_size > 1 and len(completions) % context.group_size:
            raise ValueError(
                f"group-level reward {self.name!r} needs whole groups: {len(completions)} completions is not a "
                f"multiple of group_size {context.group_size}"
            )
        if self.group_level and context.group_size > 1:
            check_whole_groups(self.name, samples, context.group_size)
        if self.batched:
            try:
                values = list(self.fn(list(completions), list(samples), context, **options))
            except (RewardError, RewardOutputError):
                raise
            except Exception as exc:
                raise RewardError(self.name, f"reward {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        else:
            values = []
            for i, (completion, sample) in enumerate(zip(completions, samples, strict=True)):
                try:
                    values.append(self.fn(completion, sample, **options))
                except Exception as exc:
                    raise RewardError(
                        self.name,
                        f"reward {self.name!r} raised {type(exc).__name__} on {_row_label(samples, i)}: {exc}",
                    ) from exc
        if len(values) != len(completions):
            raise RewardOutputError(
                self.name, f"reward {self.name!r} returned {len(values)} values for {len(completions)} completions"
            )
        out: list[Value] = []
        for i, value in enumerate(values):
            if value is None or isinstance(value, RewardFailure):
                out.append(value)
                continue
            # bool is an int; numbers.Real also admits numpy scalars.
            if not isinstance(value, numbers.Real):
                raise TypeError(
                    f"reward {self.name!r} returned {value!r} on {_row_label(samples, i)}; expected a float, None "
                    "or a RewardFailure"
                )
            value = float(value)
            if not math.isfinite(value):
                raise RewardOutputError(
                    self.name,
                    f"reward {self.name!r} returned {value} on {_row_label(samples, i)}; values must be finite "
                    "(return None for 'not applicable')",
                )
            out.append(value)
        return out


_REGISTRY: dict[str, RegisteredReward] = {}


def check_whole_groups(name: str, samples: Sequence[Mapping[str, Any]], group_size: int) -> None:
    """Rows ``[i*G:(i+1)*G]`` must be one prompt's completions: they agree on the sample ``id`` when rows carry one."""
    for start in range(0, len(samples), group_size):
        ids = {sample.get("id") for sample in samples[start : start + group_size]}
        if len(ids) > 1:
            raise ValueError(
                f"group-level reward {name!r} needs whole groups: rows {start}..{start + group_size - 1} mix the "
                f"prompts {sorted(map(str, ids))}"
            )


def register_reward(
    name: str,
    *,
    batched: bool = False,
    group_level: bool = False,
    validate: Callable[[dict[str, Any]], None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` under ``name``; a second registration of the same name is an error.

    ``validate`` (optional) checks option values when a rubric is built, so a bad recipe fails before step 0.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            existing = _REGISTRY[name].fn
            raise DuplicateRewardError(
                f"reward name {name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
            )
        fn.batched = batched or group_level  # type: ignore[attr-defined]
        fn.group_level = group_level  # type: ignore[attr-defined]
        if validate is not None:
            fn.validate_options = validate  # type: ignore[attr-defined]
        _REGISTRY[name] = RegisteredReward(name, fn, batched or group_level, group_level)
        return fn

    return decorate


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def import_function(path: str, what: str, error: type[KeyError] = KeyError) -> Callable[..., Any]:
    """The function a ``package.module:function`` path names; ``error`` (naming the ``what``, e.g. "reward") when the
    module does not import or has no callable of that name."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{what} {path!r}: cannot import module {module_name!r} ({exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise error(f"{what} {path!r}: module {module_name!r} has no function {attr!r}")
    return fn


def get_reward(name: str) -> RegisteredReward:
    """Resolve a registered name or a ``package.module:function`` import path."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        fn = import_function(name, "reward", UnknownRewardError)
        group_level = bool(getattr(fn, "group_level", False))
        return RegisteredReward(name, fn, bool(getattr(fn, "batched", False)) or group_level, group_level)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownRewardError(
        f"unknown reward {name!r}{hint} Registered: {', '.join(registered_names())}; "
        "or give a 'package.module:function' path"
    )
