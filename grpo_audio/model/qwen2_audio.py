"""Qwen2-Audio (Qwen2-Audio-7B-Instruct, R1-AQA's and Audio-Thinker's base) behind the harness's model contract.

``Qwen2AudioPolicy`` is transformers' ``Qwen2AudioForConditionalGeneration``, with the same modules and parameter
names (so a released checkpoint loads into it and a save loads back into transformers' class), and the forward the
harness's passes call, as ``CovoAudioForConditionalGeneration`` has it:

* audio per batch row in one of two forms: ``input_features`` (B, 1, 128, 3000), one 30 s log-mel window per row
  (the segment dimension of the Covo form, always 1 here), with ``feature_lengths`` (B,) its valid mel frames L_b;
  or ``audio_embeds`` (B, N_max, H), the projector's outputs computed once per clip (frozen audio tower);
* row b's first n_b frames fill its n_b ``<|AUDIO|>`` rows, n_b counted from ``input_ids``; the audio tower gives
  ((L_b - 1) // 2 + 1 - 2) // 2 + 1 frames, the count the processor writes into the prompt
  (``grpo_audio.audio.qwen2_audio``);
* ``logprob_labels`` (with ``sampling``) returns the sampled tokens' log-probs instead of logits
  (``grpo_audio.model.audio_heads``); ``packed_lengths`` takes several rows laid end to end in one token row.

The audio tower runs as transformers runs it: the whole 3000-frame window, with bidirectional attention limited to
the first (L_b - 1) // 2 + 1 positions after its stride-2 convolution, then average pooling, the layer norm and the
projector (``Qwen2AudioModel.forward``); the same inputs give the same logits as transformers' class fed by its
processor (``tests/test_qwen2_audio.py``).
"""

from __future__ import annotations

import torch
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

from grpo_audio.model.audio_heads import SampledTokenOutput, causal_lm_output, splice_audio_rows
from grpo_audio.model.sampling import SamplingDistribution
from grpo_audio.model.tiny import tiny_backbone_config

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
AUDIO_SPECIAL_TOKENS = (AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS)

