"""Qwen2-Audio's audio front end, as its processor computes it (transformers ``Qwen2AudioProcessor``).

A clip goes through these steps:

1. load, average the channels to mono, resample to 16 kHz                                     (``prepare_file``)
2. keep the first 30 s (480,000 samples): the processor's feature extractor pads and truncates to one window
3. Whisper log-mel of the window, zero-padded to 480,000 samples: (128, 3000)                    (``log_mel``)
4. mel frames L = ceil(n / 160) for the n samples kept (the feature extractor's attention mask, one flag per hop)
5. placeholders = ((L - 1) // 2 + 1 - 2) // 2 + 1: the encoder's stride-2 convolution, then its stride-2 average
   pooling (``Qwen2AudioEncoder._get_feat_extract_output_lengths``); 30 s -> 3000 -> 1500 -> 750; 1 s -> 25

The model runs its audio tower on the whole window with attention limited to the first ``(L - 1) // 2 + 1``
positions and keeps the first ``placeholders`` outputs, one per ``<|AUDIO|>`` in the prompt. Audio past 30 s is not
seen, as with the processor (the released model's own limit).

The log-mel is the one Covo-Audio's front end computes per segment (``grpo_audio.audio.covo.log_mel_batch``: the
same Whisper feature extractor with 128 bins, spelled out there); the clip is resampled straight to 16 kHz here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .covo import ENCODER_SAMPLE_RATE, ENCODER_SEGMENT_SAMPLES, HOP_LENGTH, whisper_log_mel
from .io import AudioLoadError, load_audio
from .resample import DEFAULT_RESAMPLER

SAMPLE_RATE = ENCODER_SAMPLE_RATE  # 16 kHz: clips are resampled to this rate directly
WINDOW_SAMPLES = ENCODER_SEGMENT_SAMPLES  # 480,000: 30 s, the one window the model sees
MAX_MEL_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 3000


def mel_frames(n_samples: int) -> int:
    """Valid mel frames of a clip of ``n_samples`` 16 kHz samples: ceil(min(n, 480000) / 160)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    return -(-min(int(n_samples), WINDOW_SAMPLES) // HOP_LENGTH)


def placeholder_count(frames: int) -> int:
    """``<|AUDIO|>`` placeholders for ``frames`` valid mel frames: ((L - 1) // 2 + 1 - 2) // 2 + 1."""
    return ((int(frames) - 1) // 2 + 1 - 2) // 2 + 1


def placeholders_for_file_length(frames: int, file_sample_rate: int) -> int:
    """Placeholder count of a decoded clip from its length alone: ``load_audio`` returns ceil(frames * 16000 /
    file rate) samples at 16 kHz."""
    n_16k = -(-int(frames) * SAMPLE_RATE // int(file_sample_rate))
    return placeholder_count(mel_frames(n_16k))


@dataclass
class WindowFeatures:
    """What the model needs from one clip.

    input_features: float32 (1, 128, 3000), the log-mel of the clip's first 30 s (one window: the first dimension
    is the segment, as in ``CovoAudioFeatures``, so both front ends batch alike).
    n_placeholders: ``<|AUDIO|>`` tokens in the prompt and encoder frames kept.
    mel_frames: valid mel frames L (<= 3000).
    n_samples: clip length at 16 kHz before truncation; duration_s: the same in seconds.
    """

    input_features: torch.Tensor
    n_placeholders: int
    mel_frames: int
    n_samples: int
    duration_s: float


def prepare_waveform(wave_16k: np.ndarray, resampler: str = DEFAULT_RESAMPLER) -> WindowFeatures:
    """Features for a mono waveform already at 16 kHz (``resampler`` is unused: kept for the front ends' common
    signature). Raises ValueError for a waveform that is not 1-D, empty, or holds NaN/inf."""
    wave = np.asarray(wave_16k, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D mono waveform, got shape {wave.shape}")
    if wave.shape[0] == 0:
        raise ValueError("cannot compute features of an empty waveform")
    if not np.isfinite(wave).all():
        raise ValueError("waveform holds NaN or infinite samples")
    features = whisper_log_mel([wave[:WINDOW_SAMPLES]])  # (1, 128, 3000)
    frames = mel_frames(wave.shape[0])
    return WindowFeatures(
        input_features=features,
        n_placeholders=placeholder_count(frames),
        mel_frames=frames,
        n_samples=int(wave.shape[0]),
        duration_s=wave.shape[0] / SAMPLE_RATE,
    )


def prepare_file(path: str | os.PathLike, resampler: str = DEFAULT_RESAMPLER) -> WindowFeatures:
    """``load_audio(path, 16000, resampler)`` then ``prepare_waveform``. Raises AudioLoadError naming the file for a
    bad file, including one under one hop (10 ms)."""
    wave = load_audio(path, SAMPLE_RATE, resampler)
    if wave.shape[0] < HOP_LENGTH:
        raise AudioLoadError(path, f"too short: {wave.shape[0]} samples at 16 kHz, under one 10 ms hop")
    return prepare_waveform(wave)


__all__ = [
    "MAX_MEL_FRAMES",
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "WindowFeatures",
    "mel_frames",
    "placeholder_count",
    "placeholders_for_file_length",
    "prepare_file",
    "prepare_waveform",
]
