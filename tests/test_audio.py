"""The audio transcoder: lengths, state, codec exactness and the quality bars of issue 2.

Quality is deterministic, so it is asserted; speed is not (see ``bench/audio.py``). Speech comes from a
seeded synthesiser below (a glottal pulse train through moving formants); when ``espeak-ng`` is installed,
the round trip is also checked on real synthetic speech.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
import wave
from collections.abc import Callable, Iterable
from io import BytesIO

import numpy as np
import pytest

from service.core import audio
from service.core.audio import AudioConverter, Transcoder
from service.sim.signals import Floats, db, fit, settled, speech_like, tone

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import audioop

UP_FRAME = 160  # 20 ms of 8 kHz mu-law, bytes
DOWN_FRAME = 960  # 20 ms of 24 kHz PCM16, bytes


# -- signals and measurements -------------------------------------------------------------------------


def pcm16_bytes(x: Floats) -> bytes:
    return np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def mulaw_bytes(x: Floats) -> bytes:
    return audioop.lin2ulaw(pcm16_bytes(x), 2)


def samples(pcm16: bytes) -> Floats:
    return np.frombuffer(pcm16, "<i2").astype(np.float64)


def decoded(mulaw: bytes) -> Floats:
    return samples(audioop.ulaw2lin(mulaw, 2))


def snr_db(reference: Floats, test: Floats) -> float:
    error = float(np.linalg.norm(test - reference))
    return np.inf if error == 0 else db(float(np.linalg.norm(reference)) / error)


def chunked(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """Cut data into consecutive pieces of the given sizes, cycling through them."""
    sizes = list(sizes)
    pieces, start, k = [], 0, 0
    while start < len(data):
        pieces.append(data[start : start + sizes[k % len(sizes)]])
        start += sizes[k % len(sizes)]
        k += 1
    return pieces


def streamed(convert: Callable[[bytes], bytes], pieces: Iterable[bytes]) -> bytes:
    return b"".join(convert(piece) for piece in pieces)


# -- API -----------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert (audio.CALLER_RATE_HZ, audio.MODEL_RATE_HZ, audio.MULAW_SILENCE) == (8000, 24_000, 0xFF)
    assert audio.FILTER_TAPS == 3 * audio.PHASE_TAPS and audio.FILTER_TAPS % 2 == 1


def test_import_raises_no_deprecation_warning() -> None:
    """audioop warns on import on Python 3.11-3.12; the module silences exactly that warning."""
    code = "import service.core.audio"
    subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], check=True, timeout=60)


def test_transcoder_is_an_audio_converter() -> None:
    converter: AudioConverter = Transcoder()
    for name in ("to_model", "to_caller", "reset_to_caller", "flush_to_caller"):
        assert callable(getattr(converter, name))


@pytest.mark.parametrize("size", [0, 1, 2, 7, 159, 160, 161, 8000, 8001, 20_000])
def test_to_model_gives_three_samples_per_byte(size: int) -> None:
    out = Transcoder().to_model(bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)))
    assert isinstance(out, bytes)
    assert len(out) == 6 * size


def test_to_caller_carries_what_does_not_make_a_whole_sample() -> None:
    t = Transcoder()
    total_in = total_out = 0
    for n in [0, 1, 1, 1, 2, 5, 480, 7, 240, 13, 1, 0, 3, 2, 48_001, 161]:  # samples
        out = t.to_caller(bytes(2 * n))
        carry = total_in % 3
        assert len(out) == (carry + n) // 3  # this call's whole share, at once
        total_in += n
        total_out += len(out)
        assert total_out == total_in // 3


def test_odd_byte_count_is_a_value_error_and_changes_nothing() -> None:
    pcm = pcm16_bytes(tone(440, 24_000, 0.1))
    reference = Transcoder().to_caller(pcm)
    t = Transcoder()
    first = t.to_caller(pcm[:962])
    with pytest.raises(ValueError, match="odd byte count"):
        t.to_caller(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="odd byte count"):
        t.to_caller_pcm16(b"\x01")
    assert first + t.to_caller(pcm[962:]) == reference


def test_directions_do_not_share_state() -> None:
    mulaw = mulaw_bytes(tone(700, 8000, 0.2))
    pcm = pcm16_bytes(tone(900, 24_000, 0.2))
    alone = streamed(Transcoder().to_model, chunked(mulaw, [UP_FRAME]))
    t = Transcoder()
    mixed = []
    for up, down in zip(chunked(mulaw, [UP_FRAME]), chunked(pcm, [DOWN_FRAME]), strict=True):
        mixed.append(t.to_model(up))
        t.to_caller(down)
        t.reset_to_caller()
    assert b"".join(mixed) == alone


# -- codec ---------------------------------------------------------------------------------------------


def test_mulaw_tables_are_bit_exact_with_audioop() -> None:
    values = np.arange(-32768, 32768, dtype=np.int64)
    index = 2 * values  # what the filters produce for an output of exactly `values`
    assert audio._TO_MULAW[index].tobytes() == audioop.lin2ulaw(values.astype("<i2").tobytes(), 2)
    assert np.array_equal(audio._TO_PCM16[index], values)


def test_rounding_table_rounds_to_nearest_and_saturates() -> None:
    y = np.array([0.49, 0.5, 0.51, -0.49, -0.51, 1.49, -1.51, 100.7, -100.7, 32767.4, 32767.6, 40000, -40000])
    index = (2 * y).astype(np.intp)
    expected = np.clip(np.round(y + np.sign(y) * 1e-9), -32768, 32767)  # half away from zero
    assert np.array_equal(audio._TO_PCM16[index], expected)


def test_to_caller_is_the_mulaw_of_to_caller_pcm16() -> None:
    pcm = pcm16_bytes(np.random.default_rng(4).uniform(-1.2, 1.2, 48_000))  # clipped noise: every range
    assert Transcoder().to_caller(pcm) == audioop.lin2ulaw(Transcoder().to_caller_pcm16(pcm), 2)


# -- silence -------------------------------------------------------------------------------------------


def test_digital_silence_stays_silence() -> None:
    t = Transcoder()
    for _ in range(5):
        pcm = t.to_model(bytes([audio.MULAW_SILENCE]) * UP_FRAME)
        assert pcm == bytes(DOWN_FRAME)
        assert t.to_caller(pcm) == bytes([audio.MULAW_SILENCE]) * UP_FRAME
    assert Transcoder().to_model(b"\x7f" * UP_FRAME) == bytes(DOWN_FRAME)  # mu-law's negative zero
    assert Transcoder().flush_to_caller() == b""


def test_silence_after_speech_returns_to_exact_silence() -> None:
    t = Transcoder()
    t.to_model(mulaw_bytes(speech_like(0.5, 8000, seed=3)))
    t.to_caller(pcm16_bytes(speech_like(0.5, 24_000, seed=3)))
    t.to_model(b"\xff" * 40)  # more than the filter's memory
    t.to_caller(bytes(2 * audio.FILTER_TAPS))
    assert t.to_model(b"\xff" * UP_FRAME) == bytes(DOWN_FRAME)
    assert t.to_caller(bytes(DOWN_FRAME)) == b"\xff" * UP_FRAME


# -- quality -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("freq_hz", [5000, 6000, 9000, 11_000, *range(4600, 12_000, 300)])
def test_down_rejects_aliases_by_75_db(freq_hz: int) -> None:
    x = pcm16_bytes(tone(freq_hz, 24_000, level=0.9))
    y = settled(samples(Transcoder().to_caller_pcm16(x)), 8000)
    level_in = fit(settled(samples(x), 24_000), freq_hz, 24_000)[0]
    all_out = float(np.sqrt(2 * np.mean(y**2)))  # everything that comes out, as a sine amplitude
    assert db(all_out / level_in) <= -75
    folded = abs(freq_hz - 8000 * round(freq_hz / 8000))
    assert db(fit(y, folded, 8000)[0] / level_in) <= -75


@pytest.mark.parametrize("freq_hz", [300, 1000, 2000, 3000, 3400])
def test_up_rejects_images_by_75_db(freq_hz: int) -> None:
    x = mulaw_bytes(tone(freq_hz, 8000, level=0.9))
    y = settled(samples(Transcoder().to_model(x)), 24_000)
    level_in = fit(settled(decoded(x), 8000), freq_hz, 8000)[0]
    for image in (8000 - freq_hz, 8000 + freq_hz, 16_000 - freq_hz):
        assert db(fit(y, image, 24_000)[0] / level_in) <= -75


@pytest.mark.parametrize("freq_hz", range(300, 3401, 50))
def test_pass_band_is_flat_within_a_tenth_of_a_db(freq_hz: int) -> None:
    up_in = mulaw_bytes(tone(freq_hz, 8000))
    up_gain = (
        fit(settled(samples(Transcoder().to_model(up_in)), 24_000), freq_hz, 24_000)[0]
        / fit(settled(decoded(up_in), 8000), freq_hz, 8000)[0]
    )
    down_in = pcm16_bytes(tone(freq_hz, 24_000))
    down_gain = (
        fit(settled(samples(Transcoder().to_caller_pcm16(down_in)), 8000), freq_hz, 8000)[0]
        / fit(settled(samples(down_in), 24_000), freq_hz, 24_000)[0]
    )
    assert abs(db(up_gain)) <= 0.1
    assert abs(db(down_gain)) <= 0.1


def delay_ms(x: Floats, x_rate: int, y: Floats, y_rate: int, freq_hz: float = 250.0) -> float:
    """Delay of y behind x from the phase of a tone (unambiguous up to one period, 4 ms)."""
    phase_in = fit(x, freq_hz, x_rate)[1]
    phase_out = fit(y, freq_hz, y_rate)[1]
    return float((phase_in - phase_out) % (2 * np.pi) / (2 * np.pi * freq_hz) * 1000)


def test_added_latency_is_under_3_ms_per_direction() -> None:
    up_in = mulaw_bytes(tone(250, 8000))
    up_delay = delay_ms(decoded(up_in), 8000, samples(Transcoder().to_model(up_in)), 24_000)
    down_in = pcm16_bytes(tone(250, 24_000))
    down_delay = delay_ms(samples(down_in), 24_000, samples(Transcoder().to_caller_pcm16(down_in)), 8000)
    assert up_delay == pytest.approx(audio.TO_MODEL_DELAY_MS, abs=0.01)
    # the group delay, plus at most 2 input samples held until they make an output sample
    assert down_delay + 2 / 24 == pytest.approx(audio.TO_CALLER_DELAY_MS, abs=0.01)
    assert audio.TO_MODEL_DELAY_MS <= 3
    assert audio.TO_CALLER_DELAY_MS <= 3


def test_every_frame_comes_out_at_once() -> None:
    t = Transcoder()
    for up, down in zip(
        chunked(mulaw_bytes(speech_like(0.4, 8000, seed=5)), [UP_FRAME]),
        chunked(pcm16_bytes(speech_like(0.4, 24_000, seed=5)), [DOWN_FRAME]),
        strict=True,
    ):
        assert len(t.to_model(up)) == DOWN_FRAME
        assert len(t.to_caller(down)) == UP_FRAME


def test_round_trip_delay_is_a_whole_number_of_samples() -> None:
    x = mulaw_bytes(tone(250, 8000))
    t = Transcoder()
    y = decoded(t.to_caller(t.to_model(x)))
    assert delay_ms(decoded(x), 8000, y, 8000) == pytest.approx(audio.ROUND_TRIP_DELAY_8K / 8, abs=0.01)


def round_trip_snr_db(mulaw: bytes) -> float:
    t = Transcoder()
    x, y = decoded(mulaw), decoded(t.to_caller(t.to_model(mulaw)))
    d = audio.ROUND_TRIP_DELAY_8K
    return snr_db(x[: x.size - d], y[d:])


def test_round_trip_keeps_40_db_on_telephone_speech() -> None:
    assert round_trip_snr_db(mulaw_bytes(speech_like(3.0, 8000, seed=6, band_hz=(300, 3400)))) >= 40


def test_round_trip_keeps_40_db_on_a_sine() -> None:
    assert round_trip_snr_db(mulaw_bytes(tone(1234, 8000, seconds=1.0, level=0.7))) >= 40


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_round_trip_keeps_40_db_on_espeak_speech() -> None:
    text = "Hello, thank you for calling. How can I help you today? Please tell me your account number."
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True, timeout=30).stdout
    with wave.open(BytesIO(wav)) as w:
        rate, x = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    n = round(x.size * 8000 / rate)
    f = np.fft.rfftfreq(x.size, 1 / rate)[: n // 2 + 1]
    phone = np.fft.irfft(
        np.fft.rfft(x)[: n // 2 + 1] * ((f >= 300) & (f <= 3400)), n
    )  # telephone band at 8 kHz
    assert round_trip_snr_db(mulaw_bytes(phone / np.abs(phone).max() * 0.7)) >= 40


# -- streaming equals whole ----------------------------------------------------------------------------

SIGNALS = {
    "sine": lambda rate: tone(1234.5, rate, seconds=1.0, level=0.7),
    "speech": lambda rate: speech_like(1.5, rate, seed=7),
}
UP_CHUNKS = {
    "20ms": [160],
    "10ms": [80],
    "odd": [7, 13, 1, 157, 3],
    "random": [1, 333, 50, 2, 171, 89, 0, 400],
}
DOWN_CHUNKS = {
    "20ms": [960],
    "10ms": [480],
    "odd": [14, 26, 2, 962, 6],
    "random": [2, 1000, 300, 4, 0, 2400, 58],
}


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("chunks", UP_CHUNKS)
def test_streaming_up_equals_whole(signal: str, chunks: str) -> None:
    x = mulaw_bytes(SIGNALS[signal](8000))
    whole = samples(Transcoder().to_model(x))
    stream = samples(streamed(Transcoder().to_model, chunked(x, UP_CHUNKS[chunks])))
    assert stream.size == whole.size
    assert snr_db(whole, stream) >= 85
    assert np.abs(stream - whole).max() <= 1


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("chunks", DOWN_CHUNKS)
def test_streaming_down_equals_whole(signal: str, chunks: str) -> None:
    x = pcm16_bytes(SIGNALS[signal](24_000))
    whole = samples(Transcoder().to_caller_pcm16(x))
    stream = samples(streamed(Transcoder().to_caller_pcm16, chunked(x, DOWN_CHUNKS[chunks])))
    assert stream.size == whole.size
    assert snr_db(whole, stream) >= 85
    assert np.abs(stream - whole).max() <= 1
    assert streamed(Transcoder().to_caller, chunked(x, DOWN_CHUNKS[chunks])) == audioop.lin2ulaw(
        pcm16_bytes(stream / 32767), 2
    )


# -- reset and flush -----------------------------------------------------------------------------------


def test_reset_forgets_history_and_carry() -> None:
    speech = pcm16_bytes(speech_like(0.3, 24_000, seed=8))
    after = pcm16_bytes(tone(500, 24_000, seconds=0.1))
    t = Transcoder()
    t.to_caller(speech[: 2 * 1001])  # leaves 2 samples carried and a full history
    t.reset_to_caller()
    assert t.to_caller(after) == Transcoder().to_caller(after)


def test_flush_emits_the_tail_then_starts_clean() -> None:
    x = pcm16_bytes(speech_like(0.2, 24_000, seed=9))
    for carried in (0, 1, 2):
        data = x[: 2 * (3 * 1000 + carried)]
        t = Transcoder()
        body = streamed(t.to_caller, chunked(data, [DOWN_FRAME]))
        tail = t.flush_to_caller()
        assert len(tail) == (26 if carried == 0 else 27)
        assert len(tail) == (carried + audio.FILTER_TAPS - 1) // 3
        # the same as converting the input followed by FILTER_TAPS - 1 zero samples in one go
        assert body + tail == Transcoder().to_caller(data + bytes(2 * (audio.FILTER_TAPS - 1)))
        assert len(body + tail) == -(-len(data) // 6) + 26  # ceil(samples / 3) + 26
        assert t.flush_to_caller() == b""  # nothing new since the flush
        assert t.to_caller(x) == Transcoder().to_caller(x)  # clean state


def test_flush_keeps_the_end_of_the_signal() -> None:
    x = pcm16_bytes(tone(1000, 24_000, seconds=0.1, level=0.5))
    t = Transcoder()
    t.to_caller(x)
    tail = decoded(t.flush_to_caller())
    assert np.abs(tail[:10]).max() > 10_000  # the delayed last 1.2 ms of the tone, not silence
    assert np.abs(tail[-4:]).max() < 200  # the filter's decay at the end


def test_flush_after_reset_is_empty() -> None:
    t = Transcoder()
    t.to_caller(pcm16_bytes(tone(300, 24_000, seconds=0.05)))
    t.reset_to_caller()
    assert t.flush_to_caller() == b""


# -- extremes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("phase", [0, 1, 2])
def test_up_saturates_instead_of_wrapping(sign: int, phase: int) -> None:
    h = audio.design_lowpass()
    branch = h[phase::3]  # the taps that make output sample 3j + phase, newest input first
    pattern = sign * np.sign(branch[::-1])  # oldest first: every tap adds in the same direction
    x = audioop.lin2ulaw((pattern * 32124).astype("<i2").tobytes(), 2)
    y = samples(Transcoder().to_model(x))
    assert y[3 * (audio.PHASE_TAPS - 1) + phase] == (32767 if sign > 0 else -32768)


@pytest.mark.parametrize("sign", [1, -1])
def test_down_saturates_instead_of_wrapping(sign: int) -> None:
    h = audio.design_lowpass()
    # 81 samples make 27 output samples; the last one, y[26], sees x[80 - k] through tap k, so every tap adds
    x = (sign * np.sign(h[::-1]) * 32767).astype("<i2").tobytes()
    assert db(float(np.abs(h).sum())) > 3  # the unsaturated sum would be well beyond full scale
    assert samples(Transcoder().to_caller_pcm16(x))[26] == (32767 if sign > 0 else -32768)
    assert decoded(Transcoder().to_caller(x))[26] == (32124 if sign > 0 else -32124)


def test_full_scale_noise_converts_without_error() -> None:
    rng = np.random.default_rng(10)
    t = Transcoder()
    for _ in range(20):
        t.to_model(bytes(rng.integers(0, 256, 333, dtype=np.uint8)))
        t.to_caller(rng.integers(-32768, 32768, 1001, dtype=np.int16).astype("<i2").tobytes())
    assert len(t.flush_to_caller()) in (26, 27)


def test_design_is_symmetric_with_unit_dc_gain() -> None:
    h = audio.design_lowpass()
    assert h.size == audio.FILTER_TAPS
    assert np.allclose(h, h[::-1])
    assert h.sum() == pytest.approx(1.0)
