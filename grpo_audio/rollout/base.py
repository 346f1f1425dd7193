"""The rollout-engine interface. The trainer hands an engine the prompt token ids and the rows' audio and gets
back, per row, the completion token ids (ending with the stop token when one was produced), the finish reason,
and optionally the per-token log-probs of the sampled tokens under the sampling distribution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from grpo_audio.audio.featurizer import AudioRows


@dataclass
class RolloutResult:
    completion_ids: list[list[int]]
    finish_reasons: list[str]  # "stop" (a stop token ended it) or "length" (max_completion_length reached)
    logprobs: list[list[float]] | None = None


class RolloutEngine(Protocol):
    name: str

    def generate(self, model, prompt_ids: list[list[int]], audio: AudioRows) -> RolloutResult: ...
