"""Covo-Audio in the transformers-5 multimodal layout, with the batched training forward the release lacks.

    CovoAudioForConditionalGeneration
      .model = CovoAudioModel            (base_model_prefix "model": returns last_hidden_state with audio spliced)
          .encoder        WhisperEncoder   (128 x 3000 log-mel -> 1500 x 1280 per 30 s segment)
          .audio_adapter  CovoAudioAdapter (3 x [Conv1d stride 2 -> ReLU -> Linear -> ReLU -> Linear]: 1500 -> 188)
          .language_model Qwen2Model
      .lm_head                           (untied from the input embeddings, as released)

The audio splice lives in ``CovoAudioModel.forward`` (the ``base_model_prefix`` module), so every path that runs the
backbone sees the audio: generation, the trainer's log-prob passes (policy, old, reference), and TRL's fused head,
which calls ``model.model(...)`` directly.

Audio arrives per batch row in one of two forms:
* ``input_features`` (B, S_max, 128, 3000) with ``audio_segment_counts`` (B,): log-mels of up to S_max 30 s
  segments per row; the encoder and adapter run inside the forward (needed when either is trained);
* ``audio_embeds`` (B, N_max, H): adapter outputs computed once and reused (frozen encoder and adapter).
Row b's first n_b frames fill its n_b ``<|cAUDIO|>`` rows in order (n_b counted from ``input_ids``); a row without
placeholders ignores its audio. Fewer frames than placeholders is an error.

The trainer's log-prob passes call the forward with ``logprob_labels`` (and the rollouts' ``sampling``
distribution): it then returns the sampled tokens' log-probs under that processed distribution
(``grpo_audio.model.sampling``: text-only mask, temperature, top-k, top-p), their entropies and the mass outside the
allowed ids, never materialising (B, T, V) logits. Going through ``forward`` keeps the DDP/FSDP/PEFT wrappers' hooks.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, Qwen2Model
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from grpo_audio.model.audio_heads import SampledTokenOutput, causal_lm_output, splice_audio_rows
from grpo_audio.model.configuration import CovoAudioConfig
from grpo_audio.model.sampling import SamplingDistribution


class CovoAudioDownsampleLayer(nn.Module):
    """Halves the frame rate: Conv1d(C, C, 3, stride 2, pad 1) over time -> ReLU -> Linear(C, D) -> ReLU ->
    Linear(D, C_out). Parameter names (conv1d, linear1, linear2) are the released ones."""

    def __init__(self, channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.linear1 = nn.Linear(channels, hidden)
        self.linear2 = nn.Linear(hidden, out_channels)
        for layer in (self.conv1d, self.linear1, self.linear2):
            layer._fan_in_init = True  # see grpo_audio.model.tiny.build_tiny_model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, ceil(T/2), C_out)
        x = self.conv1d(frames.transpose(1, 2)).transpose(1, 2)
        x = self.linear1(torch.relu(x))
        return self.linear2(torch.relu(x))


class CovoAudioAdapter(nn.Module):
    """50 Hz encoder frames (C = encoder d_model) -> 6.25 Hz LLM-sized features (1500 -> 750 -> 375 -> 188)."""

    def __init__(self, config: CovoAudioConfig) -> None:
        super().__init__()
        channels = config.encoder_config.d_model
        outs = [channels, channels, config.llm_config.hidden_size]
        self.downsample_layers = nn.ModuleList(
            CovoAudioDownsampleLayer(channels, config.adapter_hidden_size, out) for out in outs
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        for layer in self.downsample_layers:
            frames = layer(frames)
        return frames


class CovoAudioPreTrainedModel(PreTrainedModel):
    config_class = CovoAudioConfig
    config: CovoAudioConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["WhisperEncoderLayer", "Qwen2DecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _skip_keys_device_placement = "past_key_values"
    input_modalities = ("audio", "text")

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.llm_config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class CovoAudioModel(CovoAudioPreTrainedModel):
    def __init__(self, config: CovoAudioConfig) -> None:
        super().__init__(config)
        self.encoder = WhisperEncoder(config.encoder_config)
        # Fan-in init (see grpo_audio.model.tiny.build_tiny_model) for the encoder's input convolutions too
        self.encoder.conv1._fan_in_init = True
        self.encoder.conv2._fan_in_init = True
        self.audio_adapter = CovoAudioAdapter(config)
        self.language_model = Qwen2Model(config.llm_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def encode_segments(self, input_features: torch.Tensor) -> torch.Tensor:
        """(S, n_mels, 3000) log-mel segments -> (S, 188, H) adapter features, one encoder call for all S."""
        dtype = next(self.encoder.parameters()).dtype
        hidden = self.encoder(input_features.to(dtype)).last_hidden_state
        return self.audio_adapter(hidden)

    def embed_audio_rows(self, input_features: torch.Tensor, audio_segment_counts: torch.Tensor) -> torch.Tensor:
        """Per-row features (B, S_max * 188, H): the row's segments concatenated in time, zero beyond its length.

        All valid segments of the batch go through the encoder in one call (clips of different lengths batch).
        """
        batch, s_max = input_features.shape[:2]
        counts = audio_segment_counts.to(torch.long).tolist()
        valid = [input_features[b, :n] for b, n in enumerate(counts) if n > 0]
        hidden = self.config.llm_config.hidden_size
        if not valid:
            return input_features.new_zeros(batch, 0, hidden)
        encoded = self.encode_segments(torch.cat(valid))  # (sum S_b, 188, H)
        frames_per_segment = encoded.size(1)
        out = encoded.new_zeros(batch, s_max * frames_per_segment, hidden)
        offset = 0
        for b, n in enumerate(counts):
            if n > 0:
                out[b, : n * frames_per_segment] = encoded[offset : offset + n].reshape(-1, hidden)
                offset += n
        return out

    def splice_audio(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        audio_embeds: torch.Tensor,
        packed_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Replace each row's ``<|cAUDIO|>`` embeddings by that row's first n_b audio frames, in order. With
        ``packed_lengths`` the one token row holds several rows end to end, ``packed_lengths[b]`` tokens each, and
        ``audio_embeds`` has one row per packed row (``grpo_audio.model.audio_heads.splice_audio_rows``)."""
        placeholder_id = self.config.audio_placeholder_token_id
        return splice_audio_rows(input_ids, inputs_embeds, audio_embeds, placeholder_id, "<|cAUDIO|>", packed_lengths)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_segment_counts: torch.LongTensor | None = None,
        audio_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        packed_lengths: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """The backbone's hidden states, with each row's audio at its placeholders. ``packed_lengths`` (R,): the one
        token row holds R rows end to end (padding-free; give ``position_ids`` restarting per row and no attention
        mask: ``grpo_audio.train.token_budget.pack_tokens``); the audio inputs keep one row per packed row."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if packed_lengths is not None and (attention_mask is not None or position_ids is None):
            # with a mask, or without positions that restart, attention would reach across the packed rows
            raise ValueError("packed_lengths needs position_ids restarting at each row and no attention_mask")
        if input_features is not None and audio_embeds is not None:
            raise ValueError("give either input_features or audio_embeds, not both")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if input_features is not None:
                if audio_segment_counts is None:
                    raise ValueError("input_features needs audio_segment_counts (segments per row)")
                audio_embeds = self.embed_audio_rows(input_features, audio_segment_counts)
            if audio_embeds is not None:
                inputs_embeds = self.splice_audio(input_ids, inputs_embeds, audio_embeds, packed_lengths)
            elif (input_ids == self.config.audio_placeholder_token_id).any():
                raise ValueError("input_ids contain <|cAUDIO|> placeholders but no audio was given")
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )


class CovoAudioForConditionalGeneration(CovoAudioPreTrainedModel, GenerationMixin):
    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: CovoAudioConfig) -> None:
        super().__init__(config)
        self.model = CovoAudioModel(config)
        self.lm_head = nn.Linear(config.llm_config.hidden_size, config.llm_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_segment_counts: torch.LongTensor | None = None,
        audio_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        logprob_labels: torch.LongTensor | None = None,
        sampling: SamplingDistribution | None = None,
        logprob_entropy: bool = False,
        logprob_outside_mass: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast | SampledTokenOutput:
        """The usual causal-LM forward; with ``logprob_labels`` (B, T) (token ids, -100 where not scored) the
        sampled-token log-probs under ``sampling`` instead (``SampledTokenOutput``; ``logprob_entropy`` adds the
        entropies, ``logprob_outside_mass`` the mass on banned ids)."""
        if logprob_labels is not None:
            use_cache = False
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            input_features=input_features,
            audio_segment_counts=audio_segment_counts,
            audio_embeds=audio_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        vocab_size = self.config.llm_config.vocab_size
        return causal_lm_output(
            self, outputs, vocab_size, logits_to_keep, labels, logprob_labels, sampling, logprob_entropy,
            logprob_outside_mass,
        )  # fmt: skip

    @property
    def backbone(self) -> nn.Module:
        """The Qwen2 text model the spliced embeddings go through."""
        return self.model.language_model

    def audio_modules(self) -> list[nn.Module]:
        """The modules between a clip and its spliced frames: the Whisper encoder and the adapter."""
        return [self.model.encoder, self.model.audio_adapter]

    def clip_audio_embeds(self, features) -> torch.Tensor:
        """(n_placeholders, H) frames of one clip (``grpo_audio.audio.covo.CovoAudioFeatures``): its segments in one
        encoder call, concatenated in time, the first n kept."""
        device = self.model.encoder.conv1.weight.device
        encoded = self.model.encode_segments(features.input_features.to(device))  # (S, 188, H)
        return encoded.reshape(-1, encoded.size(-1))[: features.n_placeholders]

    @torch.no_grad()
    def prompt_embeddings(
        self,
        input_ids: torch.Tensor,
        *,
        input_features: torch.Tensor | None = None,
        audio_segment_counts: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the audio spliced in: what both rollout engines consume (vLLM route A)."""
        embeds = self.get_input_embeddings()(input_ids)
        if input_features is not None:
            audio_embeds = self.model.embed_audio_rows(input_features, audio_segment_counts)
        if audio_embeds is not None:
            embeds = self.model.splice_audio(input_ids, embeds, audio_embeds)
        return embeds
