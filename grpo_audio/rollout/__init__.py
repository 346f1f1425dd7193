"""Rollout engines: sample G completions per prompt from audio-merged prompt embeddings."""

from grpo_audio.rollout.base import RolloutEngine, RolloutResult
from grpo_audio.rollout.hf import HFRolloutEngine

__all__ = ["HFRolloutEngine", "RolloutEngine", "RolloutResult"]
