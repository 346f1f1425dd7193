"""Answer-matching rules of the audio QA benchmarks (no torch).

* ``mmau``: MMAU's official ``string_match``. tokens(s) = set of ``\\b\\w+\\b`` in ``s.lower()``; P = tokens(pred),
  A = tokens(answer), W = union over choices c with tokens(c) != A of (tokens(c) - A). Correct iff P is non-empty,
  A is a subset of P and P has no token of W. MMAR uses the same rule.
* ``exact``: case-folded, whitespace-collapsed, surrounding punctuation stripped, equality.
* ``option``: the prediction names one choice, by letter (``B``, ``(B)``, ``B.``, ``B) text``), by ``option 2`` /
  ``choice B`` / ``answer is B``, by its exact text, or by the MMAU rule matching exactly one choice
  (``resolve_choice``); correct iff that choice is the gold one.
* ``mmsu``: MMSU's official rule: newlines removed; the first character if it is an option letter, else the
  second-to-last character if it is one (so ``(B)`` and ``B.`` work); the chosen option's text must equal the gold
  text. Where the official script drops an unparseable item, this returns False (counted as wrong).
* ``numeric``: the last number in the prediction (digits, decimals, thousands separators, or English number words
  zero to ninety-nine) equals the first number of the gold answer within an absolute or relative tolerance.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_WORD = re.compile(r"\b\w+\b")


def _tokens(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def mmau_match(prediction: str, answer: str, choices: Sequence[str] | None) -> bool:
    pred, gold = _tokens(prediction), _tokens(answer)
    if not pred:
        return False
    wrong: set[str] = set()
    for choice in choices or ():
        tokens = _tokens(choice)
        if tokens != gold:
            wrong |= tokens - gold
    return gold <= pred and not (pred & wrong)


def normalise(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .,:;!?\"'()[]")


def exact_match(prediction: str, answer: str) -> bool:
    return normalise(prediction) == normalise(answer)


# --- option letters and indices --------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# The whole span is one letter, any case: "b", "(B)", "[C]", "D.", "A:".
_ALONE = re.compile(r"^[(\[]?([A-Za-z])[)\].:]?$")
# A leading upper-case letter with a delimiter, followed by text: "B. Man", "(B) Man", "B) Man", "B: Man".
# Without a delimiter "A man" is prose, not option A.
_LEADING = re.compile(r"^(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])[.):])\s*(.*)$", re.DOTALL)
# "option 2", "Option (B)", "choice C", "the answer is B", "answer: (C)". Letters upper-case only, unless they end the
# span ("the answer is b"), because "the answer is a man" must not read as option A.
_NAMED = re.compile(
    r"\b(?i:option|choice|answer)\s*(?i:is\s*)?[:\-]?\s*(?:\(([A-Z]|\d{1,2})\)|([A-Z]|\d{1,2})\b|([a-z])\W*$)"
)


def letter_index(letter: str, n_choices: int) -> int | None:
    """``"B"`` -> 1 when there are at least two choices; None when out of range."""
    index = _LETTERS.find(letter.upper())
    return index if 0 <= index < n_choices else None


def _named_index(match: re.Match[str], n_choices: int) -> int | None:
    token = next(g for g in match.groups() if g)
    if token.isdigit():
        index = int(token) - 1  # "option 2" is 1-based, as people write it
        return index if 0 <= index < n_choices else None
    return letter_index(token, n_choices)


def _text_index(text: str, choices: Sequence[str]) -> int | None:
    """The choice whose normalised text equals ``text``, else the only choice that the MMAU rule accepts."""
    norm = normalise(text)
    if not norm:
        return None
    for i, choice in enumerate(choices):
        if normalise(choice) == norm:
            return i
    hits = [i for i, choice in enumerate(choices) if mmau_match(text, choice, choices)]
    return hits[0] if len(hits) == 1 else None


def resolve_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """Index of the choice a prediction names, or None if it names none or is ambiguous.

    Order: exact choice text (so choices that look like letters or numbers win), a lone letter, a leading letter with
    a delimiter (if text follows and names a *different* choice, the prediction is contradictory: None), a named
    option/choice/answer reference, and finally the MMAU token rule accepting exactly one choice.
    Example: ``resolve_choice("(B) Man", ["Woman", "Man"])`` is 1; ``resolve_choice("A man", ["Woman", "Man"])`` is 1.
    """
    text = " ".join(prediction.split())
    if not text or not choices:
        return None
    n = len(choices)
    for i, choice in enumerate(choices):
        if normalise(choice) == normalise(text):
            return i
    alone = _ALONE.match(text)
    if alone:
        return letter_index(alone.group(1), n)
    leading = _LEADING.match(text)
    if leading:
        index = letter_index(next(g for g in leading.groups()[:3] if g), n)
        rest = leading.group(4).strip()
        if index is not None and rest:
            by_text = _text_index(rest, choices)
            if by_text is not None and by_text != index:
                return None
        if index is not None:
            return index
    named = _NAMED.search(text)
    if named:
        index = _named_index(named, n)
        if index is not None:
            return index
    return _text_index(text, choices)


def option_match(prediction: str, answer: str, choices: Sequence[str]) -> bool:
    index = resolve_choice(prediction, choices)
    return index is not None and normalise(choices[index]) == normalise(answer)


def mmsu_letter(prediction: str, n_choices: int) -> int | None:
    """MMSU's official letter pick: newlines removed, first character, else second-to-last character."""
    text = prediction.replace("\n", "")
    valid = _LETTERS[:n_choices]
    if text and text[0] in valid:
        return valid.index(text[0])
    if len(text) >= 2 and text[-2] in valid:
        return valid.index(text[-2])
    return None


