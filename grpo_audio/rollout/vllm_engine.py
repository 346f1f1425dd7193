"""Rollouts with vLLM serving only the Qwen2 backbone, from audio-merged prompt embeddings (route A).

The trainer keeps the Whisper encoder and the adapter: for each unique prompt it computes the token embeddings with
the audio spliced in (``model.prompt_embeddings``) and hands vLLM ``{"prompt_embeds": (T, H)}``; vLLM never sees
audio. Per call:

* rows arrive with each prompt repeated G times consecutively (TRL's layout); consecutive identical rows (same ids
  and same audio) form one request with ``n`` = the run length, so a group split across processes still works. The
  n completions come back in order and are laid out in the rows' order.
* sampling: the recipe's temperature / top-p / top-k / max tokens; text-only rollouts restrict sampling to the ids
  below ``config.audio_token_index`` minus the audio markers (``allowed_token_ids``); a completion ends at one of
  the stop ids (kept as its last token, finish reason "stop") or at max tokens ("length"). The backbone's own EOS is
  ignored (``ignore_eos``): only the stop ids the trainer gives end a rollout, as in the HF engine.
* log-probs: each sampled token's log-probability under the distribution it was drawn from (text-only mask,
  temperature, top-k, top-p applied: the engine runs with ``logprobs_mode="processed_logprobs"``), which TRL's
  importance-sampling correction compares with the trainer's own log-probs.
* seeds: the group starting at row r of the global batch gets seed ``base + r`` with ``base`` derived from (run
  seed, optimizer step, call number within the step); vLLM gives the k-th of its n samples ``seed + k``, so each
  completion has its own generator, the same whichever process samples it. What that makes reproducible: with the
  same recipe, the same weights and the same batch order, a rerun (or a resume from a checkpoint) draws the same
  random numbers for every completion, independently of how vLLM batches requests. Bitwise-identical tokens
  additionally need bitwise-identical logits, which vLLM does not promise across batch compositions, devices or
  kernel versions (a near-tie can flip).

Weight sync: ``sync_weights(model, step)`` is called by the trainer before each rollout; when the optimizer step
differs from the one last synced it has the backend replace its backbone weights with the model's (LoRA merged).

The backend (``vllm_backend.VLLMBackend``) does the sampling and holds the weights: ``vllm_inprocess.InProcessVLLM``
(mode colocate, a ``vllm.LLM`` in this process) or ``vllm_server.VLLMServerClient`` (mode server, a separate ``vllm
serve`` over HTTP); ``factory.build_rollout_engine`` picks one from the recipe. This module imports no vLLM.
"""

from __future__ import annotations

import hashlib
import time

import torch

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.rollout.base import RolloutResult
from grpo_audio.rollout.hf import SamplingSettings
from grpo_audio.rollout.vllm_backend import VLLMBackend

SEED_MASK = 2**62 - 1  # bases stay far below vLLM's int64 limit even after adding row and sample indices


def consecutive_groups(prompt_ids: list[list[int]], audio: AudioRows) -> list[tuple[int, int]]:
    """``(first row, row count)`` of each run of consecutive identical rows (same token ids and same audio)."""
    tensors = list(audio.as_dict().values())

    def same(i: int, j: int) -> bool:
        return prompt_ids[i] == prompt_ids[j] and all(torch.equal(t[i], t[j]) for t in tensors)

    groups: list[tuple[int, int]] = []
    for row in range(len(prompt_ids)):
        if groups and same(groups[-1][0], row):
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((row, 1))
    return groups


