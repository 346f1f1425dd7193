"""The audio front ends, one per model family: how a clip becomes log-mel windows and how many placeholders it
fills in the prompt.

* ``covo_audio``: 24 kHz, every 30 s segment of the clip, n = ceil(10 ms frames / 16) placeholders
  (``grpo_audio.audio.covo``);
* ``qwen2_audio``: 16 kHz, the first 30 s only, ((L - 1) // 2 + 1 - 2) // 2 + 1 placeholders for L valid mel
  frames (``grpo_audio.audio.qwen2_audio``).

Each gives features with ``input_features`` (S, 128, 3000), ``n_placeholders`` and ``n_samples`` (at its own rate);
``mel_frames`` too where the model needs the valid length of its window. ``sample_rate`` is the rate
``prepare_waveform`` takes (the silence control builds its silent clip there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import covo, qwen2_audio


@dataclass(frozen=True)
class AudioFrontEnd:
    name: str
    sample_rate: int
    prepare_file: Callable[..., Any]  # (path, resampler=...) -> features
    prepare_waveform: Callable[..., Any]  # (wave at sample_rate, resampler=...) -> features
    placeholders_for_file_length: Callable[[int, int], int]  # (frames, file sample rate) -> placeholders


FRONT_ENDS = {
    "covo_audio": AudioFrontEnd(
        "covo_audio", covo.SAMPLE_RATE, covo.prepare_file, covo.prepare_waveform, covo.placeholders_for_file_length
    ),
    "qwen2_audio": AudioFrontEnd(
        "qwen2_audio",
        qwen2_audio.SAMPLE_RATE,
        qwen2_audio.prepare_file,
        qwen2_audio.prepare_waveform,
        qwen2_audio.placeholders_for_file_length,
    ),
}
COVO_FRONT_END = FRONT_ENDS["covo_audio"]

__all__ = ["COVO_FRONT_END", "FRONT_ENDS", "AudioFrontEnd"]
