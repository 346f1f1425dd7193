"""Qwen2-Audio (Qwen2-Audio-7B-Instruct, R1-AQA's and Audio-Thinker's base) behind the harness's model contract.

``Qwen2AudioPolicy`` is transformers' ``Qwen2AudioForConditionalGeneration`` with the harness's forward
(``grpo_audio.model.window_policy``): the same modules and parameter names, so a released checkpoint loads into it
and a save loads back into transformers' class. Its windows are (1, 128, 3000): 30 s, as its processor cuts them.

The audio tower runs as transformers runs it: the whole 3000-frame window, with bidirectional attention limited to
the first (L_b - 1) // 2 + 1 positions after its stride-2 convolution, then average pooling, the layer norm and the
projector (``Qwen2AudioModel.forward``); the same inputs give the same logits as transformers' class fed by its
processor (``tests/test_qwen2_audio.py``).
"""

from __future__ import annotations

import torch
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration
from transformers.masking_utils import create_bidirectional_mask

from grpo_audio.model.tiny import build_seeded, tiny_backbone_config, tiny_whisper_encoder_config
from grpo_audio.model.window_policy import WindowAudioPolicy

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


class Qwen2AudioPolicy(WindowAudioPolicy, Qwen2AudioForConditionalGeneration):
    """transformers' Qwen2-Audio with the harness's forward (module docstring; ``grpo_audio.model.window_policy``)."""

    config_class = Qwen2AudioConfig
    placeholder_name = AUDIO_TOKEN

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model.language_model

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


def tiny_qwen2_audio_config(spec, tokenizer) -> Qwen2AudioConfig:
    """A Qwen2-Audio config at the widths of ``spec`` (a ``TinyModelSpec``): the audio tower at the encoder widths
    (128 mel bins, 1500 positions, as released), the Qwen2 text model at the backbone widths, the vocabulary the
    tokenizer's (no speech ids)."""
    return Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder",
            **tiny_whisper_encoder_config(spec),
        ),
        text_config=dict(model_type="qwen2", **tiny_backbone_config(spec, tokenizer, len(tokenizer))),
        audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
    )


def build_tiny_qwen2_audio(spec, tokenizer, seed: int) -> Qwen2AudioPolicy:
    """A tiny Qwen2-Audio from ``seed`` alone; the audio tower's input convolutions get He init
    (``grpo_audio.model.tiny.build_seeded``)."""
    config = tiny_qwen2_audio_config(spec, tokenizer)
    towers = lambda m: [m.model.audio_tower.conv1, m.model.audio_tower.conv2]  # noqa: E731
    return build_seeded(Qwen2AudioPolicy, config, tokenizer, seed, towers)


__all__ = [
    "AUDIO_SPECIAL_TOKENS",
    "AUDIO_TOKEN",
    "CHAT_TEMPLATE",
    "Qwen2AudioPolicy",
    "build_tiny_qwen2_audio",
    "tiny_qwen2_audio_config",
]
