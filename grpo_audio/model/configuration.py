"""``CovoAudioConfig``: the nested ``config.json`` of the released Covo-Audio checkpoints.

Released layout: ``model_type: covo_audio`` with a Qwen2 ``llm_config`` and a Whisper ``encoder_config``, plus
``audio_token_index`` (151671: the first discrete speech-token id, equal to ``len(tokenizer)``) and
``adapter_downsample`` (8: 50 Hz encoder frames -> 6.25 Hz features through three stride-2 convolutions).
Serialisation in the release also writes ``_llm_config_type`` / ``_encoder_config_type`` next to the sub-configs
(each sub-config's ``model_type``: ``"qwen2"``, ``"whisper"``); they are accepted and ignored on load and written back
the same way on save.

Fields added by grpo-audio (absent from the release, given defaults equal to the released model):
``audio_placeholder_token_id`` (``<|cAUDIO|>`` = 151666) and ``adapter_hidden_size`` (2048).
"""

from __future__ import annotations

from dataclasses import field

from transformers import AutoConfig, PreTrainedConfig, Qwen2Config, WhisperConfig


class CovoAudioConfig(PreTrainedConfig):
    model_type = "covo_audio"
    sub_configs = {"llm_config": AutoConfig, "encoder_config": AutoConfig}

    llm_config: dict | PreTrainedConfig | None = None
    encoder_config: dict | PreTrainedConfig | None = None
    audio_token_index: int = 151671
    audio_placeholder_token_id: int = 151666
    adapter_downsample: int = 8
    adapter_hidden_size: int = 2048
    tie_word_embeddings: bool = False
    # No remote code, ever; present (as None) because TRL reads it when it rebuilds a reference model.
    auto_map: dict = field(default_factory=dict)

    def __post_init__(self, **kwargs):
        # Type tags written by the released serialiser; the sub-config dicts carry their own model_type.
        kwargs.pop("_llm_config_type", None)
        kwargs.pop("_encoder_config_type", None)
        if isinstance(self.llm_config, dict):
            self.llm_config = Qwen2Config(**{k: v for k, v in self.llm_config.items() if k != "model_type"})
        elif self.llm_config is None:
            self.llm_config = Qwen2Config()
        if isinstance(self.encoder_config, dict):
            self.encoder_config = WhisperConfig(**{k: v for k, v in self.encoder_config.items() if k != "model_type"})
        elif self.encoder_config is None:
            self.encoder_config = WhisperConfig(num_mel_bins=128)
        if self.adapter_downsample != 8:
            raise ValueError(
                f"adapter_downsample={self.adapter_downsample}: the Covo-Audio adapter has three stride-2 layers, "
                "so only 8 is supported"
            )
        super().__post_init__(**kwargs)

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The Qwen2 backbone's config: vocabulary, hidden size and generation defaults live there."""
        return self.llm_config

    @property
    def text_vocab_size(self) -> int:
        """Ids below this are text tokens; ids at or above it are discrete speech tokens."""
        return self.audio_token_index

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["_llm_config_type"] = self.llm_config.model_type  # as the released serialiser tags them
        output["_encoder_config_type"] = self.encoder_config.model_type
        if not output.get("auto_map"):
            output.pop("auto_map", None)
        return output
