"""grpo_audio.audio.io: decoding every format/subtype/rate/channel count, and a named error for every bad file."""

import math
import pickle

import numpy as np
import pytest
import soundfile as sf

from grpo_audio.audio.io import AudioInfo, AudioLoadError, audio_info, load_audio

TONE_HZ = 440.0
DURATION_S = 1.37  # not a whole number of seconds, so output lengths need rounding

# (extension, libsndfile format, subtype). PCM_U8 is what libsndfile uses for 8-bit WAV.
LOSSLESS = [
    ("wav", "WAV", "PCM_U8"),
    ("wav", "WAV", "PCM_16"),
    ("wav", "WAV", "PCM_24"),
    ("wav", "WAV", "PCM_32"),
    ("wav", "WAV", "FLOAT"),
    ("wav", "WAV", "DOUBLE"),
    ("flac", "FLAC", "PCM_16"),
    ("flac", "FLAC", "PCM_24"),
]
LOSSY = [("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")]
RATES = [8000, 16000, 22050, 44100, 48000]


def _can_write(fmt: str, subtype: str) -> bool:
    return fmt in sf.available_formats() and subtype in sf.available_subtypes(fmt)


def _require(fmt: str, subtype: str) -> None:
    if not _can_write(fmt, subtype):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}/{subtype}")


def _tone(rate: int, n_frames: int, hz: float = TONE_HZ, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(n_frames) / rate)).astype(np.float32)


def _write(path, data: np.ndarray, rate: int, fmt: str, subtype: str):
    sf.write(str(path), data, rate, format=fmt, subtype=subtype)
    return path


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum)) * rate / len(wave)


