"""Resampling: the Covo-Audio release's windowed-sinc resampler (the default) and soxr (selectable).

``sinc`` reproduces torchaudio's default ``torchaudio.functional.resample`` (method ``sinc_interp_hann``,
``lowpass_filter_width`` L = 6 zero crossings, ``rolloff`` 0.99), which the released inference code uses for
file -> 24 kHz and for 24 kHz -> 16 kHz. torchaudio's CPU wheels do not import next to our torch, so it is written
here from the algorithm:

* the rates are reduced by their gcd: orig = orig_sr / g, new = new_sr / g (integers);
* the cut-off is base = min(orig, new) * rolloff, in the same reduced units (cycles per block of orig inputs);
* output sample j lies at input position p_j = j * orig / new; with t = base * (i / orig - j / new), the
  kernel is  h(t) = (base / orig) * sinc(t) * cos^2(pi * t / (2 L))  for |t| < L, 0 outside,
  sinc(t) = sin(pi t) / (pi t), and y[j] = sum_i x[i] h(t_ij) (samples outside the clip are zero);
* each of the ``new`` output phases k = j mod new has its own row of the kernel, spanning
  w = ceil(L * orig / base) inputs either side of the block (2 w + orig taps): a strided convolution computes
  every phase of a block of orig inputs at once;
* the output has ceil(n * new / orig) samples (torchaudio's and librosa's length).

``soxr`` is soxr at quality "HQ" (librosa's default), the harness's resampler before the release's was matched. The
two differ most near the cut-off: after 16 -> 24 kHz by a few per cent RMS of the waveform, and by up to about 0.8 in
the log-mel bins above 6 kHz, which is why the release's resampler is the default.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import soxr

__all__ = [
    "DEFAULT_RESAMPLER",
    "LOWPASS_FILTER_WIDTH",
    "RESAMPLERS",
    "RESAMPLE_QUALITY",
    "ROLLOFF",
    "output_length",
    "resample",
    "sinc_kernel",
    "sinc_resample",
    "soxr_resample",
]

RESAMPLERS = ("sinc", "soxr")
DEFAULT_RESAMPLER = "sinc"  # the Covo-Audio release's
LOWPASS_FILTER_WIDTH = 6  # zero crossings of the sinc kept on each side (torchaudio's default)
ROLLOFF = 0.99  # cut-off as a share of the lower Nyquist frequency (torchaudio's default)
# soxr "HQ" = 20-bit precision. It is librosa's default (res_type="soxr_hq"); "VHQ" (28-bit) costs more for a
# difference far below float32 speech levels.
RESAMPLE_QUALITY = "HQ"
_BLOCKS_PER_CHUNK = 1 << 14  # input blocks per matrix product: bounds the working memory of long clips


def output_length(n: int, orig_sr: int, new_sr: int) -> int:
    """Samples after resampling n samples: ceil(n * new_sr / orig_sr) (torchaudio's and librosa's length)."""
    return -(-int(n) * int(new_sr) // int(orig_sr))


def _reduced(orig_sr: int, new_sr: int) -> tuple[int, int]:
    for name, rate in (("orig_sr", orig_sr), ("new_sr", new_sr)):
        if int(rate) != rate or rate <= 0:
            raise ValueError(f"{name} must be a positive integer number of Hz, got {rate!r}")
    g = math.gcd(int(orig_sr), int(new_sr))
    return int(orig_sr) // g, int(new_sr) // g


@functools.lru_cache(maxsize=32)
def sinc_kernel(
    orig: int, new: int, lowpass_filter_width: int = LOWPASS_FILTER_WIDTH, rolloff: float = ROLLOFF
) -> tuple[np.ndarray, int]:
    """The Hann-windowed sinc kernel for reduced rates ``orig`` -> ``new``: float64 (new, 2 w + orig), and w.

    Row k (output phase), column m (input offset in the padded block): t = base * ((m - w) / orig - k / new),
    clamped to [-L, L] (where the window is 0), value (base / orig) * sinc(t) * cos^2(pi t / (2 L)); see the module
    docstring. Read-only: the array is cached.
    """
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    offsets = (np.arange(-width, width + orig, dtype=np.float64) / orig)[None, :]
    phases = (np.arange(new, dtype=np.float64) / new)[:, None]
    t = np.clip((offsets - phases) * base, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / (2 * lowpass_filter_width)) ** 2
    kernel = (base / orig) * np.sinc(t) * window  # np.sinc(t) = sin(pi t) / (pi t), 1 at t = 0
    kernel.setflags(write=False)
    return kernel, width


def sinc_resample(
    wave: np.ndarray,
    orig_sr: int,
    new_sr: int,
    lowpass_filter_width: int = LOWPASS_FILTER_WIDTH,
    rolloff: float = ROLLOFF,
) -> np.ndarray:
    """Windowed-sinc resampling of a 1-D waveform, float32 out, ceil(n * new_sr / orig_sr) samples.

    y[j] = sum_i x[i] h(base * (i / orig - j / new)) with the kernel of ``sinc_kernel`` (module docstring). Computed
    as torchaudio does, in float32: the input padded with w zeros before and w + orig after; block b (inputs
    b * orig - w .. b * orig + orig + w - 1) times the kernel gives outputs b * new .. b * new + new - 1; cut to
    length. The blocks are strided views multiplied in chunks (a matrix product per chunk, not a conv1d: several
    times faster on a busy CPU, and memory stays bounded for long clips).
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {wave.shape}")
    orig, new = _reduced(orig_sr, new_sr)
    if orig == new:
        return wave.copy()
    kernel, width = sinc_kernel(orig, new, lowpass_filter_width, rolloff)
    taps = kernel.shape[1]
    kernel_t = np.ascontiguousarray(kernel.T, dtype=np.float32)  # (taps, new)
    padded = np.pad(wave, (width, width + orig))
    blocks = np.lib.stride_tricks.sliding_window_view(padded, taps)[::orig]  # (n // orig + 1, taps), a view
    n_out = output_length(wave.shape[0], orig, new)
    out = np.empty((blocks.shape[0], new), dtype=np.float32)
    for first in range(0, blocks.shape[0], _BLOCKS_PER_CHUNK):
        last = first + _BLOCKS_PER_CHUNK
        np.matmul(blocks[first:last], kernel_t, out=out[first:last])
    return out.reshape(-1)[:n_out].copy()


