"""The Covo-Audio model (Whisper encoder + 3-layer adapter + Qwen2 backbone), its config and tokenizer."""

from transformers import AutoConfig, AutoModelForCausalLM

from grpo_audio.model.configuration import CovoAudioConfig
from grpo_audio.model.modeling import CovoAudioForConditionalGeneration, CovoAudioModel

# Registered so that transformers' Auto classes resolve a local covo_audio directory without remote code.
AutoConfig.register("covo_audio", CovoAudioConfig, exist_ok=True)
AutoModelForCausalLM.register(CovoAudioConfig, CovoAudioForConditionalGeneration, exist_ok=True)

__all__ = ["CovoAudioConfig", "CovoAudioForConditionalGeneration", "CovoAudioModel"]
