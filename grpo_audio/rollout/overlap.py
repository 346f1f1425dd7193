"""One-step-off-policy rollouts (``rollout.overlap``): the next step's rollouts are sampled while this step updates.

With a separate vLLM server (``rollout.vllm.mode: server``) the rollout GPUs idle while the trainer updates, and the
training GPUs idle while the server samples. With overlap, at optimizer step k (the trainer holding weights
``W_{k-1}``):

1. the rollouts of step k are taken from the prefetch started at step k-1, which the server sampled from
   ``W_{k-2}`` (staleness 1); without one (the first step, a resume, an epoch's first step) they are sampled now;
2. the server is brought to ``W_{k-1}`` (it is idle: step 1 waited for it);
3. the rollouts of step k+1 are prepared here (audio features, prompt embeddings, seeds: those the synchronous
   run would use for step k+1) and sampled by the server in a background thread while step k scores its rollouts
   and updates; step k+1 then takes over those audio features instead of computing them again.

The sampler's log-probs of a prefetched rollout are ``W_{k-2}``'s; TRL's importance-sampling correction
(``trainer.vllm_importance_sampling_*``) multiplies each token's loss by the truncated ratio of the trainer's
old-policy log-prob (``W_{k-1}``) to it, as it does for any sampler mismatch. Staleness, the optimizer steps between
the weights that sampled and the weights being updated, is logged per step (``rollout/staleness``) and is never
more than 1: a prefetch is always consumed, or dropped, by the next step.

With one training process the prefetch thread also scores the rollouts it sampled (``score``, given by the trainer:
``grpo_audio.train.scoring_ahead``), so the rewards, an LLM judge's included, are ready when step k+1 takes the
rollouts; a scoring error there is kept (``last_score_error``) and the step scores the batch itself. The next step's
prompts come from the trainer's data loader,
read one optimizer step ahead (``AudioGRPOTrainer.get_batch_samples``). A resumed run samples its first step
synchronously, so it is not bitwise the run an uninterrupted one would have been (the rollouts of that step come
from newer weights).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.rollout.base import RolloutResult
from grpo_audio.rollout.daemon import in_daemon_thread


@dataclass
class Prefetch:
    """Rollouts being sampled for a step ahead: what was asked, and the result to come."""

    prompt_ids: list[list[int]]
    audio_paths: list[str]
    audio: AudioRows
    future: Future

    def matches(self, prompt_ids: list[list[int]], audio: AudioRows) -> bool:
        """Whether these are the rows the step asks for (same tokens, same audio)."""
        if prompt_ids != self.prompt_ids:
            return False
        mine, theirs = self.audio.as_dict(), audio.as_dict()
        return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k].to(mine[k].device)) for k in mine)


class RolloutPrefetcher:
    """Samples one step's rollouts ahead on the engine's backend, in a background thread (module docstring)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.pending: Prefetch | None = None
        self.last_wait_s = 0.0  # how long the last take() waited for the server
        self.last_sample_s = 0.0  # how long the server sampled the prefetch that take() returned
        self.last_scored: Any = None  # what ``score`` returned for the prefetch that take() returned, if it ran
        self.last_score_error: str | None = None  # why ``score`` failed, if it did

    def start(
        self,
        model,
        prompt_ids: list[list[int]],
        audio_paths: list[str],
        audio: AudioRows,
        step: int,
        first_row: int,
        score: Callable[[RolloutResult], Any] | None = None,
    ) -> None:
        """Prepare the requests of ``step`` here (they read the model) and sample them in the background; then
        ``score(result)`` there too, when given."""
        embeds, requests = self.engine.prepare(model, prompt_ids, audio, at=(step, first_row))

        def sample() -> tuple[RolloutResult, float, Any, str | None]:
            begin = time.perf_counter()
            result = self.engine.sample(embeds, requests)
            seconds = time.perf_counter() - begin
            if score is None:
                return result, seconds, None, None
            try:
                return result, seconds, score(result), None
            except Exception as error:  # the step scores the batch itself, and raises it there
                return result, seconds, None, f"{type(error).__name__}: {error}"

        # a daemon thread: a run that stops on an error does not wait for a sampling request in flight
        self.pending = Prefetch(prompt_ids, list(audio_paths), audio, in_daemon_thread(sample))

    def audio_for(self, audio_paths: list[str]) -> AudioRows | None:
        """The audio features computed for the prefetch, when the step's rows are its rows (the step reuses them
        instead of computing them again), else None."""
        if self.pending is None or self.pending.audio_paths != list(audio_paths):
            return None
        return self.pending.audio

    def wait(self) -> None:
        """Let a prefetch in flight finish (before the server's weights change), keeping its result."""
        if self.pending is not None:
            self.pending.future.exception()

    def take(self, prompt_ids: list[list[int]], audio: AudioRows) -> RolloutResult | None:
        """The prefetched rollouts if they are of these rows, else None; either way no prefetch is left."""
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        begin = time.perf_counter()
        # a sampling error surfaces here, in the step
        result, self.last_sample_s, self.last_scored, self.last_score_error = pending.future.result()
        self.last_wait_s = time.perf_counter() - begin
        if not pending.matches(prompt_ids, audio):
            self.last_scored = None
            return None
        return result


__all__ = ["Prefetch", "RolloutPrefetcher"]
