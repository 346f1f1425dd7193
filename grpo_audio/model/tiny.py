"""The embedded default model: a tiny Covo-Audio (same architecture and parameter names, tiny widths).

Built in process, never downloaded. Initialisation is deterministic: the weights depend only on the spec and the
seed (``torch.Generator`` state is saved and restored around the build so the caller's RNG is untouched).
"""

from __future__ import annotations

import torch

from grpo_audio.model.configuration import CovoAudioConfig
from grpo_audio.model.modeling import CovoAudioForConditionalGeneration
from grpo_audio.model.tokenizer import AUDIO_PLACEHOLDER, build_tiny_tokenizer
from grpo_audio.recipe.schema import TinyModelSpec


def tiny_backbone_config(spec: TinyModelSpec, tokenizer, vocab_size: int) -> dict:
    """The Qwen2 backbone's config fields at the widths of ``spec`` (every family's tiny model uses it): an untied
    LM head, RoPE base 1e6 and RMS-norm epsilon 1e-6 as released, no BOS, the tokenizer's EOS and pad."""
    return dict(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_whisper_encoder_config(spec: TinyModelSpec) -> dict:
    """The Whisper-style audio encoder's config fields at the encoder widths of ``spec`` (every family's tiny model
    uses them): 128 mel bins and 1500 positions (30 s at 50 frames per second) as Whisper-large-v3 has them."""
    return dict(
        d_model=spec.encoder_d_model,
        encoder_layers=spec.encoder_layers,
        encoder_attention_heads=spec.encoder_heads,
        encoder_ffn_dim=spec.encoder_ffn_dim,
        num_mel_bins=128,
        max_source_positions=1500,
    )


def tiny_config(spec: TinyModelSpec, tokenizer) -> CovoAudioConfig:
    text_vocab = len(tokenizer)
    return CovoAudioConfig(
        llm_config=tiny_backbone_config(spec, tokenizer, text_vocab + spec.speech_vocab_size),
        encoder_config=dict(
            **tiny_whisper_encoder_config(spec),
            decoder_layers=1,
            decoder_attention_heads=spec.encoder_heads,
            decoder_ffn_dim=spec.encoder_ffn_dim,
        ),
        audio_token_index=text_vocab,
        audio_placeholder_token_id=tokenizer.convert_tokens_to_ids(AUDIO_PLACEHOLDER),
        adapter_hidden_size=spec.adapter_hidden_size,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_seeded(model_class, config, tokenizer, seed: int, audio_path_layers):
    """``model_class(config)`` initialised from ``seed`` alone (the caller's random state is left as it was), with
    He init (std sqrt(2 / fan_in), zero bias) instead of N(0, 0.02) for ``audio_path_layers(model)``: at 0.02 the
    audio encoder's mel convolutions are drowned by its sinusoidal positions (and Covo-Audio's adapter's nine
    stacked layers shrink what is left by orders of magnitude), so a freshly built model would be deaf (clips would
    differ by ~1e-5 in the spliced features). The generation config stops at the tokenizer's EOS, pads with its pad."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        for module in audio_path_layers(model):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.zeros_(module.bias)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def build_tiny_model(spec: TinyModelSpec, tokenizer, seed: int) -> CovoAudioForConditionalGeneration:
    """The tiny Covo-Audio; the layers marked ``_fan_in_init`` (the encoder's convolutions, the adapter) get He init
    (``build_seeded``)."""
    config = tiny_config(spec, tokenizer)

    def marked(model):
        return [m for m in model.modules() if getattr(m, "_fan_in_init", False)]

    return build_seeded(CovoAudioForConditionalGeneration, config, tokenizer, seed, marked)


def tiny_tokenizer_corpus(texts: list[str]) -> list[str]:
    """Corpus for the tiny BPE: the run's prompt and answer texts plus the reasoning tags, repeated for weight."""
    tags = ["<think>", "</think>", "<answer>", "</answer>", "<think>\n", "\n</think>\n"]
    return list(texts) + tags * 8


__all__ = [
    "build_seeded",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "tiny_backbone_config",
    "tiny_config",
    "tiny_tokenizer_corpus",
]
