"""R_accuracy in {0, 1}: the answer the completion gives matches the gold answer.

r = 1[match(a(completion), gold)], with ``rule`` selecting the matcher of ``rewards.matching``:

* ``mmau`` (default): MMAU/MMAR official token rule, uses ``sample["choices"]``;
* ``exact``: normalised text equality;
* ``option``: the prediction names a choice by letter, ``option N``, text, or the MMAU rule on one choice;
* ``mmsu``: MMSU's official first-character / second-to-last-character letter rule;
* ``numeric``: last number of the prediction within ``tolerance`` of the gold number (``relative=True`` scales the
  tolerance by ``|gold|``).

a(completion), the answer, depends on ``answer_source``:

* ``tag`` (default, the training reward): the content of the last ``<answer>...</answer>`` pair only. A completion
  without one gave no answer and scores 0, whatever its text says: matching the whole text would pay a tagless
  "The answer is high." in full, a reward-hacking surface in training;
* ``tag_or_text``: that span, else the text after the last ``</think>``, else the whole completion
  (``rewards.answer_span.extract_answer``). This is how benchmark scripts score raw model output, and what the
  evaluation uses (``grpo_audio.evaluation.scoring``).
  A recipe may name it on the training term too, e.g. for a model that has not yet learnt the tags.

The gold answer is ``sample["answer"]``: normally the text of one choice (MMAU); an ``int`` is an index into
``sample["choices"]`` (AVQA stores answers this way; ``index_base`` says whether it counts from 0 or 1); a lone
letter that is not itself a choice (``"B"``) is mapped to its choice. Without choices an int or float gold answer
is taken as a value (for ``numeric``).

None means not applicable: the row has no gold answer (never "no answer given", which is 0). A configuration that
cannot work on a row (``option`` or ``mmsu`` without choices, ``numeric`` with a gold answer that holds no number,
an index out of range) raises ``ValueError`` naming the row, rather than scoring 0.

Example: ``score("<think>high pitch</think><answer>high</answer>", {"answer": "high", "choices": ["high", "low"]})``
is 1.0, and so is the same with ``{"answer": 0, ...}``; ``score("The answer is high.", {"answer": "high", "choices":
["high", "low"]})`` is 0.0, and 1.0 with ``answer_source="tag_or_text"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from rewards import _checks
from rewards.answer_span import extract_answer, tagged_answer
from rewards.matching import (
    exact_match,
    find_numbers,
    letter_index,
    mmau_match,
    mmsu_match,
    normalise,
    numeric_match,
    option_match,
)
from rewards.registry import register_reward

RULES = ("mmau", "exact", "option", "mmsu", "numeric")
ANSWER_SOURCES = ("tag", "tag_or_text")


def _row(sample: Mapping[str, Any]) -> str:
    return f"sample id {sample['id']!r}" if "id" in sample else "sample without id"


def _choices(sample: Mapping[str, Any]) -> list[str] | None:
    choices = sample.get("choices")
    if choices is None:
        return None
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise ValueError(f"accuracy: {_row(sample)}: 'choices' must be a list of strings, got {choices!r}")
    return [str(c) for c in choices]


def resolve_gold(sample: Mapping[str, Any], index_base: int = 0) -> str | None:
    """The gold answer as text, or None if the row has none. See the module docstring for the accepted forms."""
    answer = sample.get("answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return None
    choices = _choices(sample)
    if isinstance(answer, int) and not isinstance(answer, bool) and choices:
        index = answer - index_base
        if not 0 <= index < len(choices):
            raise ValueError(
                f"accuracy: {_row(sample)}: answer index {answer} (index_base {index_base}) is out of range for "
                f"{len(choices)} choices"
            )
        return choices[index]
    text = str(answer).strip()
    if choices and re.fullmatch(r"[A-Z]", text) and not any(normalise(c) == normalise(text) for c in choices):
        index = letter_index(text, len(choices))
        if index is None:
            raise ValueError(f"accuracy: {_row(sample)}: answer letter {text!r} is out of range")
        return choices[index]
    return text


def validate(options: Mapping[str, Any]) -> None:
    _checks.choice(options, "rule", RULES)
    _checks.number(options, "tolerance", minimum=0)
    _checks.boolean(options, "relative")
    _checks.choice(options, "index_base", (0, 1))
    _checks.choice(options, "answer_source", ANSWER_SOURCES)


def given_answer(completion: str, answer_source: str = "tag") -> str | None:
    """The answer the completion gives under ``answer_source`` (module docstring); None when it gives none."""
    if answer_source == "tag_or_text":
        return extract_answer(completion)
    if answer_source != "tag":
        raise ValueError(f"accuracy: unknown answer_source {answer_source!r}; choose one of {ANSWER_SOURCES}")
    return tagged_answer(completion)


@register_reward("accuracy", validate=validate)
def score(
    completion: str,
    sample: Mapping[str, Any],
    rule: str = "mmau",
    tolerance: float = 0.0,
    relative: bool = False,
    index_base: int = 0,
    answer_source: str = "tag",
) -> float | None:
    gold = resolve_gold(sample, index_base)
    if gold is None:
        return None
    prediction = given_answer(completion, answer_source)
    if prediction is None:
        return 0.0
    if rule == "mmau":
        return float(mmau_match(prediction, gold, _choices(sample)))
    if rule == "exact":
        return float(exact_match(prediction, gold))
    if rule in ("option", "mmsu"):
        choices = _choices(sample)
        if not choices:
            raise ValueError(f"accuracy: rule {rule!r} needs 'choices' and {_row(sample)} has none")
        return float((option_match if rule == "option" else mmsu_match)(prediction, gold, choices))
    if rule == "numeric":
        numbers = find_numbers(gold)
        if not numbers:
            raise ValueError(f"accuracy: rule 'numeric' but the gold answer {gold!r} of {_row(sample)} has no number")
        return float(numeric_match(prediction, numbers[0], tolerance, relative))
    raise ValueError(f"accuracy: unknown rule {rule!r}; choose one of {RULES}")
