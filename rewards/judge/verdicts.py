"""Strict parsers for judge replies: a reply either carries exactly one well-formed verdict or is rejected.

Contract (stated in the prompts of ``prompts/judge/``): the reply contains exactly one ``<score>...</score>`` tag;
free text around it (a short justification) is allowed, and a leading ``<think>...</think>`` block from reasoning
judges (Qwen3 in thinking mode) is ignored.

* consistency: the tag holds ``0`` or ``1`` -> 0.0 / 1.0;
* thinking: the tag holds an integer 0..5, the number of the five criteria met -> n / 5 (0.0, 0.2, ..., 1.0).

Anything else (no tag, two tags, ``0.5``, ``yes``, ``6``, an unclosed tag) raises ``MalformedVerdictError``; nothing is
rounded or guessed, because a misparsed verdict would be a wrong reward that looks right.

Example: ``parse_consistency("The answer follows.\\n<score>1</score>")`` is 1.0; ``parse_thinking("<score>4</score>")``
is 0.8; ``parse_thinking("<score>0.8</score>")`` raises.
"""

from __future__ import annotations

import re

_THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_SCORE = re.compile(r"<score>(.*?)</score>", re.DOTALL)


class MalformedVerdictError(ValueError):
    """The judge's reply does not follow the verdict contract."""


def _score_text(reply: str) -> str:
    if not isinstance(reply, str):
        raise MalformedVerdictError(f"reply is {type(reply).__name__}, not text")
    body = _THINK_BLOCK.sub("", reply, count=1)
    found = _SCORE.findall(body)
    if len(found) != 1:
        snippet = body.strip()[:200]
        raise MalformedVerdictError(f"expected exactly one <score>...</score> tag, found {len(found)} in {snippet!r}")
    if body.count("<score>") != 1 or body.count("</score>") != 1:
        raise MalformedVerdictError("stray or nested <score> tags")
    return found[0].strip()


def parse_consistency(reply: str) -> float:
    value = _score_text(reply)
    if value not in ("0", "1"):
        raise MalformedVerdictError(f"consistency verdict must be 0 or 1, got {value!r}")
    return float(value)


def parse_thinking(reply: str) -> float:
    value = _score_text(reply)
    if not re.fullmatch(r"[0-5]", value):
        raise MalformedVerdictError(f"thinking verdict must be an integer 0..5 (criteria met), got {value!r}")
    return int(value) / 5
