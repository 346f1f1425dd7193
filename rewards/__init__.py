"""Reward modules for grpo-audio: one module per reward, one flat registry, R_total declared in recipes.

A reward is a pure function ``score(completion: str, sample: Mapping) -> float | None``: it sees the completion
text and the dataset row (answer, choices, question, metadata), never waveforms. ``None`` means "not applicable"
(for example no gold answer) and is never the same as 0.

Importing this package registers the built-in rewards. It needs no torch.
"""

from rewards.registry import (
    DuplicateRewardError,
    RewardContext,
    UnknownRewardError,
    get_reward,
    register_reward,
    registered_names,
)
from rewards.rubric import RewardBreakdown, Rubric, TermSpec

# Importing the built-in modules registers them.
from rewards import (  # noqa: E402,F401  isort: skip
    accuracy,
    answer_format,
    consistency_cesar,
    consistency_rule,
    has_reasoning,
    keywords_rule,
    overthinking,
    thinking_rule,
)

__all__ = [
    "DuplicateRewardError",
    "RewardBreakdown",
    "RewardContext",
    "Rubric",
    "TermSpec",
    "UnknownRewardError",
    "get_reward",
    "register_reward",
    "registered_names",
]