# The layout of Qwen2-Audio-7B-Instruct's chat template (transformers' Qwen2AudioProcessor.default_chat_template,
# kept there for checkpoints whose hub config lacks one): a default system turn when none is given, and each audio
# part as "Audio k: <|audio_bos|><|AUDIO|><|audio_eos|>\n"; the processor then repeats <|AUDIO|> once per frame.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen2AudioPolicy(Qwen2AudioForConditionalGeneration):
    """transformers' Qwen2-Audio with the harness's forward (module docstring)."""

    config_class = Qwen2AudioConfig

    def audio_modules(self) -> list[torch.nn.Module]:
        """The modules between a clip and its spliced frames: the audio tower and the projector."""
        return [self.model.audio_tower, self.model.multi_modal_projector]

    def encode_audio(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """(N, 128, 3000) log-mel windows with L_n valid frames each -> (N, 750, H) projected frames; row n's first
        ((L_n - 1) // 2 + 1 - 2) // 2 + 1 are its audio."""
        tower = self.model.audio_tower
        conv_lengths, _ = tower._get_feat_extract_output_lengths(feature_lengths.to(torch.long))
        positions = (input_features.size(-1) - 2) // 2 + 1  # after the stride-2 convolution: 1500
        valid = torch.arange(positions, device=conv_lengths.device)[None, :] < conv_lengths[:, None]
        dummy = torch.zeros(valid.size(0), positions, 1, dtype=self.dtype, device=input_features.device)
        mask = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=valid.long())
        hidden = tower(input_features.to(tower.conv1.weight.device), attention_mask=mask).last_hidden_state
        return self.model.multi_modal_projector(hidden)

    def embed_audio_rows(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Per-row frames (B, 750, H) from the rows' windows (B, 1, 128, 3000) or (B, 128, 3000)."""
        if input_features.dim() == 4:
            if input_features.size(1) != 1:
                raise ValueError(f"Qwen2-Audio takes one 30 s window per row, got {input_features.size(1)}")
            input_features = input_features[:, 0]
        if feature_lengths is None:
            raise ValueError("input_features needs feature_lengths (valid mel frames per row)")
        return self.encode_audio(input_features, feature_lengths)

    def clip_audio_embeds(self, features) -> torch.Tensor:
        """(n_placeholders, H) frames of one clip (``grpo_audio.audio.qwen2_audio.WindowFeatures``), encoded alone."""
        device = self.model.audio_tower.conv1.weight.device
        lengths = torch.tensor([features.mel_frames], device=device)
        return self.encode_audio(features.input_features.to(device), lengths)[0, : features.n_placeholders]

    def splice(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        input_features: torch.Tensor | None,
        feature_lengths: torch.Tensor | None,
        audio_embeds: torch.Tensor | None,
        packed_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_features is not None and audio_embeds is not None:
            raise ValueError("give either input_features or audio_embeds, not both")
        if input_features is not None:
            audio_embeds = self.embed_audio_rows(input_features, feature_lengths)
        if audio_embeds is not None:
            audio_id = self.config.audio_token_index
            return splice_audio_rows(input_ids, inputs_embeds, audio_embeds, audio_id, AUDIO_TOKEN, packed_lengths)
        if (input_ids == self.config.audio_token_index).any():
            raise ValueError(f"input_ids contain {AUDIO_TOKEN} placeholders but no audio was given")
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        feature_lengths: torch.LongTensor | None = None,
        audio_segment_counts: torch.LongTensor | None = None,
        audio_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        logprob_labels: torch.LongTensor | None = None,
        sampling: SamplingDistribution | None = None,
        logprob_entropy: bool = False,
        logprob_outside_mass: bool = False,
        packed_lengths: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | SampledTokenOutput:
        """Logits (or, with ``logprob_labels``, the sampled tokens' log-probs) with each row's audio spliced in.
        ``audio_segment_counts`` (the Covo form's segments per row) must be all ones when given."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if packed_lengths is not None and (attention_mask is not None or position_ids is None):
            raise ValueError("packed_lengths needs position_ids restarting at each row and no attention_mask")
        if audio_segment_counts is not None and bool((audio_segment_counts > 1).any()):
            raise ValueError("Qwen2-Audio takes one 30 s window per row; a row has more segments")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            inputs_embeds = self.splice(
                input_ids, inputs_embeds, input_features, feature_lengths, audio_embeds, packed_lengths
            )
        if logprob_labels is not None:
            use_cache = False
        outputs = self.model.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        vocab_size = self.config.text_config.vocab_size
        return causal_lm_output(
            self, outputs, vocab_size, logits_to_keep, labels, logprob_labels, sampling, logprob_entropy,
            logprob_outside_mass,
        )  # fmt: skip

    @torch.no_grad()
    def prompt_embeddings(
        self,
        input_ids: torch.Tensor,
        *,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        audio_segment_counts: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the audio spliced in: what both rollout engines consume."""
        embeds = self.get_input_embeddings()(input_ids)
        return self.splice(input_ids, embeds, input_features, feature_lengths, audio_embeds)


def tiny_qwen2_audio_config(spec, tokenizer) -> Qwen2AudioConfig:
    """A Qwen2-Audio config at the widths of ``spec`` (a ``TinyModelSpec``): the audio tower at the encoder widths
    (128 mel bins, 1500 positions, as released), the Qwen2 text model at the backbone widths, the vocabulary the
    tokenizer's (no speech ids)."""
    return Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder",
            d_model=spec.encoder_d_model,
            encoder_layers=spec.encoder_layers,
            encoder_attention_heads=spec.encoder_heads,
            encoder_ffn_dim=spec.encoder_ffn_dim,
            num_mel_bins=128,
            max_source_positions=1500,
        ),
        text_config=dict(model_type="qwen2", **tiny_backbone_config(spec, tokenizer, len(tokenizer))),
        audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
    )


def build_tiny_qwen2_audio(spec, tokenizer, seed: int) -> Qwen2AudioPolicy:
    """A tiny Qwen2-Audio, initialised from ``seed`` alone (the caller's random state is left as it was). The audio
    tower's two input convolutions get He init (std sqrt(2 / fan_in)), as the tiny Covo model's audio path does: at
    N(0, 0.02) their output is small beside the position embeddings and clips would barely differ."""
    config = tiny_qwen2_audio_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2AudioPolicy(config)
        for conv in (model.model.audio_tower.conv1, model.model.audio_tower.conv2):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            torch.nn.init.zeros_(conv.bias)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


__all__ = [
    "AUDIO_SPECIAL_TOKENS",
    "AUDIO_TOKEN",
    "CHAT_TEMPLATE",
    "Qwen2AudioPolicy",
    "build_tiny_qwen2_audio",
    "tiny_qwen2_audio_config",
]
