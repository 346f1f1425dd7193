"""Rollouts with transformers ``generate`` from audio-merged prompt embeddings (the small-scale engine).

The prompt is embedded once with the audio spliced in (``prompt_embeddings``), exactly what a vLLM engine
would receive, then decoded with ``generate(inputs_embeds=...)``; the encoder never runs inside the decode loop.

Every token is drawn by ``DistributionSampler`` from ``SamplingDistribution.process`` (``grpo_audio.model.sampling``):
the text-only mask (every id >= ``config.audio_token_index``, the discrete speech tokens, and the audio markers,
which only a prompt may carry: a sampled ``<|cAUDIO|>`` would ask for audio frames that do not exist), then
temperature, top-k and top-p. It is the same function the trainer's log-prob passes apply, so the trainer scores
each token under the distribution it was drawn from. ``generate`` itself only takes the sampler's one-hot choice
(greedy over it) and runs with a generation config of our own: the model's ``generation_config`` (a checkpoint's
``generation_config.json``: repetition penalty, top-p, ...) is set aside for the call, since the log-prob pass could
not reproduce its processors (``ignored_generation_fields`` lists what a checkpoint sets; the factory logs it).

Seeded rows (``seed`` given, as the trainer does): each row draws from its own random stream, keyed by (run seed,
optimizer step, call within the step, the row's index in the global batch), so a row's completion does not depend
on which other rows share its batch or on how many processes split the batch: a 2-process run samples what the
1-process run samples. The draw is the Gumbel-max trick, exact sampling from the processed distribution:
``argmax_v(log p_v + g_v)`` with ``g_v = -log(-log u_v)``, ``u`` uniform from the row's generator. Without ``seed``
the uniforms come from the process's global RNG. Greedy decoding (``do_sample=False``) takes the argmax of the
processed scores (the text-only mask is the only step that can change it).

With ``SamplingSettings.return_logprobs`` the engine also returns each sampled token's log-probability under the
distribution it was drawn from (log-softmax of the processed scores), the quantity the vLLM engine reports with
``logprobs_mode="processed_logprobs"``.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.model.sampling import SamplingDistribution
from grpo_audio.rollout.base import RolloutResult

# GenerationConfig fields that change which token is chosen; a checkpoint's value for any of them is set aside
_TOKEN_CHOICE_FIELDS = (
    "do_sample", "temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
    "guidance_scale", "watermarking_config", "renormalize_logits", "remove_invalid_values", "num_beams",
    "num_beam_groups", "diversity_penalty", "penalty_alpha", "low_memory",
)  # fmt: skip


def ignored_generation_fields(generation_config: GenerationConfig | None) -> dict:
    """The token-choice fields a model's generation config sets to something other than transformers' default:
    what a checkpoint's ``generation_config.json`` asks for and the rollouts do not apply."""
    if generation_config is None:
        return {}
    default = GenerationConfig()
    ours = {}
    for name in _TOKEN_CHOICE_FIELDS:
        value = getattr(generation_config, name, None)
        if value is not None and value != getattr(default, name, None):
            ours[name] = value
    return ours


