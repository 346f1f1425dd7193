"""grpo_audio.audio.covo: Covo-Audio's trim/pad, placeholder count, 30 s segments and Whisper log-mel.

Expected numbers are worked out by hand in the comments; the log-mel is checked against a direct torch computation
written here, independent of WhisperFeatureExtractor, for both resamplers (the default "sinc", checked against its
formula in tests/test_resample.py, and "soxr", called directly).
"""

import math

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from transformers.audio_utils import hertz_to_mel, mel_filter_bank, mel_to_hertz

from grpo_audio.audio import covo
from grpo_audio.audio.covo import (
    PLACEHOLDERS_PER_SEGMENT,
    SAMPLE_RATE,
    SEGMENT_SAMPLES,
    CovoAudioFeatures,
    log_mel,
    log_mel_batch,
    placeholder_count,
    prepare_file,
    prepare_waveform,
    segment_count,
    split_segments,
    trim_and_pad,
)
from grpo_audio.audio.io import AudioLoadError
from grpo_audio.audio.resample import sinc_resample


def _tone(seconds: float, hz: float = 1000.0, amplitude: float = 0.3, rate: int = SAMPLE_RATE) -> np.ndarray:
    n = round(seconds * rate)
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype(np.float32)


def test_constants():
    assert covo.SAMPLE_RATE == 24000 and covo.ENCODER_SAMPLE_RATE == 16000
    assert covo.SEGMENT_SECONDS == 30
    assert covo.SEGMENT_SAMPLES == 720000 and covo.ENCODER_SEGMENT_SAMPLES == 480000
    assert covo.N_MELS == 128 and covo.N_MEL_FRAMES == 3000
    assert covo.PLACEHOLDERS_PER_SEGMENT == 188


# ---------------------------------------------------------------------------------------------------------------
# trim_and_pad: floor to a multiple of 240, then round up to a multiple of 480.


@pytest.mark.parametrize(
    ("n_in", "n_out"),
    [
        (0, 0),
        (239, 0),  # under one frame: nothing left
        (240, 480),  # one frame, padded to two
        (479, 480),  # trimmed to 240, padded to 480
        (480, 480),
        (721, 960),  # trimmed to 720 (3 frames), padded to 960
        (24000, 24000),  # 1 s: 100 frames, even
        (24100, 24000),  # 1 s + 100 samples: the partial frame is dropped
        (24300, 24480),  # 101 frames -> 24240, padded to 102 frames
        (720240, 720480),  # 30 s + 1 frame -> 3002 frames
    ],
)
def test_trim_and_pad_lengths(n_in, n_out):
    wave = np.random.default_rng(n_in).uniform(-1, 1, n_in).astype(np.float32)
    out = trim_and_pad(wave)
    assert out.dtype == np.float32 and out.shape == (n_out,)
    kept = min(n_out, (n_in // 240) * 240)
    np.testing.assert_array_equal(out[:kept], wave[:kept])
    assert not out[kept:].any()  # the padding is zeros


def test_trim_and_pad_rejects_multichannel():
    with pytest.raises(ValueError, match="1-D"):
        trim_and_pad(np.zeros((480, 2), np.float32))


# ---------------------------------------------------------------------------------------------------------------
# placeholder_count: frames = n * 100 // 24000, then (n + 1) // 2 four times.


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.5, 4),  # 12000 samples -> 50 frames -> 25, 13, 7, 4
        (1.0, 7),  # 100 frames -> 50, 25, 13, 7
        (7.3, 46),  # 175200 samples (730 frames, even) -> 365, 183, 92, 46
        (30.0, 188),  # 3000 -> 1500, 750, 375, 188
        (30.01, 188),  # 720240 -> padded 720480 -> 3002 frames -> 1501, 751, 376, 188
        (60.0, 375),  # 6000 -> 3000, 1500, 750, 375
        (61.0, 382),  # 6100 -> 3050, 1525, 763, 382
    ],
)
def test_placeholder_count_hand_computed(seconds, expected):
    n_samples = trim_and_pad(np.zeros(round(seconds * SAMPLE_RATE), np.float32)).shape[0]
    assert placeholder_count(n_samples) == expected


