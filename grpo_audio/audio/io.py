"""Audio file I/O: decode any file libsndfile reads into float32 mono at a chosen sample rate.

Decoding is soundfile (libsndfile: WAV/FLAC/OGG-Vorbis/Opus/MP3/AIFF/..., any sample subtype); resampling is, by
default, the Covo-Audio release's Hann-windowed sinc (torchaudio's default `resample`; see
`grpo_audio.audio.resample`), or soxr "HQ" (librosa's default) with ``resampler="soxr"``; either way the output has
ceil(n * target_sr / file_sr) samples. With "sinc" a clip loaded here equals the release's load, channel average and
`torchaudio.functional.resample` up to float32 rounding; with "soxr" it equals
`librosa.load(path, sr=target_sr, mono=True)` likewise.

Every problem with the file itself raises `AudioLoadError`, whose message names the path and what is wrong. When
the problem was reported by libsndfile, the original exception is kept as `__cause__`.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .resample import DEFAULT_RESAMPLER, RESAMPLE_QUALITY, RESAMPLERS, resample

__all__ = ["RESAMPLERS", "RESAMPLE_QUALITY", "AudioInfo", "AudioLoadError", "audio_info", "load_audio"]

# libsndfile logs a WAV whose header promises more data than the file holds as "data : N (should be M)" and then
# silently reads the M bytes that are there. Streaming writers (pipes) put a placeholder here instead of the real
# length (0xFFFFFFFF, or a value just under 2**31), so declared sizes at or above this are not called truncation.
_WAV_DATA_LINE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_LENGTH_MARKER = 0x7FFF0000


class AudioLoadError(ValueError):
    """An audio file is missing, empty, undecodable, truncated, silent of samples or holds non-finite samples.

    `path` is the file as given, `reason` says what is wrong. str() gives "cannot load audio file '<path>': <reason>".
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        # args = (path, reason) so the exception pickles (e.g. across DataLoader or datasets.map workers).
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot load audio file '{self.path}': {self.reason}"


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says, without decoding the samples.

    sample_rate: Hz. channels: count. frames: samples per channel. duration_s: frames / sample_rate, seconds.
    format / subtype: libsndfile's names, e.g. "WAV" / "PCM_16", "FLAC" / "PCM_24", "OGG" / "VORBIS",
    "MP3" / "MPEG_LAYER_III".
    """

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    format: str
    subtype: str


def _checked_info(path: str | os.PathLike):
    """sf.info() plus the checks that need no decoding; raises AudioLoadError."""
    p = Path(path)
    if not p.exists():
        raise AudioLoadError(path, "file does not exist")
    if not p.is_file():
        raise AudioLoadError(path, "not a regular file")
    if p.stat().st_size == 0:
        # libsndfile would say "Format not recognised", which hides the real cause.
        raise AudioLoadError(path, "file is empty (0 bytes)")
    try:
        info = sf.info(str(p))
    except sf.SoundFileError as err:
        raise AudioLoadError(path, f"not a readable audio file ({err})") from err
    match = _WAV_DATA_LINE.search(info.extra_info)
    if match:
        declared, present = int(match.group(1)), int(match.group(2))
        if present < declared < _UNKNOWN_LENGTH_MARKER:
            raise AudioLoadError(
                path, f"truncated: the header declares {declared} data bytes, the file holds {present}"
            )
    if info.frames <= 0:
        raise AudioLoadError(path, "contains no audio samples (0 frames)")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioLoadError(path, f"invalid header: {info.samplerate} Hz, {info.channels} channels")
    return info


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header facts of an audio file, without decoding it.

    Raises AudioLoadError for a missing, empty, unreadable, header-truncated (WAV) or zero-frame file. Damage in the
    compressed stream (FLAC/MP3 cut mid-file) and NaN/inf samples are only found by decoding: use `load_audio`.
    """
    info = _checked_info(path)
    return AudioInfo(
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        duration_s=info.frames / info.samplerate,
        format=info.format,
        subtype=info.subtype,
    )


def load_audio(path: str | os.PathLike, target_sr: int, resampler: str = DEFAULT_RESAMPLER) -> np.ndarray:
    """Decode `path` to a float32 mono waveform at `target_sr` Hz, shape (n,), nominal range [-1, 1].

    Steps: decode with soundfile as float32 (integer PCM is scaled by 1/2**(bits-1)); downmix by averaging the
    channels, mono = sum_c x_c / C (accumulated in float64); resample when the file rate differs from `target_sr`
    with `resampler` ("sinc": the release's windowed sinc, the default; "soxr": soxr "HQ"). Output length is
    ceil(frames * target_sr / file_sr) samples.

    Raises AudioLoadError (message names the file) when the file is missing, empty, not decodable, truncated
    (fewer frames decode than the header declares), has zero frames, or holds NaN or infinite samples.
    Raises ValueError for a non-positive `target_sr`.
    """
    if int(target_sr) != target_sr or target_sr <= 0:
        raise ValueError(f"target_sr must be a positive integer number of Hz, got {target_sr!r}")
    if resampler not in RESAMPLERS:
        raise ValueError(f"unknown resampler {resampler!r}; choose one of {', '.join(RESAMPLERS)}")
    info = _checked_info(path)
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.SoundFileError as err:
        raise AudioLoadError(path, f"cannot decode audio ({err})") from err

    # libsndfile returns whatever it could decode; a FLAC/MP3 cut short decodes fewer frames than its header says.
    if data.shape[0] < info.frames:
        raise AudioLoadError(
            path, f"truncated or corrupt: the header declares {info.frames} frames, only {data.shape[0]} decode"
        )
    if data.shape[0] == 0:
        raise AudioLoadError(path, "contains no audio samples (0 frames)")

    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(np.isinf(data).sum())
        frame, channel = (int(i[0]) for i in np.nonzero(~finite))
        raise AudioLoadError(
            path, f"{n_nan} NaN and {n_inf} infinite samples (first at frame {frame}, channel {channel})"
        )

    if data.shape[1] == 1:
        mono = np.ascontiguousarray(data[:, 0])
    else:
        # float64 accumulator: the average of C float32 values is then correctly rounded once, for any C.
        mono = data.mean(axis=1, dtype=np.float64).astype(np.float32)

    if file_sr != target_sr:
        mono = resample(mono, file_sr, int(target_sr), resampler)
    return mono
