"""The release's windowed-sinc resampler against a direct evaluation of its formula, and the soxr option.

The reference below is written from the formula alone (one sum per output sample over every input sample), not from
the strided-block computation the harness uses: y[j] = sum_i x[i] (base / orig) sinc(t) cos^2(pi t / (2 L)) for
|t| < L, with t = base (i / orig - j / new), base = min(orig, new) * 0.99, L = 6, rates reduced by their gcd.
"""

import math

import numpy as np
import pytest
import soundfile as sf
import soxr

from grpo_audio.audio.covo import log_mel, placeholder_count, prepare_file, trim_and_pad
from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.audio.io import load_audio
from grpo_audio.audio.resample import output_length, resample, sinc_kernel, sinc_resample, soxr_resample
from grpo_audio.recipe import RecipeError, load_recipe

RATE_PAIRS = [(8000, 24000), (16000, 24000), (22050, 24000), (44100, 24000), (48000, 24000), (24000, 16000)]


def direct_windowed_sinc(x: np.ndarray, orig_sr: int, new_sr: int, zeros: int = 6, rolloff: float = 0.99):
    """Slow float64 evaluation of the windowed-sinc formula, one output sample at a time."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    base = min(orig, new) * rolloff
    i = np.arange(len(x), dtype=np.float64)
    y = np.empty(math.ceil(len(x) * new / orig))
    for j in range(len(y)):
        t = base * (i / orig - j / new)
        inside = np.abs(t) < zeros
        tap = (base / orig) * np.sinc(t) * np.cos(np.pi * t / (2 * zeros)) ** 2
        y[j] = np.sum(x * np.where(inside, tap, 0.0))
    return y


def _signal(rate: int, n: int) -> np.ndarray:
    """Noise plus a chirp up to near Nyquist: energy in the pass band, the transition band and the stop band."""
    rng = np.random.default_rng(rate)
    t = np.arange(n) / rate
    chirp = 0.4 * np.sin(2 * np.pi * (50 + 0.45 * rate * t / t[-1] / 2) * t)
    return (0.3 * rng.uniform(-1, 1, n) + chirp).astype(np.float32)


@pytest.mark.parametrize(("orig_sr", "new_sr"), RATE_PAIRS)
def test_sinc_resample_equals_the_direct_formula(orig_sr, new_sr):
    x = _signal(orig_sr, 1237)  # not a multiple of any reduced rate: the last block is partial
    y = sinc_resample(x, orig_sr, new_sr)
    reference = direct_windowed_sinc(x.astype(np.float64), orig_sr, new_sr)
    assert y.dtype == np.float32 and y.shape == reference.shape == (math.ceil(1237 * new_sr / orig_sr),)
    np.testing.assert_allclose(y, reference, atol=1e-5, rtol=0)  # edges included (zeros outside the clip)


@pytest.mark.parametrize(
    ("orig", "new", "width", "taps"),
    [(1, 3, 7, 15), (2, 3, 7, 16), (147, 160, 7, 161), (147, 80, 12, 171), (2, 1, 13, 28), (3, 2, 10, 23)],
)
def test_kernel_width_follows_zero_crossings_and_rolloff(orig, new, width, taps):
    # w = ceil(6 * orig / (0.99 * min(orig, new))), 2 w + orig taps per output phase
    kernel, w = sinc_kernel(orig, new)
    assert (w, kernel.shape) == (width, (new, taps))
    # DC gain of every phase: the taps sum to ~1 (the pass band is flat), so a constant stays constant
    np.testing.assert_allclose(kernel.sum(axis=1), 1.0, atol=2e-3)


def test_a_tone_in_the_pass_band_survives():
    x = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32)
    y = sinc_resample(x, 16000, 24000)
    expected = np.sin(2 * np.pi * 1000 * np.arange(24000) / 24000)
    np.testing.assert_allclose(y[100:-100], expected[100:-100], atol=2e-3)  # away from the zero-padded edges


@pytest.mark.parametrize("method", ["sinc", "soxr"])
@pytest.mark.parametrize("n", [1, 479, 480, 24001])
def test_both_resamplers_give_the_ceiling_length(method, n):
    x = np.ones(n, np.float32)
    assert resample(x, 24000, 16000, method).shape == (output_length(n, 24000, 16000),) == (math.ceil(n * 2 / 3),)


def test_equal_rates_copy_and_bad_arguments_are_refused():
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(sinc_resample(x, 16000, 16000), x)
    with pytest.raises(ValueError, match="unknown resampler 'kaiser'"):
        resample(x, 16000, 24000, "kaiser")
    with pytest.raises(ValueError, match="orig_sr must be a positive integer"):
        sinc_resample(x, 0, 24000)
    with pytest.raises(ValueError, match="1-D"):
        sinc_resample(np.zeros((4, 2), np.float32), 16000, 24000)


def test_load_audio_uses_the_sinc_by_default_and_soxr_on_request(tmp_path):
    path = tmp_path / "clip.wav"
    x = _signal(44100, 44100)
    sf.write(str(path), x, 44100, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, 24000), sinc_resample(x, 44100, 24000))
    soxr_out = load_audio(path, 24000, resampler="soxr")
    np.testing.assert_array_equal(soxr_out, soxr_resample(x, 44100, 24000))
    np.testing.assert_allclose(soxr_out[: len(soxr_out) - 1], soxr.resample(x, 44100, 24000, quality="HQ")[:-1])
    with pytest.raises(ValueError, match="unknown resampler"):
        load_audio(path, 24000, resampler="fft")


def test_the_resampler_changes_the_high_mel_bins_and_nothing_else(tmp_path):
    # Broadband noise: soxr and the sinc differ near the cut-off, so the top mel bins differ; lengths, placeholder
    # counts and the low bins do not.
    rng = np.random.default_rng(3)
    path = tmp_path / "noise.wav"
    sf.write(str(path), (0.2 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000, subtype="FLOAT")
    sinc, sox = prepare_file(path), prepare_file(path, resampler="soxr")
    assert (sinc.n_samples, sinc.n_placeholders) == (sox.n_samples, sox.n_placeholders) == (72000, 19)
    assert sinc.n_placeholders == placeholder_count(len(trim_and_pad(load_audio(path, 24000, "soxr"))))
    diff = (sinc.input_features - sox.input_features).abs()[0, :, :300]  # the 3 s of audio, not the padding
    assert diff[:64].max() < 0.05 < diff[120:].max()
    featurizer = AudioFeaturizer(reuse_embeddings=False, resampler="soxr")
    assert (featurizer.features(str(path)).input_features == sox.input_features).all()
    segment = load_audio(path, 24000)
    assert (log_mel(segment) == sinc.input_features[0]).all()


@pytest.mark.parametrize(("value", "ok"), [("sinc", True), ("soxr", True), ("kaiser", False)])
def test_recipe_data_resampler(value, ok):
    if ok:
        assert load_recipe(None, [f"data.resampler={value}"]).data.resampler == value
    else:
        with pytest.raises(RecipeError, match="data.resampler"):
            load_recipe(None, [f"data.resampler={value}"])
    assert load_recipe(None, []).data.resampler == "sinc"
