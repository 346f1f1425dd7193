"""R_format in {0, 1}: the completion has the expected reasoning/answer layout.

``mode`` selects the rule:

* ``search`` (default, Covo-Audio Eq. 2): r = 1[search(r"<think>.*</think>.*<answer>.*</answer>", completion,
  DOTALL)]. A search, not a full match, so text around the sections does not cost the reward, and DOTALL because
  reasoning spans lines. Faithful to the paper, so duplicated, nested or empty sections still score 1.
* ``strict`` (R1-AQA style): r = 1[fullmatch(r"\\s*<think>.*?</think>\\s*<answer>.*?</answer>\\s*", DOTALL)] and each
  of the four tags occurs exactly once. Deviation: R1-AQA's regex alone accepts ``<answer>a</answer><answer>b
  </answer>`` (the lazy ``.*?`` backtracks across the first ``</answer>``); the tag count closes that hole, and so
  also rejects nested tags. An empty ``<think></think>`` is allowed, as the regex allows it.
* ``adaptive`` (Audio-Thinker): the ``strict`` layout, or a bare ``\\s*<answer>.*?</answer>\\s*`` with no think tags,
  because the Audio-Thinker prompt lets the model skip reasoning.

``think_prefilled=True`` is for prompt templates that already end with ``<think>``: the completion then starts
inside the reasoning, and the opening tag is put back before matching (otherwise every sample would score 0). If
the model wrote ``<think>`` again anyway, it is not doubled.

Never None: every completion has a format.

Example: ``score("<think>two beeps</think><answer>2</answer>", {})`` is 1.0; ``score("<answer>2</answer>", {})`` is
0.0, but 1.0 with ``mode="adaptive"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rewards import _checks
from rewards.answer_span import add_prefilled_think
from rewards.registry import register_reward

MODES = ("search", "strict", "adaptive")

_PATTERN = re.compile(r"<think>.*</think>.*<answer>.*</answer>", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _tag_counts(text: str) -> tuple[int, ...]:
    return tuple(text.count(tag) for tag in _TAGS)


# With each tag present exactly once, fullmatch(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", DOTALL) holds
# iff the stripped text starts with <think>, ends with </answer>, and only whitespace separates </think> from
# <answer>. Checking that directly is linear and avoids the regex's character-by-character lazy scan.
def _strict_layout(text: str) -> bool:
    body = text.strip()
    if not (body.startswith("<think>") and body.endswith("</answer>")):
        return False
    close, opening = body.find("</think>"), body.find("<answer>")
    return close < opening and not body[close + len("</think>") : opening].strip()


def _bare_layout(text: str) -> bool:
    body = text.strip()
    return body.startswith("<answer>") and body.endswith("</answer>")


def validate(options: Mapping[str, Any]) -> None:
    _checks.choice(options, "mode", MODES)
    _checks.boolean(options, "think_prefilled")


@register_reward("format", validate=validate)
def score(completion: str, sample: Mapping[str, Any], think_prefilled: bool = False, mode: str = "search") -> float:
    text = add_prefilled_think(completion) if think_prefilled else completion
    if mode == "search":
        return float(_PATTERN.search(text) is not None)
    counts = _tag_counts(text)
    if mode == "strict":
        return float(counts == (1, 1, 1, 1) and _strict_layout(text))
    if mode == "adaptive":
        if counts == (1, 1, 1, 1):
            return float(_strict_layout(text))
        return float(counts == (0, 0, 1, 1) and _bare_layout(text))
    raise ValueError(f"format: unknown mode {mode!r}; choose one of {MODES}")