def mmsu_match(prediction: str, answer: str, choices: Sequence[str]) -> bool:
    index = mmsu_letter(prediction, len(choices))
    return index is not None and choices[index].strip() == answer.strip()


# --- numbers ---------------------------------------------------------------------------------------------------

_UNITS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
]  # fmt: skip
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORD_VALUES = {w: i for i, w in enumerate(_UNITS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
_NUMBER = re.compile(
    r"(?P<num>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+)"
    r"|\b(?P<tens>" + "|".join(_TENS) + r")(?:[- ](?P<unit>" + "|".join(_UNITS[1:10]) + r"))?\b"
    r"|\b(?P<word>" + "|".join(_UNITS) + r")\b",
    re.IGNORECASE,
)


def find_numbers(text: str) -> list[float]:
    """All numbers in ``text`` in order: ``"3"``, ``"-2.5"``, ``"1,000"``, ``"1e3"``, ``"three"``, ``"twenty-one"``."""
    values: list[float] = []
    for m in _NUMBER.finditer(text):
        if m.group("num"):
            values.append(float(m.group("num").replace(",", "")))
        elif m.group("tens"):
            unit = m.group("unit")
            values.append(float(_WORD_VALUES[m.group("tens").lower()] + (_WORD_VALUES[unit.lower()] if unit else 0)))
        else:
            values.append(float(_WORD_VALUES[m.group("word").lower()]))
    return values


def numeric_match(prediction: str, gold: float, tolerance: float = 0.0, relative: bool = False) -> bool:
    """The last number of ``prediction`` equals ``gold`` within ``tolerance`` (times ``|gold|`` if ``relative``)."""
    numbers = find_numbers(prediction)
    if not numbers:
        return False
    value = numbers[-1]
    bound = tolerance * abs(gold) if relative else tolerance
    # The 1e-9 keeps "0.1 + 0.2"-style float noise from failing an exact (tolerance 0) match.
    return math.isfinite(value) and abs(value - gold) <= bound + 1e-9 * max(1.0, abs(gold))
