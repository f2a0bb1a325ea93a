"""Deterministic test signals and measurements, shared by the audio tests and the benchmark.

Pure numpy: sinusoids, a speech-like synthesiser (a glottal pulse train through moving formants, with
syllable envelopes and fricative hiss), and the fit/level helpers used to measure a converter.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


def tone(freq_hz: float, rate: int, seconds: float = 1.2, level: float = 0.5) -> Floats:
    return level * np.sin(2 * np.pi * freq_hz * np.arange(int(rate * seconds)) / rate)


def settled(x: Floats, rate: int) -> Floats:
    """Skip the filter's start-up (50 ms), keep 1 s."""
    return x[rate // 20 : rate // 20 + rate]


def fit(x: Floats, freq_hz: float, rate: int) -> tuple[float, float]:
    """Amplitude and phase of the sinusoid at freq_hz that best fits x (least squares)."""
    t = np.arange(x.size) / rate
    basis = np.stack([np.sin(2 * np.pi * freq_hz * t), np.cos(2 * np.pi * freq_hz * t)], axis=1)
    (s, c), *_ = np.linalg.lstsq(basis, x, rcond=None)
    return float(np.hypot(s, c)), float(np.arctan2(c, s))


def db(ratio: float) -> float:
    return float(20 * np.log10(max(ratio, 1e-12)))


def speech_like(seconds: float, rate: int, seed: int, band_hz: tuple[float, float] | None = None) -> Floats:
    """Deterministic speech-like signal peaking at 0.8.

    A glottal impulse train with wandering pitch shaped by four formants that glide between vowels, a
    syllable envelope with pauses, and fricative noise (reaching 10 kHz at 24 kHz). Formants are applied per
    40 ms Hann frame (10 ms hop) in the frequency domain. ``band_hz`` keeps only that band, as a telephone
    channel does.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 150 + 35 * np.sin(2 * np.pi * 0.6 * t) + 12 * np.sin(2 * np.pi * 3.3 * t + 1.0)
    voiced = np.diff(np.floor(np.cumsum(f0) / rate), prepend=0.0)
    noise = rng.standard_normal(n)
    syllable = np.clip(np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6)) * 1.4, 0, 1) ** 1.5
    fricative = np.clip(np.sin(2 * np.pi * 1.3 * t + 2.0) - 0.6, 0, 1) * 2.5
    hop, size = rate // 100, rate // 25
    window = np.hanning(size)
    freqs = np.fft.rfftfreq(size, 1 / rate)
    vowels = [
        (730, 1090, 2440, 3300),
        (270, 2290, 3010, 3500),
        (520, 1190, 2390, 3250),
        (300, 870, 2240, 3100),
    ]
    hiss = np.exp(-(((freqs - min(6500, rate * 0.4)) / 2500) ** 2)) * 0.02
    out = np.zeros(n + size)
    for k, start in enumerate(range(0, n - size, hop)):
        a, b = vowels[(k // 17) % 4], vowels[(k // 17 + 1) % 4]
        shape = np.zeros_like(freqs)
        for fa, fb, width in zip(a, b, (80, 100, 140, 200), strict=True):
            fc = fa + (fb - fa) * (k % 17) / 17
            shape += (fc / 500) ** -0.5 / np.sqrt(1 + ((freqs - fc) / (width / 2)) ** 2)
        seg = slice(start, start + size)
        spectrum = np.fft.rfft(voiced[seg] * window) * shape * syllable[start]
        spectrum += np.fft.rfft(noise[seg] * window) * hiss * fricative[start]
        out[start : start + size] += np.fft.irfft(spectrum, size)
    signal = out[:n]
    if band_hz is not None:
        f = np.fft.rfftfreq(n, 1 / rate)
        signal = np.fft.irfft(np.fft.rfft(signal) * ((f >= band_hz[0]) & (f <= band_hz[1])), n)
    result: Floats = signal / np.abs(signal).max() * 0.8
    return result
