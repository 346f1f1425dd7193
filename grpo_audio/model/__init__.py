"""The Covo-Audio model (Whisper encoder + 3-layer adapter + Qwen2 backbone), its config and tokenizer."""

from grpo_audio.model.configuration import CovoAudioConfig
from grpo_audio.model.modeling import CovoAudioForConditionalGeneration, CovoAudioModel

__all__ = ["CovoAudioConfig", "CovoAudioForConditionalGeneration", "CovoAudioModel"]