def soxr_resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """soxr "HQ" resampling, float32 out, padded or cut to ceil(n * new_sr / orig_sr) samples.

    soxr rounds the output length; the release (torchaudio) and librosa give the ceiling. Matching them (one zero
    sample at most) keeps ``trim_and_pad``, and so the placeholder count, the same whichever resampler runs.
    """
    wave = np.asarray(wave, dtype=np.float32)
    _reduced(orig_sr, new_sr)
    if orig_sr == new_sr:
        return wave.copy()
    n_out = output_length(wave.shape[0], orig_sr, new_sr)
    out = soxr.resample(wave, int(orig_sr), int(new_sr), quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)
    if out.shape[0] < n_out:
        out = np.pad(out, (0, n_out - out.shape[0]))
    return out[:n_out]


def resample(wave: np.ndarray, orig_sr: int, new_sr: int, method: str = DEFAULT_RESAMPLER) -> np.ndarray:
    """``wave`` (1-D) from ``orig_sr`` to ``new_sr`` Hz with ``method`` ("sinc": the release's, "soxr")."""
    if method == "sinc":
        return sinc_resample(wave, orig_sr, new_sr)
    if method == "soxr":
        return soxr_resample(wave, orig_sr, new_sr)
    raise ValueError(f"unknown resampler {method!r}; choose one of {', '.join(RESAMPLERS)}")
