"""consistency_rule in {0, 1}: RULE-BASED stand-in for the paper's judge consistency (no LLM involved).

The reasoning is taken to *conclude* with the answer choice it mentions last. With choices:

    r = 1[last_choice(think) == choice(answer)]

where ``choice(answer)`` resolves the extracted answer to a choice (text, letter, ``option N``; see
``rewards.matching.resolve_choice``) and ``last_choice(think)`` is the choice whose text (word-bounded, case-folded)
or explicit letter reference (``(B)``, ``option B``, ``choice B``) ends last in the reasoning; when two choices end
at the same place (``dog`` inside ``barking dog``) the longer one wins. Without choices (open questions):
r = 1[the normalised answer occurs, word-bounded, in the reasoning].

Values: 1.0 consistent; 0.0 inconsistent, an answer that names no choice, an empty answer, reasoning that names no
choice, or a ``<think>`` that was never closed (truncated: the reasoning reached no conclusion); None when the
completion has no reasoning (no or blank ``<think>`` section: a no-think answer, for which consistency does not
apply).

Deviation from the paper: the paper asks an LLM judge whether reasoning and answer are logically coherent. This
proxy cannot read negation ("it is not a dog, so: cat" ends on "cat" and is consistent with "cat"; "cat, not dog"
ends on "dog" and is judged inconsistent), so treat it as a cheap, deterministic approximation, e.g. for tests or for
runs without a judge server. The judge version is the ``consistency`` reward.

Example: ``score("<think>The pitch rises, so it is a question. Answer: question</think><answer>question</answer>",
{"choices": ["statement", "question"]})`` is 1.0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from rewards.answer_span import no_reasoning_verdict, parse_completion
from rewards.matching import letter_index, normalise, resolve_choice
from rewards.registry import register_reward

# Explicit letter references inside prose; bare capital letters are not read as options ("A dog barks").
_LETTER_REF = re.compile(r"\(([A-Z])\)|\b(?i:option|choice)\s+\(?([A-Z])\b")


@lru_cache(maxsize=4096)
def _choice_pattern(choice: str) -> re.Pattern[str] | None:
    words = choice.casefold().split()
    if not words:
        return None
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)")


@lru_cache(maxsize=4096)
def _choices_pattern(choices: tuple[str, ...]) -> tuple[re.Pattern[str] | None, dict[str, int]]:
    """One alternation over all choices, longest first, and the map from normalised match text to choice index.

    Longest first makes "barking dog" win over "dog" where both start; a single pass over the reasoning replaces
    one scan per choice.
    """
    index: dict[str, int] = {}
    for i, choice in enumerate(choices):
        index.setdefault(" ".join(choice.casefold().split()), i)
    index.pop("", None)
    if not index:
        return None, index
    alternatives = sorted(index, key=len, reverse=True)
    body = "|".join(r"\s+".join(re.escape(w) for w in text.split()) for text in alternatives)
    return re.compile(r"(?<!\w)(?:" + body + r")(?!\w)"), index


def last_mentioned_choice(text: str, choices: Sequence[str]) -> int | None:
    """Index of the choice mentioned last in ``text`` (see the module docstring), or None if none is mentioned."""
    pattern, index = _choices_pattern(tuple(str(c) for c in choices))
    best: tuple[int, int] | None = None  # (end position, choice index)
    if pattern is not None:
        last = None
        for last in pattern.finditer(text.casefold()):  # noqa: B007  the loop keeps the last match
            pass
        if last is not None:
            best = (last.end(), index[" ".join(last.group(0).split())])
    for m in _LETTER_REF.finditer(text):
        letter = letter_index(m.group(1) or m.group(2), len(choices))
        if letter is not None and (best is None or m.end() > best[0]):
            best = (m.end(), letter)
    return None if best is None else best[1]


def _mentions(text: str, answer: str) -> bool:
    pattern = _choice_pattern(normalise(answer))
    return pattern is not None and pattern.search(text.casefold()) is not None


@register_reward("consistency_rule")
def score(completion: str, sample: Mapping[str, Any], think_prefilled: bool = False) -> float | None:
    parsed = parse_completion(completion, think_prefilled)
    if not parsed.thinks:
        return no_reasoning_verdict(parsed)
    if not parsed.answer:
        return 0.0
    choices = sample.get("choices")
    if not choices:
        return float(_mentions(parsed.think or "", parsed.answer))
    choices = [str(c) for c in choices]
    answer_index = resolve_choice(parsed.answer, choices)
    if answer_index is None:
        return 0.0
    return float(last_mentioned_choice(parsed.think or "", choices) == answer_index)