def test_placeholder_count_is_ceil_of_frames_over_16():
    for n_samples in range(0, 3 * SEGMENT_SAMPLES, 480 * 7):
        assert placeholder_count(n_samples) == math.ceil((n_samples * 100 // 24000) / 16)


def test_188_is_what_encoder_and_adapter_make_of_3000_mel_frames():
    # Whisper encoder: conv1 (k3, s1, p1), conv2 (k3, s2, p1); adapter: three Conv1d (k3, s2, p1).
    convs = [torch.nn.Conv1d(1, 1, 3, stride=1, padding=1), torch.nn.Conv1d(1, 1, 3, stride=2, padding=1)]
    convs += [torch.nn.Conv1d(1, 1, 3, stride=2, padding=1) for _ in range(3)]
    x = torch.zeros(1, 1, covo.N_MEL_FRAMES)
    for conv in convs:
        x = conv(x)
    assert x.shape[-1] == PLACEHOLDERS_PER_SEGMENT == placeholder_count(SEGMENT_SAMPLES)


# ---------------------------------------------------------------------------------------------------------------
# Segments and the invariant n_placeholders <= 188 * S.


def test_65_s_clip_makes_three_segments():
    wave = np.arange(65 * SAMPLE_RATE, dtype=np.float32)
    segments = split_segments(wave)
    assert [len(s) for s in segments] == [720000, 720000, 120000]
    np.testing.assert_array_equal(np.concatenate(segments), wave)
    assert segment_count(len(wave)) == 3


@pytest.mark.parametrize(
    ("n", "expected"), [(1, 1), (719999, 1), (720000, 1), (720001, 2), (1440000, 2), (1440480, 3)]
)
def test_segment_boundaries(n, expected):
    assert len(split_segments(np.zeros(n, np.float32))) == expected == segment_count(n)


def test_empty_clip_cannot_be_split():
    with pytest.raises(ValueError, match="empty"):
        split_segments(np.zeros(0, np.float32))


def test_placeholders_always_fit_in_the_segments_frames():
    # trim_and_pad output lengths are exactly the positive multiples of 480, so this covers every clip up to
    # 10 minutes, the 30 s / 60 s / ... boundaries and "30 s + 1 frame" (720480) among them.
    for n_samples in range(480, 20 * SEGMENT_SAMPLES + 1, 480):
        n, s = placeholder_count(n_samples), segment_count(n_samples)
        assert 0 < n <= PLACEHOLDERS_PER_SEGMENT * s, n_samples
    # And through the real functions, at the boundaries.
    for seconds in (0.01, 29.99, 30.0, 30.01, 59.99, 60.0, 60.01, 90.0):
        features_len = trim_and_pad(np.zeros(round(seconds * SAMPLE_RATE), np.float32)).shape[0]
        n_segments = len(split_segments(np.zeros(features_len, np.float32)))
        assert placeholder_count(features_len) <= PLACEHOLDERS_PER_SEGMENT * n_segments
    # A full single segment uses every one of its 188 frames.
    assert placeholder_count(SEGMENT_SAMPLES) == PLACEHOLDERS_PER_SEGMENT * segment_count(SEGMENT_SAMPLES)


# ---------------------------------------------------------------------------------------------------------------
# log_mel


def _reference_log_mel(segment_24k: np.ndarray, resampler: str = "sinc") -> torch.Tensor:
    """Direct computation from the published recipe, without WhisperFeatureExtractor."""
    if resampler == "sinc":
        x = sinc_resample(segment_24k, 24000, 16000)
    else:
        x = soxr.resample(segment_24k, 24000, 16000, quality="HQ")
    x = np.pad(x, (0, max(0, 480000 - len(x))))[:480000]
    spec = torch.stft(
        torch.from_numpy(x), n_fft=400, hop_length=160, window=torch.hann_window(400), return_complex=True
    )
    power = spec[:, :-1].abs() ** 2  # (201, 3000): the last frame dropped
    filters = torch.from_numpy(
        mel_filter_bank(201, 128, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    ).float()  # (201, 128)
    mel = torch.clamp(filters.T @ power, min=1e-10).log10()
    mel = torch.maximum(mel, mel.max() - 8.0)
    return (mel + 4.0) / 4.0


def test_log_mel_shape_and_dtype():
    out = log_mel(_tone(3.0))
    assert out.shape == (128, 3000) and out.dtype == torch.float32


def test_log_mel_of_silence_is_minus_1_5_everywhere():
    # log10(1e-10) = -10 everywhere, max - 8 = -18 does not bite, (-10 + 4) / 4 = -1.5.
    out = log_mel(np.zeros(SEGMENT_SAMPLES, np.float32))
    assert torch.all(out == (math.log10(1e-10) + 4) / 4) and out[0, 0].item() == -1.5


def test_1_khz_tone_peaks_in_the_mel_bin_centred_nearest_1_khz():
    # Slaney mel centres: 130 points evenly spaced in mel from 0 to 8 kHz, minus the two edges.
    mels = np.linspace(hertz_to_mel(0.0, mel_scale="slaney"), hertz_to_mel(8000.0, mel_scale="slaney"), 130)
    centres_hz = mel_to_hertz(mels, mel_scale="slaney")[1:-1]
    nearest = int(np.argmin(np.abs(centres_hz - 1000.0)))

    peaks = log_mel(_tone(30.0)).argmax(dim=0)
    # Frame 0's window hangs over the start of the clip, where reflect padding mirrors the sine into a cusp.
    assert torch.all(peaks[1:] == nearest)


@pytest.mark.parametrize("resampler", ["sinc", "soxr"])
@pytest.mark.parametrize(
    "name", ["noise_30s", "chirp_5s_padded", "quiet_noise_12s", "speechlike_45s_trimmed", "short_20ms"]
)
def test_log_mel_matches_a_direct_torch_computation(name, resampler):
    rng = np.random.default_rng(0)
    t5 = np.arange(5 * SAMPLE_RATE) / SAMPLE_RATE
    signals = {
        "noise_30s": 0.1 * rng.standard_normal(SEGMENT_SAMPLES),
        "chirp_5s_padded": 0.5 * np.sin(2 * np.pi * (100 + 700 * t5) * t5),
        "quiet_noise_12s": 1e-4 * rng.standard_normal(12 * SAMPLE_RATE),
        # Longer than 30 s at 16 kHz after resampling: the pad-or-trim step trims.
        "speechlike_45s_trimmed": rng.standard_normal(45 * SAMPLE_RATE)
        * np.abs(np.sin(2 * np.pi * 3 * np.arange(45 * SAMPLE_RATE) / SAMPLE_RATE)),
        "short_20ms": 0.2 * rng.standard_normal(480),
    }
    segment = signals[name].astype(np.float32)
    expected = _reference_log_mel(segment, resampler)
    torch.testing.assert_close(log_mel(segment, resampler=resampler), expected, atol=1e-5, rtol=0)


def test_max_minus_8_floor():
    # A loud tone followed by zero padding: the padded frames sit exactly on the floor, max - 8 before scaling.
    out = log_mel(_tone(10.0, amplitude=0.9))
    assert out.max() - out.min() == pytest.approx(2.0, abs=1e-6)
    assert torch.all(out >= out.max() - 2.0 - 1e-6)


def test_batch_equals_one_by_one_with_a_floor_per_segment():
    rng = np.random.default_rng(1)
    loud = (0.9 * rng.standard_normal(SEGMENT_SAMPLES)).astype(np.float32)
    quiet = (1e-5 * rng.standard_normal(7 * SAMPLE_RATE)).astype(np.float32)
    batch = log_mel_batch([loud, quiet, np.zeros(480, np.float32)])
    assert batch.shape == (3, 128, 3000)
    for row, segment in zip(batch, [loud, quiet, np.zeros(480, np.float32)], strict=True):
        torch.testing.assert_close(row, log_mel(segment), atol=1e-6, rtol=0)
    # Had the floor been shared, the quiet segment would sit far below the loud one's max - 8.
    assert batch[1].max() - batch[1].min() <= 2.0 + 1e-6
    assert batch[1].max() < batch[0].max() - 2.0


def test_log_mel_batch_rejects_empty_input():
    with pytest.raises(ValueError):
        log_mel_batch([])
    with pytest.raises(ValueError, match="empty"):
        log_mel_batch([np.zeros(0, np.float32)])


# ---------------------------------------------------------------------------------------------------------------
# prepare_waveform / prepare_file


def test_prepare_waveform_65_s():
    wave = _tone(65.0)  # 1560000 samples, already a multiple of 480
    features = prepare_waveform(wave)
    assert isinstance(features, CovoAudioFeatures)
    assert features.input_features.shape == (3, 128, 3000) and features.n_segments == 3
    # 6500 frames -> 3250, 1625, 813, 407
    assert features.n_placeholders == 407 <= 188 * 3
    assert features.n_samples == 1560000
    assert features.duration_s == pytest.approx(65.0)
    expected = log_mel_batch(split_segments(trim_and_pad(wave)))
    torch.testing.assert_close(features.input_features, expected, atol=0, rtol=0)


def test_prepare_waveform_reports_input_duration_and_padded_length():
    features = prepare_waveform(_tone(2.0)[:24300])  # trimmed to 24240, padded to 24480
    assert (features.n_samples, features.n_placeholders, features.n_segments) == (24480, 7, 1)
    assert features.duration_s == pytest.approx(24300 / 24000)


@pytest.mark.parametrize(
    ("wave", "match"),
    [
        (np.zeros(239, np.float32), "shorter than one 10 ms frame"),
        (np.zeros((24000, 2), np.float32), "1-D"),
        (np.full(24000, np.nan, np.float32), "NaN"),
    ],
)
def test_prepare_waveform_rejects_bad_input(wave, match):
    with pytest.raises(ValueError, match=match):
        prepare_waveform(wave)


def test_prepare_file_resamples_downmixes_and_counts(tmp_path):
    rate = 44100
    mono = _tone(7.3, rate=rate)
    path = tmp_path / "clip.flac"
    sf.write(str(path), np.stack([mono, mono], axis=1), rate, subtype="PCM_24")

    features = prepare_file(path)

    # 7.3 s at 24 kHz = 175200 samples (730 frames, even): 46 placeholders, one segment.
    assert features.n_samples == 175200 and features.n_placeholders == 46
    assert features.input_features.shape == (1, 128, 3000)
    assert features.duration_s == pytest.approx(7.3, abs=1 / 24000)


def test_prepare_file_names_a_file_too_short_for_one_frame(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(str(path), np.zeros(80, np.float32), 16000)  # 5 ms
    with pytest.raises(AudioLoadError, match="too short") as err:
        prepare_file(path)
    assert str(path) in str(err.value)


def test_prepare_file_passes_on_load_errors(tmp_path):
    with pytest.raises(AudioLoadError, match="does not exist"):
        prepare_file(tmp_path / "missing.ogg")
