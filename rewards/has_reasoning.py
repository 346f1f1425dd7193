"""has_reasoning in {0, 1}: the completion contains a closed, non-blank ``<think>...</think>`` section.

Step-Audio-R1's reasoning term (its R = 0.8 acc + 0.2 has_reasoning; see ``rewards.combiners.step_audio_r1``). A
``<think>`` that is opened but never closed (a truncated completion) and a blank ``<think></think>`` both score 0.
Never None.

Example: ``score("<think>a bell rings twice</think><answer>2</answer>", {})`` is 1.0; ``score("<answer>2</answer>",
{})`` is 0.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rewards.answer_span import parse_completion
from rewards.registry import register_reward


@register_reward("has_reasoning")
def score(completion: str, sample: Mapping[str, Any], think_prefilled: bool = False) -> float:
    return float(parse_completion(completion, think_prefilled).thinks)
