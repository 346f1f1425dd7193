"""The paper's LLM-judge rewards: ``consistency`` in {0, 1} and ``thinking`` in [0, 1] (steps of 0.2).

* R_consistency: the judge decides whether the reasoning and the final answer are logically coherent
  (``prompts/judge/consistency_v1.txt``; reply ``<score>0|1</score>``).
* R_thinking: the judge checks five criteria, logical soundness, factual correctness, error identification,
  language coherence and conciseness, and reports how many are met; r = met / 5
  (``prompts/judge/thinking_v1.txt``; reply ``<score>0..5</score>``). Independent of answer correctness.

Both are batched rewards: one call scores the whole generation batch, sending the judge requests concurrently.

Per row:

* no reasoning (no or blank ``<think>``): None, not applicable, no request (Audio-Thinker's combiner then uses
  R_c = 1 and the batch's mean R_t);
* a ``<think>`` never closed (truncated): 0.0, no request (the reasoning reached no conclusion);
* consistency only: reasoning but an empty answer: 0.0, no request (nothing to be consistent with);
* otherwise the judge's parsed verdict; when the judge cannot give one (timeouts, HTTP errors, connection errors
  after all retries, or a reply the strict parser rejects) ``on_failure`` decides: ``unscored`` (default) returns
  ``RewardFailure(reason)`` for the row and counts it in the stats (the rubric then leaves the row unscored: no
  R_total, no advantage, no loss), ``error`` raises ``JudgeError`` naming the row. Never a number, never None.

Before training, ``probe`` (the reward's probe hook, run by ``Rubric.probe()``) sends one made-up question with
reasoning and answer; an unreachable judge, or a reply the parser rejects, stops the run with a one-line error
naming the URL and the reply or the connection error. The probe's verdict is not cached and its requests are not
counted in the stats.

Options (all rewards options in the recipe): ``url`` (OpenAI-compatible base or chat-completions URL, default
``http://127.0.0.1:8000/v1``), ``model`` (required: the served model name), ``api_key_env`` (name of the env var
holding a bearer token, default none), ``timeout_s`` (per attempt, 60), ``max_concurrency`` (16), ``retries`` (3),
``backoff_s`` (0.5, doubled per retry), ``temperature`` (0), ``max_tokens`` (1024), ``extra_body`` (merged into
the request, e.g. ``{chat_template_kwargs: {enable_thinking: false}}`` for Qwen3), ``prompt_version`` (``v1``),
``prompt_path`` (a custom template file), ``cache_path`` (JSONL file persisting verdicts; without it verdicts are
cached in memory for the process), ``on_failure`` (``unscored`` | ``error``), ``think_prefilled``,
``max_reasoning_chars`` (12000; longer reasoning keeps head and tail), ``structured`` (below).

Structured verdicts (``structured``): the judge's reply is constrained with vLLM's structured output (the request
field ``structured_outputs``), so that even a weak judge can only answer with a verdict the strict parser accepts:

* ``auto`` (default): the choice list below; a server that rejects the field (not vLLM) is asked again without it,
  and the strict parser decides;
* ``choice``: the reply is exactly one of ``<score>0</score>``, ``<score>1</score>`` (consistency) or
  ``<score>0</score>`` ... ``<score>5</score>`` (thinking); a server that rejects the field fails the request;
* ``regex``: up to 400 characters of justification without ``<``, then the ``<score>`` tag (lets the judge say why
  first; same rejection rule as ``choice``);
* ``off``: no constraint, the strict parser alone (servers without structured output that reject unknown fields).

A recipe's ``extra_body`` that sets ``structured_outputs`` itself wins over these.

Not stated in the paper: the judge model and its prompts. Audio-Thinker uses Qwen3-8B-Base for both judges;
the prompts here are ours (versioned files). Audio-Thinker grades thinking in steps of 0.1; Covo-Audio (and
this module) in steps of 0.2.

Example recipe term::

    - name: consistency
      options: {url: "http://judge:8000/v1", model: Qwen/Qwen3-8B, cache_path: runs/judge_cache.jsonl}

Counters: ``judge_stats()`` or ``Rubric.metrics()`` (``consistency/requests``, ``consistency/failures``, ...).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rewards import _checks
from rewards.answer_span import parse_completion
from rewards.judge.cache import JudgeCache
from rewards.judge.client import DEFAULT_URL, STRUCTURED_MODES, JudgeClient, JudgeConfig, JudgeRequestError
from rewards.judge.prompts import load_template, render
from rewards.judge.stats import JudgeStats
from rewards.judge.verdicts import MalformedVerdictError, parse_consistency, parse_thinking
from rewards.registry import RewardContext, RewardFailure, register_reward

PARSERS: dict[str, Callable[[str], float]] = {"consistency": parse_consistency, "thinking": parse_thinking}
ON_FAILURE = ("unscored", "error")
# The scores each verdict may carry (the contract of rewards.judge.verdicts), for the structured-output constraint.
SCORES: dict[str, str] = {"consistency": "01", "thinking": "012345"}
JUSTIFICATION_CHARS = 400  # structured: regex

# The probe's made-up row: short, unambiguous, and coherent, so any working judge gives a parseable verdict.
PROBE_SAMPLE = {"question": "Which animal is barking in the clip?", "choices": ["a cat", "a dog"]}
PROBE_REASONING = "The clip has short, loud barks, the sound a dog makes, so the answer is the dog."
PROBE_ANSWER = "a dog"


class JudgeError(RuntimeError):
    """The judge gave no usable verdict for a row and ``on_failure`` is ``error``."""


def constraint(kind: str, structured: str) -> dict[str, Any] | None:
    """vLLM's ``structured_outputs`` value that makes every reply a verdict ``kind``'s parser accepts (None: off)."""
    scores = SCORES[kind]
    if structured in ("auto", "choice"):
        return {"choice": [f"<score>{s}</score>" for s in scores]}
    if structured == "regex":
        return {"regex": f"[^<]{{0,{JUSTIFICATION_CHARS}}}<score>[{scores}]</score>"}
    return None


class Judge:
    """One judge configuration: client, cache, template and counters (shared by every term that uses it)."""

    def __init__(
        self, kind: str, config: JudgeConfig, cache: JudgeCache, prompt_version: str, prompt_path: str | None
    ) -> None:
        self.kind = kind
        self.config = config
        self.cache = cache
        self.stats = JudgeStats()
        self.template, self.version = load_template(kind, prompt_version, prompt_path)
        self.constraint = constraint(kind, config.structured)
        self.client = JudgeClient(config, self.stats, self.constraint)
        self.parse = PARSERS[kind]

    def score(
        self,
        completions: Sequence[str],
        samples: Sequence[Mapping[str, Any]],
        *,
        think_prefilled: bool,
        on_failure: str,
        max_reasoning_chars: int,
    ) -> list[float | None | RewardFailure]:
        values: list[float | None | RewardFailure] = [None] * len(completions)
        # cache key -> (prompt, rows): identical prompts in a batch share one request
        pending: dict[str, tuple[str, list[int]]] = {}
        for i, (completion, sample) in enumerate(zip(completions, samples, strict=True)):
            parsed = parse_completion(completion, think_prefilled)
            if parsed.think_open:
                self.stats.truncated += 1
                values[i] = 0.0
                continue
            if not parsed.thinks:
                self.stats.not_applicable += 1
                continue
            if self.kind == "consistency" and not parsed.answer:
                self.stats.empty_answer += 1
                values[i] = 0.0
                continue
            self.stats.rows += 1
            prompt = self.prompt(sample, parsed.think or "", parsed.answer, max_reasoning_chars)
            key = JudgeCache.key(self.config.model, self.version, prompt)
            cached = self.cache.get(key)
            if cached is not None:
                self.stats.cache_hits += 1
                values[i] = cached
            elif key in pending:
                self.stats.deduplicated += 1
                pending[key][1].append(i)
            else:
                pending[key] = (prompt, [i])

        replies = self.client.chat([prompt for prompt, _ in pending.values()])
        failed: list[tuple[int, str]] = []
        for (key, (_, rows)), reply in zip(pending.items(), replies, strict=True):
            if isinstance(reply, JudgeRequestError):
                reason = f"{reply.kind}: {reply}"
            else:
                try:
                    value = self.parse(reply)
                except MalformedVerdictError as exc:
                    self.stats.malformed += 1
                    reason = f"malformed verdict: {exc}"
                else:
                    self.cache.put(key, value, model=self.config.model, prompt_version=self.version, reply=reply)
                    for row in rows:
                        values[row] = value
                    continue
            self.stats.failures += len(rows)
            failed.extend((row, reason) for row in rows)
        if failed and on_failure == "error":
            row, reason = min(failed)
            sample = samples[row]
            ident = f" (sample id {sample['id']!r})" if isinstance(sample, Mapping) and "id" in sample else ""
            raise JudgeError(
                f"{self.kind} judge {self.config.model!r} at {self.config.url} gave no verdict for row {row}{ident}: "
                f"{reason}" + (f" ({len(failed) - 1} more rows failed)" if len(failed) > 1 else "")
            )
        where = f" ({self.kind} judge {self.config.model!r} at {self.config.url})"
        for row, reason in failed:
            values[row] = RewardFailure(reason + where)
        return values

    def prompt(self, sample: Mapping[str, Any], reasoning: str, answer: str, max_reasoning_chars: int) -> str:
        choices = sample.get("choices")
        return render(
            self.template,
            question=str(sample.get("question") or ""),
            choices=[str(c) for c in choices] if choices else None,
            reasoning=reasoning,
            answer=answer,
            max_reasoning_chars=max_reasoning_chars,
        )

    def probe(self) -> str:
        """Ask the judge about one made-up row; raise ``JudgeError`` unless a parseable verdict comes back.

        A separate client with its own counters sends it (same URL and model), and the verdict is not cached: the
        probe leaves the stats and the cache as they were. It is one short try: no retries, at most
        ``PROBE_TIMEOUT_S`` (or the judge's own ``timeout_s`` when shorter), so a judge that is down is said to be
        down within that time instead of after (retries + 1) x timeout_s (4 minutes with the defaults).
        """
        where = f"{self.kind} judge {self.config.model!r} at {self.config.url}"
        prompt = self.prompt(PROBE_SAMPLE, PROBE_REASONING, PROBE_ANSWER, max_reasoning_chars=12000)
        one_try = dataclasses.replace(self.config, retries=0, timeout_s=min(self.config.timeout_s, PROBE_TIMEOUT_S))
        (reply,) = JudgeClient(one_try, JudgeStats(), self.constraint).chat([prompt])
        if isinstance(reply, JudgeRequestError):
            raise JudgeError(
                f"{where} did not answer the probe request (one try, {one_try.timeout_s:g} s): {reply.kind}: {reply}"
            )
        try:
            value = self.parse(reply)
        except MalformedVerdictError as exc:
            raise JudgeError(
                f"{where} answered the probe with a reply that does not parse ({exc}): {reply[:300]!r}"
            ) from None
        return f"{where} answered the probe: {value:g}"


PROBE_TIMEOUT_S = 30.0  # the probe's single try: a judge that answers at all answers one short request in this

_JUDGES: dict[tuple[Any, ...], Judge] = {}
_CACHES: dict[str, JudgeCache] = {}
_LOCK = threading.Lock()

_CONFIG_KEYS = ("url", "model", "api_key_env", "timeout_s", "max_concurrency", "retries", "backoff_s",
                "temperature", "max_tokens", "structured")  # fmt: skip


def get_judge(kind: str, options: Mapping[str, Any]) -> Judge:
    """The (memoised) judge for one option set; terms with the same options share client, cache and counters."""
    config = JudgeConfig.make(
        extra_body=options.get("extra_body"), **{k: options[k] for k in _CONFIG_KEYS if k in options}
    )
    cache_path = options.get("cache_path")
    prompt_version = str(options.get("prompt_version", "v1"))
    prompt_path = options.get("prompt_path")
    ident = (kind, config, str(cache_path), prompt_version, str(prompt_path))
    with _LOCK:
        judge = _JUDGES.get(ident)
        if judge is None:
            if cache_path is None:
                cache = JudgeCache()
            else:
                resolved = str(Path(cache_path).expanduser().resolve())
                cache = _CACHES.setdefault(resolved, JudgeCache(resolved))
            judge = _JUDGES[ident] = Judge(kind, config, cache, prompt_version, prompt_path)
    return judge


def judge_stats() -> dict[str, JudgeStats]:
    """Counters of every judge used in this process, keyed ``"{kind}@{model}#{n}"``."""
    with _LOCK:
        return {f"{j.kind}@{j.config.model}#{n}": j.stats for n, j in enumerate(_JUDGES.values())}


def reset_judges() -> None:
    """Forget all judges and caches (tests, or a notebook re-pointing the judge)."""
    with _LOCK:
        _JUDGES.clear()
        _CACHES.clear()


def _validate(kind: str) -> Callable[[dict[str, Any]], None]:
    def validate(options: dict[str, Any]) -> None:
        model = options.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"the {kind} judge needs option 'model' (the served judge model name)")
        if options.get("on_failure") == "none":
            raise ValueError(
                "option 'on_failure': 'none' is gone (a failed verdict is not 'not applicable'); use 'unscored' (the "
                "default: the row gets no R_total and no advantage) or 'error'"
            )
        _checks.choice(options, "on_failure", ON_FAILURE)
        _checks.choice(options, "structured", STRUCTURED_MODES)
        _checks.number(options, "timeout_s", minimum=0.001)
        _checks.number(options, "max_concurrency", minimum=1, integer=True)
        _checks.number(options, "retries", minimum=0, integer=True)
        _checks.number(options, "backoff_s", minimum=0)
        _checks.number(options, "temperature", minimum=0)
        _checks.number(options, "max_tokens", minimum=1, integer=True)
        _checks.number(options, "max_reasoning_chars", minimum=100, integer=True)
        _checks.boolean(options, "think_prefilled")
        if options.get("extra_body") is not None and not isinstance(options["extra_body"], Mapping):
            raise ValueError("option 'extra_body' must be a mapping")
        JudgeConfig(url=str(options.get("url", DEFAULT_URL))).endpoint()  # raises on a malformed URL
        try:
            load_template(kind, str(options.get("prompt_version", "v1")), options.get("prompt_path"))
        except OSError as exc:
            raise ValueError(f"cannot read judge prompt_path {options.get('prompt_path')!r}: {exc}") from exc

    return validate


def _score(
    kind: str, completions: Sequence[str], samples: Sequence[Mapping[str, Any]], options: dict[str, Any]
) -> list[float | None | RewardFailure]:
    _validate(kind)(options)  # also when called directly, without a Rubric
    judge = get_judge(kind, options)
    return judge.score(
        completions,
        samples,
        think_prefilled=bool(options.get("think_prefilled", False)),
        on_failure=str(options.get("on_failure", "unscored")),
        max_reasoning_chars=int(options.get("max_reasoning_chars", 12000)),
    )


def _metrics(kind: str) -> Callable[..., dict[str, float]]:
    def metrics(**options: Any) -> dict[str, float]:
        return get_judge(kind, options).stats.as_dict()

    return metrics


def _probe(kind: str) -> Callable[..., str]:
    def probe(**options: Any) -> str:
        _validate(kind)(options)
        return get_judge(kind, options).probe()

    return probe


def _judge_reward(kind: str, doc: str) -> Callable[..., list[float | None | RewardFailure]]:
    """The batched reward ``kind``, registered under that name with its validate, metrics and probe hooks.

    Its options are spelled out as keyword parameters (not ``**options``) so that recipes are validated against real
    names; both judges share this one signature.
    """

    def reward(
        completions: list[str],
        samples: list[Mapping[str, Any]],
        context: RewardContext,
        *,
        url: str = DEFAULT_URL,
        model: str | None = None,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        max_concurrency: int = 16,
        retries: int = 3,
        backoff_s: float = 0.5,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        extra_body: Mapping[str, Any] | None = None,
        prompt_version: str = "v1",
        prompt_path: str | None = None,
        cache_path: str | None = None,
        on_failure: str = "unscored",
        think_prefilled: bool = False,
        max_reasoning_chars: int = 12000,
        structured: str = "auto",
    ) -> list[float | None | RewardFailure]:
        options = {k: v for k, v in locals().items() if k not in ("completions", "samples", "context", "kind")}
        return _score(kind, completions, samples, options)

    reward.__name__ = reward.__qualname__ = kind
    reward.__doc__ = doc
    reward.metrics = _metrics(kind)  # type: ignore[attr-defined]
    reward.probe = _probe(kind)  # type: ignore[attr-defined]
    return register_reward(kind, batched=True, validate=_validate(kind))(reward)


consistency = _judge_reward("consistency", "R_consistency in {0, 1} by LLM judge; see the module docstring.")
thinking = _judge_reward("thinking", "R_thinking in [0, 1] (steps of 0.2) by LLM judge; see the module docstring.")
