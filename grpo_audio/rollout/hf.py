"""Rollouts with transformers ``generate`` from audio-merged prompt embeddings (the small-scale engine).

The prompt is embedded once with the audio spliced in (``prompt_embeddings``), exactly what a vLLM engine
would receive, then decoded with ``generate(inputs_embeds=...)``; the encoder never runs inside the decode loop.
Text-only rollouts mask every id >= ``config.audio_token_index`` (the discrete speech tokens) and the audio
marker tokens before sampling: a sampled ``<|cAUDIO|>`` would otherwise ask for audio frames that do not exist.

With ``SamplingSettings.return_logprobs`` the engine also returns each sampled token's log-probability under the
distribution it was drawn from: log-softmax of the processed scores (text-only mask, then temperature, top-k and
top-p), the same quantity the vLLM engine reports with ``logprobs_mode="processed_logprobs"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

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
        self, sampling: SamplingSettings, stop_token_ids: list[int], pad_token_id: int, audio_marker_ids: list[int]
    ) -> None:
        self.sampling = sampling
        self.audio_marker_ids = list(audio_marker_ids)
        self.stop_token_ids = list(stop_token_ids)
        self.pad_token_id = pad_token_id

    def generation_config(self) -> GenerationConfig:
        s = self.sampling
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
        out = model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            generation_config=self.generation_config(),
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
        if want_logprobs:
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