@pytest.mark.parametrize("target_sr", [16000, 24000])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(("ext", "fmt", "subtype"), LOSSLESS + LOSSY)
def test_length_tone_and_level_survive_decoding_and_resampling(tmp_path, ext, fmt, subtype, rate, target_sr):
    _require(fmt, subtype)
    n_frames = int(DURATION_S * rate)
    path = _write(tmp_path / f"tone.{ext}", _tone(rate, n_frames), rate, fmt, subtype)

    wave = load_audio(path, target_sr)

    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - round(n_frames * target_sr / rate)) <= 1
    assert len(wave) == math.ceil(n_frames * target_sr / rate)  # librosa's and torchaudio's length
    # The peak FFT bin is the tone, to within two bins (~1.5 Hz here).
    assert abs(_peak_hz(wave, target_sr) - TONE_HZ) <= 2 * target_sr / len(wave)
    # The level survives too (sine RMS = A / sqrt(2)); 8-bit PCM and lossy codecs are not exact.
    assert np.sqrt(np.mean(wave**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


# MPEG audio holds at most two channels, so MP3 is not tried with six.
CHANNEL_CASES = [(*f, c) for f in [*LOSSLESS[1:], *LOSSY] for c in (1, 2, 6) if not (f[1] == "MP3" and c > 2)]


@pytest.mark.parametrize(("ext", "fmt", "subtype", "channels"), CHANNEL_CASES)
def test_any_channel_count_downmixes_to_mono(tmp_path, ext, fmt, subtype, channels):
    _require(fmt, subtype)
    rate = 22050
    n_frames = int(DURATION_S * rate)
    # Every channel carries the same tone, so the average is that tone again.
    data = np.repeat(_tone(rate, n_frames)[:, None], channels, axis=1)
    path = _write(tmp_path / f"multi.{ext}", data, rate, fmt, subtype)

    wave = load_audio(path, 16000)

    assert wave.ndim == 1
    assert abs(len(wave) - round(n_frames * 16000 / rate)) <= 1
    assert abs(_peak_hz(wave, 16000) - TONE_HZ) <= 2 * 16000 / len(wave)
    assert audio_info(path).channels == channels


@pytest.mark.parametrize("channels", [2, 3, 6])
def test_channels_are_averaged_exactly(tmp_path, channels):
    rate = 16000
    # Multiples of 1/1024 keep every product and the mean exact in float32: channel c holds (c + 1) * base,
    # so the average is exactly base * (C + 1) / 2.
    base = np.random.default_rng(channels).integers(-100, 101, rate) / 1024
    data = np.stack([base * (c + 1) for c in range(channels)], axis=1).astype(np.float32)
    path = _write(tmp_path / "avg.wav", data, rate, "WAV", "FLOAT")

    wave = load_audio(path, rate)  # same rate: no resampling

    np.testing.assert_array_equal(wave, (base * (channels + 1) / 2).astype(np.float32))


@pytest.mark.parametrize(
    ("ext", "fmt", "subtype", "max_abs"),
    [
        # libsndfile's float -> int writer does not round x and -x symmetrically: R may be -L - 1 LSB, so the
        # average may be off by up to one LSB.
        ("wav", "WAV", "PCM_16", 2.0**-15),
        ("wav", "WAV", "FLOAT", 0.0),
        ("flac", "FLAC", "PCM_24", 2.0**-23),
        # Lossy codecs: exact here (the mid channel codes to zero); a margin for encoders that code L and R apart.
        ("ogg", "OGG", "VORBIS", 1e-3),
        ("mp3", "MP3", "MPEG_LAYER_III", 1e-3),
    ],
)
def test_opposite_sign_stereo_averages_to_silence(tmp_path, ext, fmt, subtype, max_abs):
    _require(fmt, subtype)
    rate = 44100
    left = _tone(rate, rate, amplitude=0.4)
    path = _write(tmp_path / f"anti.{ext}", np.stack([left, -left], axis=1), rate, fmt, subtype)

    wave = load_audio(path, 24000)

    assert len(wave) == 24000
    assert np.max(np.abs(wave)) <= max_abs


def test_same_rate_mono_float_is_returned_unchanged(tmp_path):
    data = np.random.default_rng(0).uniform(-1, 1, 12345).astype(np.float32)
    path = _write(tmp_path / "same.wav", data, 24000, "WAV", "FLOAT")
    np.testing.assert_array_equal(load_audio(path, 24000), data)


def test_audio_info_reads_the_header(tmp_path):
    path = _write(tmp_path / "six.wav", np.zeros((48000 * 2 + 7, 6), np.float32), 48000, "WAV", "PCM_24")
    assert audio_info(path) == AudioInfo(
        sample_rate=48000, channels=6, frames=96007, duration_s=96007 / 48000, format="WAV", subtype="PCM_24"
    )


@pytest.mark.parametrize(("ext", "fmt", "subtype"), [("flac", "FLAC", "PCM_16"), *LOSSY])
def test_audio_info_names_compressed_formats(tmp_path, ext, fmt, subtype):
    _require(fmt, subtype)
    path = _write(tmp_path / f"x.{ext}", _tone(16000, 16000), 16000, fmt, subtype)
    info = audio_info(path)
    assert (info.format, info.subtype, info.sample_rate, info.channels) == (fmt, subtype, 16000, 1)
    assert info.frames == 16000 and info.duration_s == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: each one raises AudioLoadError naming the file, from load_audio and (where visible) audio_info.


def _good_bytes(tmp_path, ext="wav", fmt="WAV", subtype="PCM_16") -> bytes:
    src = _write(tmp_path / f"good.{ext}", _tone(16000, 16000), 16000, fmt, subtype)
    return src.read_bytes()


def _missing(tmp_path):
    return tmp_path / "does_not_exist.wav"


def _zero_bytes(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    return path


def _truncated_header(tmp_path):
    path = tmp_path / "short_header.wav"
    path.write_bytes(_good_bytes(tmp_path)[:20])  # cut inside the 'fmt ' chunk
    return path


def _random_bytes(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return path


def _zero_frames(tmp_path):
    return _write(tmp_path / "no_frames.wav", np.zeros((0, 2), np.float32), 16000, "WAV", "PCM_16")


def _directory(tmp_path):
    path = tmp_path / "a_dir.wav"
    path.mkdir()
    return path


def _truncated_wav_data(tmp_path):
    data = _good_bytes(tmp_path)
    path = tmp_path / "half.wav"
    path.write_bytes(data[: len(data) // 2])  # header says 32000 data bytes, about 16000 remain
    return path


HEADER_LEVEL = [_missing, _zero_bytes, _truncated_header, _random_bytes, _zero_frames, _directory, _truncated_wav_data]


@pytest.mark.parametrize("make_bad", HEADER_LEVEL, ids=lambda f: f.__name__.strip("_"))
def test_bad_files_raise_audio_load_error_naming_the_file(tmp_path, make_bad):
    path = make_bad(tmp_path)
    with pytest.raises(AudioLoadError) as load_err:
        load_audio(path, 16000)
    with pytest.raises(AudioLoadError) as info_err:
        audio_info(path)
    for err in (load_err.value, info_err.value):
        assert str(path) in str(err)
        assert isinstance(err, ValueError)
        # A libsndfile failure is kept as the cause, never shown raw.
        assert err.__cause__ is None or isinstance(err.__cause__, sf.SoundFileError)


@pytest.mark.parametrize("make_bad", [_truncated_header, _random_bytes])
def test_libsndfile_error_is_kept_as_cause(tmp_path, make_bad):
    with pytest.raises(AudioLoadError) as err:
        load_audio(make_bad(tmp_path), 16000)
    assert isinstance(err.value.__cause__, sf.LibsndfileError)


@pytest.mark.parametrize("cut", ["half", "tail"])
@pytest.mark.parametrize(("ext", "fmt", "subtype"), [("flac", "FLAC", "PCM_16"), ("mp3", "MP3", "MPEG_LAYER_III")])
def test_compressed_file_cut_short_is_an_error(tmp_path, ext, fmt, subtype, cut):
    _require(fmt, subtype)
    data = _good_bytes(tmp_path, ext, fmt, subtype)
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-10])
    with pytest.raises(AudioLoadError, match=r"truncated|cannot decode") as err:
        load_audio(path, 16000)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_non_finite_samples_are_an_error(tmp_path, bad_value, subtype):
    data = np.zeros((1600, 2), np.float32)
    data[1000, 1] = bad_value
    path = _write(tmp_path / "nonfinite.wav", data, 16000, "WAV", subtype)
    with pytest.raises(AudioLoadError, match="frame 1000, channel 1") as err:
        load_audio(path, 16000)
    assert str(path) in str(err.value)
    assert ("1 NaN" if np.isnan(bad_value) else "1 infinite") in str(err.value)


def test_bad_target_rate_is_a_plain_value_error(tmp_path):
    path = _write(tmp_path / "ok.wav", _tone(16000, 1600), 16000, "WAV", "PCM_16")
    with pytest.raises(ValueError, match="target_sr") as err:
        load_audio(path, 0)
    assert not isinstance(err.value, AudioLoadError)


def test_audio_load_error_pickles_with_its_message():
    err = AudioLoadError("/data/x.wav", "file is empty (0 bytes)")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) == "cannot load audio file '/data/x.wav': file is empty (0 bytes)"
    assert (copy.path, copy.reason) == ("/data/x.wav", "file is empty (0 bytes)")
