"""DTMF tones (ITU-T Q.23) as 8 kHz mu-law, and the Goertzel detector that finds them (service.core.dtmf)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.core import dtmf
from service.sim.script import ulaw_decode, ulaw_encode
from service.sim.signals import db, fit, speech_like, tone

ALL_KEYS = "0123456789*#ABCD"


def pcm(mulaw: bytes) -> np.ndarray:
    return dtmf.mulaw_decode(mulaw).astype(np.float64)


def to_mulaw(x: np.ndarray) -> bytes:
    return dtmf.mulaw_encode(np.clip(np.round(x), -32768, 32767).astype(np.int16))


def pair(key: str, *, low_dbfs: float = -10, twist_db: float = 2.0, deviation: float = 0.0,
         ms: int = 80) -> bytes:  # fmt: skip
    """A hand-made key tone (no ramps) followed by 80 ms of silence."""
    row, column = dtmf.FREQUENCIES[key]
    t = np.arange(ms * 8) / 8000
    x = 32768 * 10 ** (low_dbfs / 20) * np.sin(2 * np.pi * row * (1 + deviation) * t)
    x += 32768 * 10 ** ((low_dbfs + twist_db) / 20) * np.sin(2 * np.pi * column * (1 + deviation) * t)
    return to_mulaw(x) + b"\xff" * 640


def test_the_keypad_is_q23() -> None:
    assert dtmf.FREQUENCIES["1"] == (697, 1209) and dtmf.FREQUENCIES["0"] == (941, 1336)
    assert dtmf.FREQUENCIES["#"] == (941, 1477) and dtmf.FREQUENCIES["D"] == (941, 1633)
    assert dtmf.FREQUENCIES["5"] == (770, 1336) and dtmf.FREQUENCIES["C"] == (852, 1633)
    assert set(dtmf.FREQUENCIES) == set(ALL_KEYS) == dtmf.DIGITS


@pytest.mark.parametrize("key", list(ALL_KEYS))
def test_every_key_round_trips(key: str) -> None:
    assert dtmf.detect(dtmf.tones(key)) == key
    assert dtmf.detect(dtmf.tones(key * 3, tone_ms=40, gap_ms=40)) == key * 3  # the shortest Q.24 allows


def test_a_sequence_round_trips_with_where_each_key_is() -> None:
    digits = "0123456789*#ABCD11#"
    audio = dtmf.tones(digits)
    assert len(audio) == len(digits) * 160 * 8  # 80 ms tone + 80 ms gap, 8 bytes per ms
    found = dtmf.scan(audio)
    assert "".join(k.digit for k in found) == digits == dtmf.detect(audio)
    for i, k in enumerate(found):
        assert abs(k.start_ms - i * 160) <= 10 and abs(k.end_ms - (i * 160 + 80)) <= 15


def test_tones_and_gaps_have_the_asked_durations() -> None:
    audio = dtmf.tones("59", tone_ms=100, gap_ms=60)
    assert len(audio) == 2 * 160 * 8
    assert audio[800:1280] == b"\xff" * 480 and audio[-480:] == b"\xff" * 480  # the gaps: digital silence
    assert b"\xff\xff\xff\xff" not in audio[8:792]  # the tone, ramps aside, is never silent
    assert dtmf.tones("") == b""


@pytest.mark.parametrize("key", list(ALL_KEYS))
def test_level_twist_and_frequencies_are_within_q24(key: str) -> None:
    row, column = dtmf.FREQUENCIES[key]
    x = pcm(dtmf.tones(key, level_dbfs=-10))[: 80 * 8][3 * 8 : -3 * 8] / 32768  # steady part, no ramps
    (low, _), (high, _) = fit(x, row, 8000), fit(x, column, 8000)
    low_dbfs, high_dbfs = db(low), db(high)
    assert abs(low_dbfs - -10) < 0.3 and abs(high_dbfs - -8) < 0.3
    twist = high_dbfs - low_dbfs
    assert abs(twist - dtmf.TWIST_DB) < 0.3 and abs(twist) <= 4  # Q.24: within +-4 dB
    for level in (low_dbfs, high_dbfs):  # Q.24 operating range, about 0 to -25 dBm0 per frequency
        assert -25 <= level + dtmf.DBM0_AT_0_DBFS <= 0
    # exactly the two nominal frequencies: they explain the signal up to mu-law's quantisation noise
    t = np.arange(len(x)) / 8000
    basis = np.stack([f(2 * np.pi * hz * t) for hz in (row, column) for f in (np.sin, np.cos)], axis=1)
    residual = x - basis @ np.linalg.lstsq(basis, x, rcond=None)[0]
    assert db(float(np.sqrt(np.mean(residual**2)) / np.sqrt(np.mean(x**2)))) < -30


def test_bad_keys_and_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'x' \(position 2\) is not a DTMF key"):
        dtmf.tones("12x4")
    with pytest.raises(ValueError, match="'a'"):
        dtmf.tones("a")  # keys are upper case, as Q.23 writes them
    with pytest.raises(ValueError, match="' '"):
        dtmf.tones("1 2")
    with pytest.raises(ValueError, match="at least 40 ms"):
        dtmf.tones("1", tone_ms=30)
    with pytest.raises(ValueError, match="at least 40 ms"):
        dtmf.tones("1", gap_ms=20)
    with pytest.raises(ValueError, match="clips"):
        dtmf.tones("1", level_dbfs=-3)
    assert dtmf.check_digits("#*0") == "#*0"


def test_silence_and_short_input_give_nothing() -> None:
    assert dtmf.detect(b"") == ""
    assert dtmf.detect(b"\xff" * 100) == ""
    assert dtmf.detect(b"\xff" * 80_000) == ""
    assert dtmf.detect(b"\x7f" * 8_000) == ""  # a constant (mu-law's other zero)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("band", [None, (300.0, 3400.0)])
def test_speech_like_audio_gives_no_false_keys(seed: int, band: tuple[float, float] | None) -> None:
    x = speech_like(6.0, 8000, seed, band)
    for level in (0.05, 0.3, 1.0):
        assert dtmf.detect(to_mulaw(x * 32767 * level)) == ""


def test_noise_and_call_progress_tones_give_no_keys() -> None:
    rng = np.random.default_rng(3)
    assert dtmf.detect(to_mulaw(rng.standard_normal(80_000) * 3000)) == ""
    for freqs in [(350, 440), (440, 480), (480, 620), (697,), (1209,), (1000,), (697, 770)]:
        x = sum(tone(f, 8000, 2.0, 0.3) for f in freqs)
        assert dtmf.detect(to_mulaw(np.asarray(x) * 32767)) == "", freqs


def test_keys_between_speech_and_in_noise_are_found() -> None:
    speech = speech_like(1.5, 8000, 11, (300.0, 3400.0)) * 32767 * 0.5
    keys = pcm(dtmf.tones("4711#"))
    audio = to_mulaw(np.concatenate([speech, np.zeros(800), keys, speech]))
    assert dtmf.detect(audio) == "4711#"
    rng = np.random.default_rng(5)
    tone_power = np.mean(keys[keys != 0] ** 2)
    for snr_db in (20, 10):
        noisy = keys + rng.standard_normal(len(keys)) * np.sqrt(tone_power / 10 ** (snr_db / 10))
        assert dtmf.detect(to_mulaw(noisy)) == "4711#"


def test_detector_limits_level_twist_deviation_and_duration() -> None:
    keys = list(ALL_KEYS)

    def heard(**kwargs: Any) -> str:
        return "".join(dtmf.detect(pair(k, **kwargs)) or "." for k in keys)

    assert heard(low_dbfs=-30, twist_db=0) == ALL_KEYS
    assert heard(low_dbfs=-40, twist_db=0) == "." * 16  # below MIN_TONE_DBFS
    assert heard(twist_db=-3.5) == heard(twist_db=4) == ALL_KEYS
    assert heard(low_dbfs=-20, twist_db=7.5) == ALL_KEYS
    assert heard(twist_db=-6) == heard(low_dbfs=-20, twist_db=9) == "." * 16
    assert heard(deviation=0.015) == heard(deviation=-0.015) == ALL_KEYS  # Q.24: operate within 1.5%
    assert heard(deviation=0.035) == heard(deviation=-0.035) == "." * 16
    assert heard(ms=40) == ALL_KEYS and heard(ms=25) == "." * 16


def test_the_codec_is_g711_like_the_simulators() -> None:
    every = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    assert dtmf.mulaw_encode(every) == ulaw_encode(every)
    codes = bytes(range(256))
    assert np.array_equal(dtmf.mulaw_decode(codes), ulaw_decode(codes))
