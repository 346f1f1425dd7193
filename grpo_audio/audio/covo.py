"""Covo-Audio's audio preprocessing, reproduced from the inference code released with tencent/Covo-Audio-Chat.

A clip goes through these steps (sample counts are at 24 kHz unless said otherwise):

1. load, average the channels to mono, resample to SAMPLE_RATE = 24 kHz                      (`load_audio`)
2. trim to a multiple of 240 samples (one 10 ms frame), then zero-pad to a multiple of 480    (`trim_and_pad`)
3. placeholder count n = ceil-halve(n_samples * 100 // 24000) four times                      (`placeholder_count`)
4. split into 30 s segments of 720,000 samples; the last may be shorter                       (`split_segments`)
5. per segment: resample to 16 kHz, pad/trim to 480,000 samples, Whisper log-mel (128, 3000)  (`log_mel`)

The model side then runs the Whisper encoder (3000 mel frames -> 1500) and the adapter (three stride-2 convs,
1500 -> 750 -> 375 -> 188) on every segment, concatenates the segments' 188-frame outputs and keeps the first n
frames, one per `<|cAUDIO|>` placeholder.

Invariant (proved here, tested in tests/test_covo_preprocessing.py): n <= 188 * S for S segments, so the first n
frames always exist. With n_samples = 720000 (S - 1) + r, 0 < r <= 720000, the frame count is
3000 (S - 1) + r // 240 <= 3000 S; four ceil-halvings equal one ceil(x / 16); ceil(3000 S / 16) = ceil(187.5 S)
<= 188 S. n = 188 S is reached only with S = 1 (clips of 29.92 s to 30 s); for S >= 2, n <= ceil(187.5 S) < 188 S.

Resampling (file -> 24 kHz, and 24 -> 16 kHz per segment) is the release's: torchaudio's Hann-windowed sinc
(6 zero crossings, rolloff 0.99), reimplemented in `grpo_audio.audio.resample` because torchaudio's PyPI wheels do
not import on CPU-only torch. ``resampler="soxr"`` (recipe ``data.resampler``) selects soxr "HQ" instead, the
harness's earlier choice: same output lengths (ceil(n * new / old); exactly 2/3 for our segments), so n_samples,
placeholder counts and segment boundaries are the same, but the mel values are not (soxr's anti-aliasing filter
starts cutting below the sinc's 7.92 kHz, so the 6-8 kHz mel bins differ by up to about 0.8).

Deviations from the release (Tencent/Covo-Audio, covoaudio/modeling_covo_audio.py), all deliberate:
- Channels: the release averages two-channel files only and mishandles other counts; we average any count.
- Precision and batching: the release casts the log-mel to bfloat16 and handles one clip per call; we return
  float32 (cast at the model) and push the segments of any number of clips through one batched STFT.
"""

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from .io import AudioLoadError, load_audio
from .resample import DEFAULT_RESAMPLER, RESAMPLERS, resample

__all__ = [
    "ENCODER_SAMPLE_RATE",
    "ENCODER_SEGMENT_SAMPLES",
    "N_MELS",
    "N_MEL_FRAMES",
    "PLACEHOLDERS_PER_SEGMENT",
    "SAMPLE_RATE",
    "SEGMENT_SAMPLES",
    "SEGMENT_SECONDS",
    "CovoAudioFeatures",
    "log_mel",
    "log_mel_batch",
    "placeholder_count",
    "prepare_file",
    "prepare_waveform",
    "segment_count",
    "split_segments",
    "trim_and_pad",
    "whisper_feature_extractor",
    "whisper_log_mel",
]

SAMPLE_RATE = 24000  # Hz, the rate every clip is brought to first
ENCODER_SAMPLE_RATE = 16000  # Hz, the Whisper encoder's input rate
SEGMENT_SECONDS = 30  # the Whisper encoder sees exactly 30 s at a time
SEGMENT_SAMPLES = SEGMENT_SECONDS * SAMPLE_RATE  # 720,000 samples at 24 kHz
ENCODER_SEGMENT_SAMPLES = SEGMENT_SECONDS * ENCODER_SAMPLE_RATE  # 480,000 samples at 16 kHz
N_MELS = 128  # whisper-large-v3 mel bins
N_FFT = 400  # 25 ms window at 16 kHz
HOP_LENGTH = 160  # 10 ms hop at 16 kHz -> 100 mel frames per second
N_MEL_FRAMES = ENCODER_SEGMENT_SAMPLES // HOP_LENGTH  # 3000; the encoder accepts exactly this many
PLACEHOLDERS_PER_SEGMENT = 188  # 3000 frames after four ceil-halvings: 1500, 750, 375, 188

FRAME_SAMPLES = SAMPLE_RATE // 100  # 240: one 10 ms frame at 24 kHz
PAD_MULTIPLE = 2 * FRAME_SAMPLES  # 480: the release pads to whole pairs of frames
N_DOWNSAMPLINGS = 4  # Whisper conv2 (stride 2) + the adapter's three stride-2 convs