@contextlib.contextmanager
def own_generation_config(model):
    """Set the model's ``generation_config`` aside for one ``generate`` call.

    transformers fills every field left unset in the config given to ``generate`` from the model's own (e.g. a
    checkpoint's ``repetition_penalty``); with a blank one in its place nothing is filled in.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper generates with it
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


def row_seed(run_seed: int, step: int, call: int, row: int) -> int:
    """The seed of one row's random stream: a hash of (run seed, optimizer step, call within the step, global row)."""
    digest = hashlib.blake2b(f"grpo-audio-hf:{run_seed}:{step}:{call}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class DistributionSampler(LogitsProcessor):
    """Chooses each row's next token from ``distribution`` and hands ``generate`` a one-hot score row, so its greedy
    step takes exactly that token. Sampling draws by Gumbel-max from each row's generator (``seeds``) or from the
    global RNG (``seeds`` None); ``greedy`` takes the argmax. Records each step's chosen-token log-prob under the
    processed distribution in ``chosen_logprobs``."""

    def __init__(
        self, distribution: SamplingDistribution, seeds: list[int] | None, device: torch.device, greedy: bool = False
    ) -> None:
        self.distribution = distribution
        self.generators = None if seeds is None else [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.greedy = greedy
        self.banned: torch.Tensor | None = None
        self.chosen_logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.banned is None and self.distribution.restricts_vocabulary:
            self.banned = self.distribution.banned_mask(scores.size(-1), scores.device)
        logp = self.distribution.process(scores, self.banned).log_softmax(dim=-1)
        if self.greedy:
            choice = logp.argmax(dim=-1, keepdim=True)
        else:
            if self.generators is None:
                uniform = torch.rand(scores.shape, device=scores.device)
            else:
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

    def distribution(self, first_speech_id: int, audio_marker_ids: list[int]) -> SamplingDistribution:
        """The processed distribution these settings sample from (greedy: the text-only mask alone)."""
        banned = {"first_banned_id": first_speech_id, "banned_ids": tuple(audio_marker_ids)} if self.text_only else {}
        if not self.do_sample:
            return SamplingDistribution(**banned)
        return SamplingDistribution(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, **banned)


class HFRolloutEngine:
    name = "hf"

    def __init__(
        self,
        sampling: SamplingSettings,
        stop_token_ids: list[int],
        pad_token_id: int,
        audio_marker_ids: list[int],
        seed: int | None = None,
        first_banned_id: int | None = None,
    ) -> None:
        self.sampling = sampling
        self.audio_marker_ids = list(audio_marker_ids)
        # ids from here on are never sampled (text-only): len(tokenizer); None: the model's config.audio_token_index
        # (Covo-Audio's first speech id, which its loader checks equals len(tokenizer))
        self.first_banned_id = first_banned_id
        self.stop_token_ids = list(stop_token_ids)
        self.pad_token_id = pad_token_id
        self.seed = seed  # None: the global RNG; an int: one seeded stream per row (module docstring)
        self.step, self.first_row, self._calls_this_step = 0, 0, 0

    @property
    def returns_logprobs(self) -> bool:
        """Whether ``generate`` returns the sampled tokens' log-probs (``RolloutResult.logprobs``)."""
        return self.sampling.return_logprobs

    def set_batch_position(self, step: int, first_row: int) -> None:
        """Where the next call's rows sit: the optimizer step and the global index of its first row."""
        if step != self.step:
            self.step, self._calls_this_step = step, 0
        self.first_row = first_row

    def generation_config(self) -> GenerationConfig:
        """``generate``'s own settings: greedy over the sampler's one-hot rows, our stop and pad ids, nothing else."""
        return GenerationConfig(
            max_new_tokens=self.sampling.max_new_tokens,
            do_sample=False,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
            bos_token_id=None,
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
        seeds = None
        if self.seed is not None and self.sampling.do_sample:
            call = self._calls_this_step
            self._calls_this_step += 1
            seeds = [row_seed(self.seed, self.step, call, self.first_row + i) for i in range(len(prompt_ids))]
        first_banned = self.first_banned_id
        if first_banned is None:
            if model.config.model_type != "covo_audio":
                # other families' config.audio_token_index is their <|AUDIO|> id, not the end of the text vocabulary
                raise ValueError("HFRolloutEngine needs first_banned_id (len(tokenizer)) for this model family")
            first_banned = model.config.audio_token_index
        distribution = self.sampling.distribution(first_banned, self.audio_marker_ids)
        sampler = DistributionSampler(distribution, seeds, device, greedy=not self.sampling.do_sample)
        with own_generation_config(model):
            sequences = model.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                generation_config=self.generation_config(),
                logits_processor=LogitsProcessorList([sampler]),
            )
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
        if self.sampling.return_logprobs:
            chosen = torch.stack(sampler.chosen_logprobs, dim=1)
            logprobs = [chosen[i, : len(c)].tolist() for i, c in enumerate(completions)]
        return RolloutResult(completion_ids=completions, finish_reasons=reasons, logprobs=logprobs)
