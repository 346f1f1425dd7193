"""Qwen2.5-Omni's thinker (the text-generating half of Qwen2.5-Omni-7B, the base most audio-RL papers train) behind
the harness's model contract.

``OmniThinkerPolicy`` is transformers' ``Qwen2_5OmniThinkerForConditionalGeneration`` with the harness's forward
(``grpo_audio.model.window_policy``): the same modules and parameter names, so a thinker checkpoint loads into it
and a save loads back into transformers' thinker class. Audio arrives as 30 s log-mel windows, as for Qwen2-Audio
(the same Whisper feature extractor and placeholder count: ``grpo_audio.audio.qwen2_audio``).

The audio tower runs as transformers runs it (``get_audio_features``): each clip's valid frames, concatenated in
time, in windows of ``2 x n_window`` mel frames with attention inside each window, then pooling, the layer norm and
the projection to the backbone's width. The vision tower is never used (audio only) and stays frozen.

Positions: for a prompt with text and audio only, the thinker's multimodal RoPE gives every token the same position
in its three components, counting tokens one by one (``get_rope_index``), so the rotation equals plain RoPE at that
position; rows here use plain positions, relative as RoPE is (``tests/test_qwen2_5_omni.py``). Padding-free passes
hand the backbone its packed form, text positions first (4, 1, T), so that it keeps each row to itself.
"""

from __future__ import annotations

import torch
from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

from grpo_audio.model.qwen2_audio import AUDIO_BOS, AUDIO_EOS, AUDIO_SPECIAL_TOKENS, AUDIO_TOKEN  # the same tokens
from grpo_audio.model.tiny import build_seeded, tiny_backbone_config, tiny_whisper_encoder_config
from grpo_audio.model.window_policy import WindowAudioPolicy

# the thinker's vision tokens: in its vocabulary, never in an audio prompt, never sampled
VISION_TOKENS = ("<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>", "<|VIDEO|>")

# The layout of Qwen2.5-Omni's chat template as far as audio goes: a default system turn when none is given, and an
# audio part as "<|audio_bos|><|AUDIO|><|audio_eos|>", <|AUDIO|> then repeated once per frame by its processor. A
# checkpoint's tokenizer brings its own template, which is used instead.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class OmniThinkerPolicy(WindowAudioPolicy, Qwen2_5OmniThinkerForConditionalGeneration):
    """transformers' Qwen2.5-Omni thinker with the harness's forward (module docstring)."""

    config_class = Qwen2_5OmniThinkerConfig
    placeholder_name = AUDIO_TOKEN

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model

    def audio_modules(self) -> list[torch.nn.Module]:
        """The module between a clip and its spliced frames: the audio tower (its projection included)."""
        return [self.audio_tower]

    def encode_audio(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """(N, 128, F) log-mel windows with L_n valid frames each -> (N, n_max, H) frames, row n's first
        ((L_n - 1) // 2 + 1 - 2) // 2 + 1 its audio."""
        tower = self.audio_tower
        lengths = feature_lengths.to(device=input_features.device, dtype=torch.long)
        flat = torch.cat([input_features[i, :, :n] for i, n in enumerate(lengths.tolist())], dim=1)
        conv_lengths, out_lengths = tower._get_feat_extract_output_lengths(lengths)
        device = tower.conv1.weight.device
        frames = tower(flat.to(device), feature_lens=lengths.to(device), aftercnn_lens=conv_lengths.to(device))
        rows = torch.split(frames.last_hidden_state, out_lengths.tolist())
        out = rows[0].new_zeros(len(rows), max(int(n) for n in out_lengths), rows[0].size(-1))
        for i, row in enumerate(rows):
            out[i, : row.size(0)] = row
        return out

    def backbone_positions(self, position_ids: torch.Tensor | None, packed: bool) -> torch.Tensor | None:
        """Packed rows: (4, 1, T), the text positions first (the backbone builds its per-row mask from them) and the
        three RoPE components, all equal for text and audio."""
        if packed:
            return position_ids.unsqueeze(0).expand(4, *position_ids.shape)
        return position_ids


def rope_sections(head_dim: int) -> list[int]:
    """The multimodal RoPE's split of the head_dim / 2 frequencies over (time, height, width), in the 7B's
    proportions (16, 24, 24 of 64)."""
    half = head_dim // 2
    spatial = 3 * half // 8
    return [half - 2 * spatial, spatial, spatial]


def tiny_omni_thinker_config(spec, tokenizer) -> Qwen2_5OmniThinkerConfig:
    """A Qwen2.5-Omni thinker config at the widths of ``spec`` (a ``TinyModelSpec``): the audio tower at the encoder
    widths (128 mel bins, windows of 2 x 100 frames, as released), a one-block vision tower (unused), the text model
    at the backbone widths with the multimodal RoPE split, the vocabulary the tokenizer's."""
    ids = tokenizer.convert_tokens_to_ids
    head_dim = spec.hidden_size // spec.num_heads
    text = tiny_backbone_config(spec, tokenizer, len(tokenizer))
    text.pop("rope_theta")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": rope_sections(head_dim)}
    return Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            **tiny_whisper_encoder_config(spec),
            n_window=100,
            output_dim=spec.hidden_size,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=spec.hidden_size,
            fullatt_block_indexes=[0],
        ),  # fmt: skip
        text_config=text,
        audio_token_index=ids(AUDIO_TOKEN),
        audio_start_token_id=ids(AUDIO_BOS),
        audio_end_token_id=ids(AUDIO_EOS),
        image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
        vision_end_token_id=ids("<|vision_eos|>"),
    )


def build_tiny_omni_thinker(spec, tokenizer, seed: int) -> OmniThinkerPolicy:
    """A tiny Qwen2.5-Omni thinker from ``seed`` alone; the audio tower's input convolutions get He init
    (``grpo_audio.model.tiny.build_seeded``)."""
    config = tiny_omni_thinker_config(spec, tokenizer)
    return build_seeded(
        OmniThinkerPolicy, config, tokenizer, seed, lambda m: [m.audio_tower.conv1, m.audio_tower.conv2]
    )


__all__ = [
    "AUDIO_SPECIAL_TOKENS",
    "AUDIO_TOKEN",
    "CHAT_TEMPLATE",
    "VISION_TOKENS",
    "OmniThinkerPolicy",
    "build_tiny_omni_thinker",
    "rope_sections",
    "tiny_omni_thinker_config",
]
