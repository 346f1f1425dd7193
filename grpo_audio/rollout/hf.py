"""Rollouts with transformers ``generate`` from audio-merged prompt embeddings (the small-scale engine).

The prompt is embedded once with the audio spliced in (``prompt_embeddings``), exactly what a vLLM engine
would receive, then decoded with ``generate(inputs_embeds=...)``; the encoder never runs inside the decode loop.
Text-only rollouts mask every id >= ``config.audio_token_index`` (the discrete speech tokens) and the audio
marker tokens before sampling: a sampled ``<|cAUDIO|>`` would otherwise ask for audio frames that do not exist.

Seeded rows (``seed`` given, as the trainer does): each row draws from its own random stream, keyed by (run seed,
optimizer step, call within the step, the row's index in the global batch), so a row's completion does not depend
on which other rows share its batch or on how many processes split the batch: a 2-process run samples what the
1-process run samples. The draw is the Gumbel-max trick, exact sampling from the processed distribution:
``argmax_v(log p_v + g_v)`` with ``g_v = -log(-log u_v)``, ``u`` uniform from the row's generator, ``log p`` the
log-softmax of the scores after the text-only mask, temperature, top-k and top-p (transformers' own warpers). Without
``seed`` sampling uses the process's global RNG through ``generate(do_sample=True)``.

With ``SamplingSettings.return_logprobs`` the engine also returns each sampled token's log-probability under the
distribution it was drawn from: log-softmax of the processed scores (text-only mask, then temperature, top-k and
top-p), the same quantity the vLLM engine reports with ``logprobs_mode="processed_logprobs"``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from grpo_audio.audio_rows import AudioRows
from grpo_audio.rollout.base import RolloutResult


class TextOnlyLogitsProcessor(LogitsProcessor):
    """Sets the scores of ids >= ``first_speech_id`` (discrete speech tokens) and of ``banned_ids`` (the audio
    markers ``<|begofcAUDIO|>``, ``<|cAUDIO|>``, ``<|endofcAUDIO|>``, which only a prompt may carry) to -inf."""

    def __init__(self, first_speech_id: int, banned_ids: list[int]) -> None:
        self.first_speech_id = first_speech_id
        self.banned_ids = list(banned_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.first_speech_id :] = float("-inf")
        scores[:, self.banned_ids] = float("-inf")
        return scores


def row_seed(run_seed: int, step: int, call: int, row: int) -> int:
    """The seed of one row's random stream: a hash of (run seed, optimizer step, call within the step, global row)."""
    digest = hashlib.blake2b(f"grpo-audio-hf:{run_seed}:{step}:{call}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class GumbelMaxSampler(LogitsProcessor):
    """Samples each row from its own generator (Gumbel-max over the warped log-probs) and hands ``generate`` a
    one-hot score row, so its greedy step takes exactly that token. Records each step's chosen-token log-prob under
    the warped distribution in ``chosen_logprobs``."""

    def __init__(self, seeds: list[int], temperature: float, top_k: int, top_p: float, device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.warpers = LogitsProcessorList()
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.chosen_logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logp = self.warpers(input_ids, scores.float()).log_softmax(dim=-1)
        uniform = torch.stack(
            [torch.rand(scores.size(-1), generator=g, device=scores.device) for g in self.generators]
        )
        gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(torch.float32).tiny)))
        choice = (logp + gumbel).argmax(dim=-1, keepdim=True)
        self.chosen_logprobs.append(logp.gather(-1, choice).squeeze(-1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, choice, 0.0)


@dataclass
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True
    text_only: bool = True
    return_logprobs: bool = False  # per-token log-probs of the sampled tokens (processed scores, see module doc)


class HFRolloutEngine:
    name = "hf"

    def __init__(
        self,
        sampling: SamplingSettings,
        stop_token_ids: list[int],
        pad_token_id: int,
        audio_marker_ids: list[int],
        seed: int | None = None,
    ) -> None:
        self.sampling = sampling
        self.audio_marker_ids = list(audio_marker_ids)
        self.stop_token_ids = list(stop_token_ids)
        self.pad_token_id = pad_token_id
        self.seed = seed  # None: the global RNG; an int: one seeded stream per row (module docstring)
        self.step, self.first_row, self._calls_this_step = 0, 0, 0

    def set_batch_position(self, step: int, first_row: int) -> None:
        """Where the next call's rows sit: the optimizer step and the global index of its first row."""
        if step != self.step:
            self.step, self._calls_this_step = step, 0
        self.first_row = first_row

    def generation_config(self, sampling: SamplingSettings | None = None) -> GenerationConfig:
        s = sampling or self.sampling
        return GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            do_sample=s.do_sample,
            temperature=s.temperature if s.do_sample else None,
            top_p=s.top_p if s.do_sample else None,
            top_k=s.top_k if s.do_sample else None,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
            bos_token_id=None,
            output_scores=s.return_logprobs,
            return_dict_in_generate=s.return_logprobs,
        )

    @torch.no_grad()
    def generate(self, model, prompt_ids: list[list[int]], audio: AudioRows) -> RolloutResult:
        device = next(model.parameters()).device
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompt_ids):  # left padding: every prompt ends at the last column
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        embeds = model.prompt_embeddings(ids, **audio.as_dict())
        processors = LogitsProcessorList()
        if self.sampling.text_only:
            processors.append(TextOnlyLogitsProcessor(model.config.audio_token_index, self.audio_marker_ids))
        want_logprobs = self.sampling.return_logprobs
        config, sampler = self.generation_config(), None
        if self.seed is not None and self.sampling.do_sample:
            call = self._calls_this_step
            self._calls_this_step += 1
            seeds = [row_seed(self.seed, self.step, call, self.first_row + i) for i in range(len(prompt_ids))]
            s = self.sampling
            sampler = GumbelMaxSampler(seeds, s.temperature, s.top_k, s.top_p, device)
            processors.append(sampler)
            config = self.generation_config(replace(s, do_sample=False))  # greedy over the sampler's one-hot
        out = model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            generation_config=config,
            logits_processor=processors,
        )
        sequences = out.sequences if want_logprobs else out
        completions, reasons = [], []
        for row in sequences.tolist():
            stop_at = next((i for i, t in enumerate(row) if t in self.stop_token_ids), None)
            if stop_at is None:
                completions.append(row)
                reasons.append("length")
            else:
                completions.append(row[: stop_at + 1])
                reasons.append("stop")
        logprobs = None
        if want_logprobs and sampler is not None:
            chosen = torch.stack(sampler.chosen_logprobs, dim=1)
            logprobs = [chosen[i, : len(c)].tolist() for i, c in enumerate(completions)]
        elif want_logprobs:
            # scores[t] (B, V): the processed scores token t was drawn from; one step at a time (V is ~168k)
            chosen = torch.stack(
                [
                    scores.float().log_softmax(dim=-1).gather(-1, sequences[:, t, None]).squeeze(-1)
                    for t, scores in enumerate(out.scores)
                ],
                dim=1,
            )
            logprobs = [chosen[i, : len(c)].tolist() for i, c in enumerate(completions)]
        return RolloutResult(completion_ids=completions, finish_reasons=reasons, logprobs=logprobs)
