"""thinking_rule in [0, 1], steps of 0.2: RULE-BASED reasoning-quality proxy (no LLM involved).

Five checks on the reasoning (the ``<think>`` content split on whitespace into words), 0.2 each:

1. long enough: ``words >= min_words`` (default 15);
2. not too long: ``words <= max_words`` (default 300);
3. no looping: distinct word-trigram ratio ``|set(trigrams)| / |trigrams| >= min_distinct`` (default 0.6);
4. no repeated sentence: no sentence of three or more words occurs twice (case and punctuation ignored);
5. no stutter: no word repeated more than ``max_run`` times in a row (default 3).

    r = 0.2 * (number of checks passed)

None when there is no reasoning (no or blank ``<think>`` section: a no-think answer); 0.0 when the ``<think>`` was
never closed (truncated, typically a repetition loop that hit the length limit).

Deviation from the paper: the paper's R_thinking is an LLM judge grading logical soundness, factual correctness,
error identification, language coherence and conciseness (that is the ``thinking`` reward). This rule-based version
only sees length and repetition, the failure modes that need no understanding to detect; it keeps the 0.2 grid so
the two are interchangeable in a recipe.

Example: a 40-word reasoning without repetition scores 1.0; the same sentence pasted five times scores 0.6 (the
trigram and sentence checks fail).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from rewards import _checks
from rewards.answer_span import no_reasoning_verdict, parse_completion
from rewards.registry import register_reward

_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+|\n+")
_PUNCT = re.compile(r"[^\w\s]")
_PUNCTUATION = string.punctuation + "…“”‘’«»。，！？、；："


def distinct_ngram_ratio(words: list[str], n: int = 3) -> float:
    """|distinct n-grams| / |n-grams|; 1.0 for texts shorter than n words (too short to loop)."""
    total = len(words) - n + 1
    if total <= 0:
        return 1.0
    # the shifted slices have different lengths on purpose: zip stops at the shortest
    return len(set(zip(*(words[i:] for i in range(n)), strict=False))) / total


def has_repeated_sentence(text: str) -> bool:
    seen: set[str] = set()
    for sentence in _SENTENCE.split(text):
        key = " ".join(_PUNCT.sub(" ", sentence.casefold()).split())
        if len(key.split()) < 3:
            continue
        if key in seen:
            return True
        seen.add(key)
    return False


def longest_run(words: list[str]) -> int:
    best = run = 0
    previous = None
    for word in words:
        key = word.casefold().strip(_PUNCTUATION)
        run = run + 1 if key == previous else 1
        previous = key
        best = max(best, run)
    return best


def validate(options: Mapping[str, Any]) -> None:
    _checks.number(options, "min_words", minimum=0, integer=True)
    _checks.number(options, "max_words", minimum=1, integer=True)
    _checks.number(options, "min_distinct", minimum=0)
    _checks.number(options, "max_run", minimum=1, integer=True)
    _checks.boolean(options, "think_prefilled")
    if options.get("min_words", 15) > options.get("max_words", 300):
        raise ValueError("min_words must not exceed max_words")


@register_reward("thinking_rule", validate=validate)
def score(
    completion: str,
    sample: Mapping[str, Any],
    think_prefilled: bool = False,
    min_words: int = 15,
    max_words: int = 300,
    min_distinct: float = 0.6,
    max_run: int = 3,
) -> float | None:
    parsed = parse_completion(completion, think_prefilled)
    if not parsed.thinks:
        return no_reasoning_verdict(parsed)
    think = parsed.think or ""
    words = think.casefold().split()
    passed = (
        int(len(words) >= min_words)
        + int(len(words) <= max_words)
        + int(distinct_ngram_ratio(words) >= min_distinct)
        + int(not has_repeated_sentence(think))
        + int(longest_run(words) <= max_run)
    )
    return round(0.2 * passed, 1)
