"""The released Covo-Audio checkpoint format, as far as both the loader and the saver need it: file names, the
parameter-name mapping, the error type, and the full-size shapes.

Released layout (https://huggingface.co/tencent/Covo-Audio-Chat; Covo-Audio, arXiv 2602.09823)::

    config.json                          model_type covo_audio; nested llm_config (Qwen2) and encoder_config (Whisper)
    model.safetensors.index.json         {"metadata": {"total_size": N}, "weight_map": {name: shard file}}
    model-00001-of-0000K.safetensors     (or one model.safetensors without an index)
    tokenizer files                      Qwen2 fast tokenizer, len(tokenizer) == audio_token_index

Parameter names on disk and in our module tree (``CovoAudioForConditionalGeneration``)::

    llm.model.X          <->  model.language_model.X
    llm.lm_head.weight   <->  lm_head.weight
    encoder.X            <->  model.encoder.X
    audio_adapter.X      <->  model.audio_adapter.X

Loading is ``checkpoint_load``, saving ``checkpoint_save``; neither imports the other.
"""

from __future__ import annotations

import re

import torch

from grpo_audio.model.configuration import CovoAudioConfig
from grpo_audio.model.modeling import CovoAudioForConditionalGeneration

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# (released prefix, our prefix); the first match wins. lm_head is a full name, the others are prefixes.
NAME_MAP = (
    ("llm.model.", "model.language_model."),
    ("llm.lm_head.weight", "lm_head.weight"),
    ("encoder.", "model.encoder."),
    ("audio_adapter.", "model.audio_adapter."),
)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded (or a model that cannot be saved) as a Covo-Audio checkpoint."""

    def __init__(self, message: str) -> None:
        # One line, whatever a library's text put into it: the CLI prints it as a single "error: ..." line
        super().__init__(re.sub(r"\s*\n\s*", " ", str(message)))


def released_name(ours: str) -> str:
    """Our module name -> the released checkpoint name (``model.language_model.X`` -> ``llm.model.X``...)."""
    for theirs, mine in NAME_MAP:
        if ours.startswith(mine):
            return theirs + ours[len(mine) :]
    raise CheckpointError(f"parameter {ours!r} has no name in the released Covo-Audio format")


def our_name(released: str) -> str | None:
    """The released checkpoint name -> our module name, or None for a name outside the released layout."""
    for theirs, mine in NAME_MAP:
        if released.startswith(theirs):
            return mine + released[len(theirs) :]
    return None


def released_covo_config() -> CovoAudioConfig:
    """The full-size Covo-Audio-Chat config (Qwen2.5-7B backbone, whisper-large-v3 encoder), as released.

    Only shapes and the documented ids are set; generation ids (eos/pad) come from a real checkpoint's config.
    """
    return CovoAudioConfig(
        llm_config=dict(
            hidden_size=3584,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            intermediate_size=18944,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            vocab_size=168055,  # 151671 text ids + 16384 discrete speech tokens
            max_position_embeddings=32768,
            tie_word_embeddings=False,
        ),
        encoder_config=dict(
            d_model=1280,
            encoder_layers=32,
            encoder_attention_heads=20,
            encoder_ffn_dim=5120,
            num_mel_bins=128,
            max_source_positions=1500,
        ),
        audio_token_index=151671,
        audio_placeholder_token_id=151666,
        adapter_downsample=8,
        adapter_hidden_size=2048,
        dtype="bfloat16",
    )


def build_covo_on_meta(config: CovoAudioConfig) -> CovoAudioForConditionalGeneration:
    """The model with every parameter and buffer on the meta device: shapes and names, no memory, no init cost."""
    with torch.device("meta"):
        return CovoAudioForConditionalGeneration(config)


__all__ = [
    "CONFIG_NAME",
    "INDEX_NAME",
    "NAME_MAP",
    "SINGLE_NAME",
    "CheckpointError",
    "build_covo_on_meta",
    "our_name",
    "released_covo_config",
    "released_name",
]
