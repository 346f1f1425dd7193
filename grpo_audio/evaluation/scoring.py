"""The benchmarks' official scoring rules, applied to one model output (matchers reused from ``rewards.matching``).

* ``mmau`` (MMAU and MMAR; also the default for JSONL/HF/AVQA data): the answer span is extracted first
  (``rewards.answer_span.extract_answer``: the last ``<answer>`` pair, else the text after ``</think>``, else the
  whole output), then MMAU's ``string_match`` decides: tokens = set of ``\\b\\w+\\b`` in the lower-cased text;
  correct iff the prediction's tokens are non-empty, contain every token of the gold answer and none of the tokens
  that only the other choices have. Scoring the span rather than the raw output is what benchmarks.md asks for:
  reasoning left in the prediction usually names the other choices and would be marked wrong.
* ``mmsu``: MMSU's rule on the raw output: newlines removed; the first character if it is an option letter, else the
  second-to-last character if it is one; correct iff that option's text equals the gold text.

Every output gets a status: ``correct``; ``wrong`` (it names another choice); ``unparsed`` (it names no single
choice: MMAU rule accepting no choice or several, or no MMSU letter); ``missing`` (no prediction at all: an empty
answer, or a clip the audio policy skipped). Where the official scripts leave unparsed or missing items out of the
total, this harness counts them as wrong and reports how many there were.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rewards.answer_span import extract_answer
from rewards.matching import mmau_match, mmsu_letter, mmsu_match

RULES = ("mmau", "mmsu")
FORMAT_RULES = {"mmau": "mmau", "mmar": "mmau", "mmsu": "mmsu", "jsonl": "mmau", "hf": "mmau", "avqa": "mmau",
                "synthetic": "mmau"}  # fmt: skip
STATUSES = ("correct", "wrong", "unparsed", "missing")
_WORD = re.compile(r"\w")


@dataclass(frozen=True)
class Scored:
    """``prediction``: what the rule looked at (the answer span for mmau, the raw output for mmsu; None when there
    was no output); ``choice``: the index of the choice it names, or None."""

    prediction: str | None
    choice: int | None
    correct: bool
    status: str


MISSING = Scored(None, None, False, "missing")


def score_mmau(completion: str | None, answer: str, choices: Sequence[str]) -> Scored:
    """MMAU/MMAR: official token rule on the extracted answer span.

    Example: ``score_mmau("<think>deep voice</think><answer>(B) Man</answer>", "Man", ["Woman", "Man"])`` is correct
    with choice 1; ``score_mmau("A", "Man", ["Woman", "Man"])`` is unparsed (a bare letter names no choice's words).
    """
    if completion is None:
        return MISSING
    span = extract_answer(completion)
    if not _WORD.search(span):  # no token at all: nothing was answered (the rule would mark it wrong too)
        return Scored(span, None, False, "missing")
    correct = mmau_match(span, answer, choices)
    hits = [i for i, c in enumerate(choices) if mmau_match(span, c, choices)]
    if correct:
        gold = [i for i in hits if choices[i] == answer]
        return Scored(span, gold[0] if gold else (hits[0] if len(hits) == 1 else None), True, "correct")
    if len(hits) == 1:
        return Scored(span, hits[0], False, "wrong")
    return Scored(span, None, False, "unparsed")


def score_mmsu(completion: str | None, answer: str, choices: Sequence[str]) -> Scored:
    """MMSU: official first / second-to-last character letter rule on the raw output.

    Example: ``score_mmsu("B", "Man", ["Woman", "Man"])`` and ``score_mmsu("The answer is (B)", ...)`` are correct;
    ``score_mmsu("Man", ...)`` is unparsed (no letter where the rule looks).
    """
    if completion is None or not completion.replace("\n", "").strip():
        return Scored(completion, None, False, "missing")
    index = mmsu_letter(completion, len(choices))
    if index is None:
        return Scored(completion, None, False, "unparsed")
    correct = mmsu_match(completion, answer, choices)
    return Scored(completion, index, correct, "correct" if correct else "wrong")


def score(rule: str, completion: str | None, answer: str, choices: Sequence[str]) -> Scored:
    if rule == "mmau":
        return score_mmau(completion, answer, choices)
    if rule == "mmsu":
        return score_mmsu(completion, answer, choices)
    raise ValueError(f"unknown scoring rule {rule!r}; choose one of {RULES}")
