"""overthinking in [0, 1]: RULE-BASED CESAR length penalty on the reasoning.

    r = clip(1 - |think| / L_max, 0, 1)

with |think| the number of whitespace-separated words of the ``<think>`` content and L_max = ``max_words``
(default 100). Shorter reasoning scores higher; CESAR pairs this with accuracy (weight 5) so the model settles at
the shortest reasoning that still answers correctly (CESAR reports a sweet spot near 35-40 tokens).

None when there is no reasoning (no or blank ``<think>`` section); 0.0 when the ``<think>`` was never closed (a
truncated completion is maximal overthinking).

Deviations from CESAR: lengths are counted in words, not tokenizer tokens, because rewards see text only and must
not load a tokenizer (a word is about 1.3 tokens of English). CESAR's L_max is not in our reference; 100 words is
our default, set ``max_words`` to tune it.

Example: a 25-word reasoning with ``max_words=100`` scores 0.75.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rewards import _checks
from rewards.answer_span import no_reasoning_verdict, parse_completion
from rewards.registry import register_reward


def validate(options: Mapping[str, Any]) -> None:
    _checks.number(options, "max_words", minimum=1)
    _checks.boolean(options, "think_prefilled")


@register_reward("overthinking", validate=validate)
def score(
    completion: str, sample: Mapping[str, Any], think_prefilled: bool = False, max_words: float = 100
) -> float | None:
    parsed = parse_completion(completion, think_prefilled)
    if not parsed.thinks:
        return no_reasoning_verdict(parsed)
    return min(1.0, max(0.0, 1.0 - len((parsed.think or "").split()) / max_words))
