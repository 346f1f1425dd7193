"""What ``VLLMRolloutEngine`` asks of a vLLM backend, and what a backend hands back.

Two backends implement it: ``InProcessVLLM`` (``vllm_inprocess.py``, mode colocate) and ``VLLMServerClient``
(``vllm_server.py``, mode server). Formats:

* ``generate(embeds, requests)``: ``embeds[i]`` is one prompt's audio-merged embeddings, a CPU tensor (T_i, H) in
  any float dtype (the backend casts to its own); ``requests[i]`` its vLLM ``SamplingParams`` fields as a dict
  (``vllm_engine.sampling_fields``; the same names in the HTTP completions API), ``n`` among them. Returns, per
  request, its ``n`` completions in sample-index order.
* ``load_weights(model)``: replace the served backbone with ``model``'s (LoRA merged), in place.
* ``dtype``: the torch dtype of the served weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class SampledCompletion:
    """One completion: its token ids, each token's log-prob (nats; NaN where vLLM gave none) and the finish
    reason ("stop" or "length")."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


class VLLMBackend(Protocol):
    dtype: torch.dtype

    def generate(self, embeds: list[torch.Tensor], requests: list[dict]) -> list[list[SampledCompletion]]: ...

    def load_weights(self, model) -> None: ...


def check_finish(reason: str | None) -> str:
    """``reason`` when it is "stop" or "length"; anything else (an abort, a vLLM error) fails the rollout."""
    if reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM ended a rollout with finish reason {reason!r} (expected 'stop' or 'length')")
    return reason