def trim_and_pad(wave: np.ndarray) -> np.ndarray:
    """Trim a 24 kHz mono waveform to a multiple of 240 samples, then zero-pad it to a multiple of 480.

    Length: n -> m = 240 * (n // 240), then 480 * ceil(m / 480) (m or m + 240). A clip under 240 samples
    (10 ms) becomes empty. Returns a new float32 array.
    """
    wave = _as_mono(wave)
    trimmed_len = (wave.shape[0] // FRAME_SAMPLES) * FRAME_SAMPLES
    out = np.zeros(padded_length(wave.shape[0]), dtype=np.float32)
    out[:trimmed_len] = wave[:trimmed_len]
    return out


def padded_length(n: int) -> int:
    """Length of ``trim_and_pad`` of an n-sample clip: 480 * ceil((240 * (n // 240)) / 480)."""
    trimmed = (n // FRAME_SAMPLES) * FRAME_SAMPLES
    return -(-trimmed // PAD_MULTIPLE) * PAD_MULTIPLE


def placeholders_for_file_length(frames: int, file_sample_rate: int) -> int:
    """Placeholder count of a decoded clip from its length alone, without resampling it.

    ``load_audio`` returns exactly ceil(frames * 24000 / file_sample_rate) samples at 24 kHz, so the count is
    ``placeholder_count(padded_length(that))``: equal to decoding, resampling and counting.
    """
    n_24k = -(-int(frames) * SAMPLE_RATE // int(file_sample_rate))
    return placeholder_count(padded_length(n_24k))


def placeholder_count(n_samples: int) -> int:
    """Number of `<|cAUDIO|>` placeholders (= adapter frames kept) for a clip of `n_samples` 24 kHz samples.

    `n_samples` is the length after `trim_and_pad`. n = n_samples * 100 // 24000 (10 ms frames), then n = (n + 1) // 2
    four times (each stride-2 conv with kernel 3 and padding 1 maps n frames to ceil(n / 2)); equivalently
    ceil(n / 16). 30 s -> 3000 -> 188; 60 s -> 375; 1 s -> 7.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    n = int(n_samples) * 100 // SAMPLE_RATE
    for _ in range(N_DOWNSAMPLINGS):
        n = (n + 1) // 2
    return n


def segment_count(n_samples: int) -> int:
    """Number of 30 s segments `split_segments` makes of `n_samples` 24 kHz samples: ceil(n_samples / 720000)."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    return -(-int(n_samples) // SEGMENT_SAMPLES)


def split_segments(wave: np.ndarray) -> list[np.ndarray]:
    """Split a 24 kHz mono waveform into consecutive 720,000-sample (30 s) segments; the last may be shorter.

    Segments are views into `wave`. Raises ValueError for an empty waveform.
    """
    wave = _as_mono(wave)
    if wave.shape[0] == 0:
        raise ValueError("cannot split an empty waveform into segments")
    return [wave[start : start + SEGMENT_SAMPLES] for start in range(0, wave.shape[0], SEGMENT_SAMPLES)]


@functools.lru_cache(maxsize=1)
def whisper_feature_extractor() -> WhisperFeatureExtractor:
    # WhisperFeatureExtractor's torch path is exactly the released computation: torch.stft(n_fft 400, hop 160,
    # periodic Hann window, center=True, reflect padding), |X|^2 with the last frame dropped, the 128-bin Slaney
    # filterbank from mel_filter_bank(norm="slaney", mel_scale="slaney", 0-8000 Hz), log10(clamp(x, 1e-10)), floor
    # at max - 8 taken per batch row, (x + 4) / 4. Every argument is spelled out so a change of defaults upstream
    # (dither in particular) cannot change our features.
    return WhisperFeatureExtractor(
        feature_size=N_MELS,
        sampling_rate=ENCODER_SAMPLE_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=SEGMENT_SECONDS,
        n_fft=N_FFT,
        padding_value=0.0,
        dither=0.0,
        return_attention_mask=False,
    )


def log_mel_batch(
    segments: list[np.ndarray], device: str | torch.device = "cpu", resampler: str = DEFAULT_RESAMPLER
) -> torch.Tensor:
    """Whisper log-mel features of several 24 kHz segments at once: float32 tensor (S, 128, 3000) on the CPU.

    Per segment: resample 24 kHz -> 16 kHz (``resampler``: "sinc", the release's, or "soxr"), zero-pad or trim to
    480,000 samples, then P = |STFT(x)|^2 (n_fft 400, hop 160, periodic Hann window, centered with reflect padding;
    3001 frames, the last dropped), M = F @ P with F the 128 x 201 Slaney mel filterbank, L = log10(max(M, 1e-10)),
    L = max(L, max(L) - 8) with max over that segment alone, out = (L + 4) / 4. Silence gives -1.5 everywhere;
    every segment's values span at most 2.0.

    This is `transformers.WhisperFeatureExtractor(feature_size=128)` (its torch path), which computes exactly the
    above; all segments go through one batched torch.stft. `device` is where the STFT runs ("cuda" for speed).
    """
    if len(segments) == 0:
        raise ValueError("log_mel_batch needs at least one segment")
    if resampler not in RESAMPLERS:
        raise ValueError(f"unknown resampler {resampler!r}; choose one of {', '.join(RESAMPLERS)}")
    waves_16k = []
    for i, segment in enumerate(segments):
        segment = _as_mono(segment)
        if segment.shape[0] == 0:
            raise ValueError(f"segment {i} is empty")
        # Each segment is resampled on its own, as the release does; segment lengths from `trim_and_pad` are
        # multiples of 480, so the 16 kHz length is exactly 2/3 of the 24 kHz length.
        waves_16k.append(resample(segment, SAMPLE_RATE, ENCODER_SAMPLE_RATE, resampler))
    return whisper_log_mel(waves_16k, device)


def whisper_log_mel(waves_16k: list[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, 128, 3000) float32 Whisper log-mels of N 16 kHz waveforms, each zero-padded or cut to 30 s (the
    computation ``log_mel_batch`` spells out), in one batched STFT on ``device``."""
    features = whisper_feature_extractor()(
        waves_16k,
        sampling_rate=ENCODER_SAMPLE_RATE,
        padding="max_length",
        max_length=ENCODER_SEGMENT_SAMPLES,
        truncation=True,
        do_normalize=False,
        return_attention_mask=False,
        return_tensors="pt",
        device=str(device),
    )["input_features"]
    return features.to(torch.float32)


def log_mel(
    segment_24k: np.ndarray, device: str | torch.device = "cpu", resampler: str = DEFAULT_RESAMPLER
) -> torch.Tensor:
    """Whisper log-mel features of one 24 kHz segment (at most 30 s): float32 tensor (128, 3000).

    Same computation as `log_mel_batch`, which see for the formula.
    """
    return log_mel_batch([segment_24k], device=device, resampler=resampler)[0]


@dataclass
class CovoAudioFeatures:
    """Everything the model needs from one clip.

    input_features: float32 (S, 128, 3000), one Whisper log-mel per 30 s segment.
    n_placeholders: number of `<|cAUDIO|>` tokens in the prompt and of adapter frames kept (<= 188 * S).
    n_samples: clip length at 24 kHz after `trim_and_pad`.
    duration_s: clip length in seconds before trimming and padding (input samples / 24000).
    """

    input_features: torch.Tensor
    n_placeholders: int
    n_samples: int
    duration_s: float

    @property
    def n_segments(self) -> int:
        return int(self.input_features.shape[0])


def prepare_waveform(
    wave_24k: np.ndarray, device: str | torch.device = "cpu", resampler: str = DEFAULT_RESAMPLER
) -> CovoAudioFeatures:
    """Features for a mono waveform already at 24 kHz: trim/pad, count placeholders, split, log-mel each segment
    (``resampler`` brings each segment to 16 kHz: "sinc", the release's, or "soxr").

    Raises ValueError for a waveform that is not 1-D, holds NaN/inf, or is shorter than 240 samples (10 ms).
    """
    wave = _as_mono(wave_24k)
    if not np.isfinite(wave).all():
        raise ValueError("waveform holds NaN or infinite samples")
    padded = trim_and_pad(wave)
    if padded.shape[0] == 0:
        raise ValueError(f"clip of {wave.shape[0]} samples is shorter than one 10 ms frame ({FRAME_SAMPLES} samples)")
    segments = split_segments(padded)
    n_placeholders = placeholder_count(padded.shape[0])
    # Holds for every length (module docstring); a failure here would mean the constants were edited.
    assert n_placeholders <= PLACEHOLDERS_PER_SEGMENT * len(segments)
    return CovoAudioFeatures(
        input_features=log_mel_batch(segments, device=device, resampler=resampler),
        n_placeholders=n_placeholders,
        n_samples=int(padded.shape[0]),
        duration_s=wave.shape[0] / SAMPLE_RATE,
    )


def prepare_file(
    path: str | os.PathLike, device: str | torch.device = "cpu", resampler: str = DEFAULT_RESAMPLER
) -> CovoAudioFeatures:
    """`load_audio(path, 24000, resampler)` then `prepare_waveform` (same resampler for 24 -> 16 kHz). Raises
    AudioLoadError (naming the file) for a bad file, including one too short to give a single 10 ms frame."""
    wave = load_audio(path, SAMPLE_RATE, resampler)
    if wave.shape[0] < FRAME_SAMPLES:
        raise AudioLoadError(
            path, f"too short: {wave.shape[0]} samples at 24 kHz, under one 10 ms frame ({FRAME_SAMPLES} samples)"
        )
    return prepare_waveform(wave, device=device, resampler=resampler)


def _as_mono(wave: np.ndarray) -> np.ndarray:
    """float32 view/copy of a 1-D waveform; ValueError otherwise (downmixing is `load_audio`'s job)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D mono waveform, got shape {wave.shape}")
    return wave