def seed_base(run_seed: int, step: int, call: int) -> int:
    """A per-call seed base: a hash of (run seed, optimizer step, call number within the step)."""
    digest = hashlib.blake2b(f"grpo-audio:{run_seed}:{step}:{call}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & SEED_MASK


def sampling_fields(
    sampling: SamplingSettings, n: int, seed: int, stop_token_ids: list[int], allowed_token_ids: list[int] | None
) -> dict:
    """vLLM ``SamplingParams`` fields (the same names in the HTTP completions API) for one request."""
    greedy = not sampling.do_sample or sampling.temperature == 0.0
    fields = {
        "n": n,
        "temperature": 0.0 if greedy else sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "top_k": 0 if greedy else sampling.top_k,  # 0: off
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
        "logprobs": 0,  # the sampled token's log-prob only
        "stop_token_ids": list(stop_token_ids),
        "ignore_eos": True,  # only the given stop ids end a rollout (the backbone config's EOS may differ)
    }
    if allowed_token_ids is not None:
        fields["allowed_token_ids"] = allowed_token_ids
    return fields


class VLLMRolloutEngine:
    """``RolloutEngine`` on vLLM; see the module docstring."""

    name = "vllm"
    returns_logprobs = True  # processed log-probs of every sampled token, always

    def __init__(
        self,
        backend: VLLMBackend,
        sampling: SamplingSettings,
        stop_token_ids: list[int],
        pad_token_id: int,
        audio_marker_ids: list[int],
        text_vocab_size: int,
        seed: int,
        synced_step: int | None = 0,
    ) -> None:
        """``synced_step``: the optimizer step whose weights the backend holds (0: exported from the model at
        start); None forces a sync before the first rollout."""
        self.backend = backend
        self.sampling = sampling
        self.stop_token_ids = list(stop_token_ids)
        self.pad_token_id = pad_token_id
        self.audio_marker_ids = list(audio_marker_ids)
        self.text_vocab_size = text_vocab_size
        self.seed = seed
        self.synced_step = synced_step
        self.step = synced_step or 0
        self._calls_this_step = 0
        self.first_row = 0  # global index of the next call's first row (set_batch_position)
        self.last_sync_s: float | None = None
        banned = set(self.audio_marker_ids)
        self.allowed_token_ids = [t for t in range(text_vocab_size) if t not in banned]

    def set_batch_position(self, step: int, first_row: int) -> None:
        """Where the next call's rows sit: the optimizer step and the global index of its first row."""
        if step != self.step:
            self.step, self._calls_this_step = step, 0
        self.first_row = first_row

    def sync_weights(self, model, step: int) -> bool:
        """Push the backbone weights unless the backend already holds those of optimizer step ``step``."""
        if step != self.step:
            self.step, self._calls_this_step = step, 0
        if step == self.synced_step:
            return False
        start = time.perf_counter()
        self.backend.load_weights(model)
        self.synced_step = step
        self.last_sync_s = time.perf_counter() - start
        return True

    def prompt_embeds(
        self, model, prompt_ids: list[list[int]], audio: AudioRows, rows: list[int]
    ) -> list[torch.Tensor]:
        """Audio-merged embeddings (T_i, H) of the given rows, unpadded, on the CPU."""
        device = next(model.parameters()).device
        width = max(len(prompt_ids[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        for i, r in enumerate(rows):  # right padding: a prompt's embeddings do not depend on its position
            ids[i, : len(prompt_ids[r])] = torch.tensor(prompt_ids[r])
        index = torch.tensor(rows)
        subset = {k: v[index.to(v.device)] for k, v in audio.as_dict().items()}
        embeds = model.prompt_embeddings(ids.to(device), **subset)
        return [embeds[i, : len(prompt_ids[r])].detach().to("cpu").clone() for i, r in enumerate(rows)]

    @torch.no_grad()
    def generate(self, model, prompt_ids: list[list[int]], audio: AudioRows) -> RolloutResult:
        embeds, requests = self.prepare(model, prompt_ids, audio)
        return self.sample(embeds, requests)

    @torch.no_grad()
    def prepare(
        self, model, prompt_ids: list[list[int]], audio: AudioRows, at: tuple[int, int] | None = None
    ) -> tuple[list[torch.Tensor], list[dict]]:
        """The requests of one ``generate`` call: each group's prompt embeddings and sampling fields. ``at``:
        ``(optimizer step, first global row)`` to seed them for, as the first call of that step would be (a rollout
        prepared a step ahead, ``rollout.overlap``); default: this call's place (``set_batch_position``)."""
        groups = consecutive_groups(prompt_ids, audio)
        embeds = self.prompt_embeds(model, prompt_ids, audio, [first for first, _ in groups])
        if at is None:
            base = seed_base(self.seed, self.step, self._calls_this_step) + self.first_row
            self._calls_this_step += 1
        else:
            base = seed_base(self.seed, at[0], 0) + at[1]
        allowed = self.allowed_token_ids if self.sampling.text_only else None
        # seed of a group = base + its first global row, so the k-th sample (seed + k) of every group is distinct
        requests = [
            sampling_fields(self.sampling, count, (base + first) & SEED_MASK, self.stop_token_ids, allowed)
            for first, count in groups
        ]
        return embeds, requests

    def sample(self, embeds: list[torch.Tensor], requests: list[dict]) -> RolloutResult:
        """Sample prepared requests on the backend (no model access: it can run beside the trainer's update)."""
        outputs = self.backend.generate(embeds, requests)
        completions, reasons, logprobs = [], [], []
        for group in outputs:
            for c in group:
                completions.append(c.token_ids)
                reasons.append(c.finish_reason)
                logprobs.append(c.logprobs)
        return RolloutResult(completion_ids=completions, finish_reasons=reasons, logprobs=logprobs)
