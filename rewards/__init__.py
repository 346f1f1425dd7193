"""Reward modules for grpo-audio: one module per reward, one flat registry, R_total declared in recipes.

A reward is a pure function ``score(completion: str, sample: Mapping) -> float | None``: it sees the completion
text and the dataset row (answer, choices, question, metadata), never waveforms. ``None`` means "not applicable"
(for example no gold answer) and is never the same as 0. A batched reward also gets the batch's ``RewardContext``:
the step, G and, per completion, its length in tokens and finish reason, with the run's length limit. A reward that
applies but cannot score a row (an LLM judge that never answered) returns ``RewardFailure(reason)``: never a
number, it leaves the row unscored (R_total None, no advantage, no loss) when the term's weight is non-zero; see
``rewards.rubric``.

Built-in rewards (importing this package registers them; it needs no torch):

==================  ==========  ===========================================================================
name                range       what
==================  ==========  ===========================================================================
accuracy            {0, 1}      <answer> span matches gold; rules mmau (default), exact, option, mmsu, numeric
format              {0, 1}      layout; modes search (paper Eq. 2, default), strict, adaptive
consistency         {0, 1}      LLM judge: reasoning and answer are coherent (paper)
thinking            [0, 1]/0.2  LLM judge: five reasoning criteria (paper)
consistency_rule    {0, 1}      rule-based: the choice the reasoning ends on is the answer's choice
consistency_cesar   [0, 1]      rule-based: CESAR concept overlap of reasoning with answer and question
thinking_rule       [0, 1]/0.2  rule-based: length band and repetition checks
overthinking        [0, 1]      rule-based: CESAR 1 - |think| / L_max
keywords_rule       [0, 1]      rule-based: share of reasoning-pattern keyword categories used (CESAR-style)
has_reasoning       {0, 1}      a non-blank closed <think> section (Step-Audio-R1)
overlong            [-1, 0]     DAPO soft overlong punishment on |y| in tokens (options l_max, l_cache)
==================  ==========  ===========================================================================

Combiners (``rewards.combiners``): sum (default), audio_thinker, cesar, step_audio_r1.
"""

from rewards.registry import (
    DuplicateRewardError,
    RewardContext,
    RewardError,
    RewardFailure,
    RewardOutputError,
    UnknownRewardError,
    get_reward,
    register_reward,
    registered_names,
)
from rewards.rubric import (
    RewardBreakdown,
    RewardProbeError,
    Rubric,
    TermSpec,
    UnscoredRowsError,
    rubric_from_config,
)

# Importing the built-in modules registers them.
from rewards import (  # noqa: F401  isort: skip
    accuracy,
    answer_format,
    consistency_cesar,
    consistency_rule,
    has_reasoning,
    judge,
    keywords_rule,
    overlong,
    overthinking,
    thinking_rule,
)

__all__ = [
    "DuplicateRewardError",
    "RewardBreakdown",
    "RewardContext",
    "RewardError",
    "RewardFailure",
    "RewardOutputError",
    "RewardProbeError",
    "Rubric",
    "TermSpec",
    "UnknownRewardError",
    "UnscoredRowsError",
    "get_reward",
    "register_reward",
    "registered_names",
    "rubric_from_config",
]
