"""Rewards scored a step ahead (``rollout.overlap``): the prefetched rollouts of step k+1 are scored in the background
thread that sampled them, while step k updates, so a slow LLM judge overlaps the update too.

The background thread decodes the completions as TRL will (``batch_decode`` with ``skip_special_tokens``), builds the
rubric's arguments as ``R_total`` will (``reward_bridge.reward_samples`` and ``reward_context``, at step k+1) and
scores them. When step k+1 scores its batch, ``R_total`` hands the rubric's arguments to ``ScoredAhead.answers``:
only if texts, rows and context are equal is the breakdown used, so a batch scored ahead gets exactly the rewards it
would have got in the step (the rubric is a function of its arguments; a judge at temperature 0 too). Anything
else (another decode, changed rows, a scoring error in the background) is scored in the step as before, and
``rewards/scored_ahead`` logs 0 for that step.

One training process only: with several, rewards are scored once on process 0 for the global batch
(``AudioGRPOTrainer._calculate_rewards``), which needs collectives a background thread must not run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grpo_audio.train.reward_bridge import reward_context, reward_samples
from rewards import RewardContext, Rubric
from rewards.rubric import RewardBreakdown


@dataclass
class ScoredAhead:
    """The rubric's arguments for a prefetched batch and what it returned; ``seconds`` of wall time."""

    texts: list[str]
    samples: list[dict]
    context: RewardContext
    breakdown: RewardBreakdown
    seconds: float

    def answers(self, texts: list[str], samples: list[dict], context: RewardContext) -> bool:
        """Whether these are exactly the arguments this batch was scored with."""
        try:
            return texts == self.texts and context == self.context and bool(samples == self.samples)
        except (TypeError, ValueError, RuntimeError):  # a column without plain equality (an array): score again
            return False


def ahead_scorer(
    rubric: Rubric,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    *,
    step: int,
    total_steps: int,
    group_size: int,
    max_length: int | None,
    stop_token_ids: Sequence[int],
) -> Callable[[Any], ScoredAhead]:
    """The function the prefetch thread calls with its ``RolloutResult``: ``rows`` (one per completion, as the step
    will hand them to TRL) scored at optimizer step ``step``. ``tokenizer`` is the background's own copy (a fast
    tokenizer is not to be shared between threads)."""
    samples = reward_samples(rows)

    def score(result) -> ScoredAhead:
        texts = tokenizer.batch_decode(result.completion_ids, skip_special_tokens=True)
        context = reward_context(
            result.completion_ids,
            len(texts),
            step=step,
            total_steps=total_steps,
            group_size=group_size,
            max_length=max_length,
            stop_token_ids=stop_token_ids,
        )
        begin = time.perf_counter()
        breakdown = rubric.score(texts, samples, context)
        return ScoredAhead(texts, samples, context, breakdown, time.perf_counter() - begin)

    return score


def background_tokenizer(tokenizer):
    """A copy of ``tokenizer`` for the prefetch thread."""
    return copy.deepcopy(tokenizer)


__all__ = ["ScoredAhead", "ahead_scorer", "background_tokenizer"]
