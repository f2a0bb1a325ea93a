"""Cost and quality of ``service.core.audio.Transcoder`` against the stdlib ``audioop`` path and python-soxr.

Run from the repository root (a few seconds; ``--rounds`` trades time for steadier tails)::

    .venv/bin/python -m bench.audio              # 40 rounds over 10 s of audio in each direction
    .venv/bin/python -m bench.audio --rounds 100

Cost: every implementation converts the same 500 frames of 20 ms in each direction (160 mu-law bytes up to
24 kHz PCM16; 960 PCM16 bytes down to 8 kHz mu-law), round after round, interleaved so that they share the
machine's noise. Each call is timed on its own with ``perf_counter_ns`` (timer overhead subtracted), with the
garbage collector off. "pair" is the up call plus the down call of the same frame; calls per core =
1 s / (pair median x 50 frames per second).

- ours:   ``Transcoder.to_model`` / ``Transcoder.to_caller``
- stdlib: ``audioop.ulaw2lin`` + ``audioop.ratecv`` with state; ``ratecv`` with state + ``audioop.lin2ulaw``
- soxr:   ``soxr.ResampleStream`` (HQ, int16) for the rate change, ``audioop`` for mu-law

Signals: a seeded speech-like synthesiser (glottal pulses through moving formants, fricative noise), the
caller's side limited to the telephone band. Quality figures fit sinusoids by least squares over 1 s once
the filters have settled.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import timeit
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from service.core import audio
from service.sim.signals import Floats, db, fit, settled, speech_like, tone

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import audioop

try:
    import soxr  # type: ignore[import-untyped]
except ImportError:  # optional: pip install soxr
    soxr = None

FRAMES = 500


class Converter(Protocol):
    def to_model(self, mulaw_8k: bytes) -> bytes: ...

    def to_caller(self, pcm16_24k: bytes) -> bytes: ...


# -- signals -------------------------------------------------------------------------------------------


def to_pcm16(x: Floats) -> bytes:
    return np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def pcm16(data: bytes) -> Floats:
    return np.frombuffer(data, "<i2").astype(np.float64)


def mulaw_decode(data: bytes) -> Floats:
    return pcm16(audioop.ulaw2lin(data, 2))


def frames_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


# -- the reference implementations ---------------------------------------------------------------------


class Stdlib:
    """What existing bridges do: audioop's ratecv (linear interpolation, no filter), state kept."""

    def __init__(self) -> None:
        self._up: Any = None
        self._down: Any = None

    def to_model(self, mulaw_8k: bytes) -> bytes:
        out, self._up = audioop.ratecv(audioop.ulaw2lin(mulaw_8k, 2), 2, 1, 8000, 24000, self._up)
        return bytes(out)

    def to_caller(self, pcm16_24k: bytes) -> bytes:
        out, self._down = audioop.ratecv(pcm16_24k, 2, 1, 24000, 8000, self._down)
        return bytes(audioop.lin2ulaw(out, 2))


class Soxr:
    """python-soxr's streaming resampler (HQ), audioop for mu-law."""

    def __init__(self) -> None:
        self._up = soxr.ResampleStream(8000, 24000, 1, dtype="int16", quality="HQ")
        self._down = soxr.ResampleStream(24000, 8000, 1, dtype="int16", quality="HQ")

    def to_model(self, mulaw_8k: bytes) -> bytes:
        x = np.frombuffer(audioop.ulaw2lin(mulaw_8k, 2), np.int16)
        return bytes(self._up.resample_chunk(x).tobytes())

    def to_caller(self, pcm16_24k: bytes) -> bytes:
        y = self._down.resample_chunk(np.frombuffer(pcm16_24k, np.int16))
        return bytes(audioop.lin2ulaw(y.tobytes(), 2))


# -- cost ----------------------------------------------------------------------------------------------


def timer_overhead_ns() -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20000):
        t0 = clock()
        samples.append(clock() - t0)
    return int(statistics.median(samples))


def measure(
    factories: dict[str, Callable[[], Converter]], ups: list[bytes], downs: list[bytes], rounds: int
) -> dict[str, dict[str, list[float]]]:
    """µs of every call per implementation: "up", "down" and "pair" (both, same frame)."""
    clock = time.perf_counter_ns
    overhead = timer_overhead_ns()
    results: dict[str, dict[str, list[float]]] = {
        name: {"up": [], "down": [], "pair": []} for name in factories
    }
    gc.disable()
    try:
        for round_index in range(rounds + 1):  # round 0 warms up and is not recorded
            for name, factory in factories.items():
                converter = factory()
                up_ns, down_ns = [], []
                for up_frame, down_frame in zip(ups, downs, strict=True):
                    t0 = clock()
                    converter.to_model(up_frame)
                    t1 = clock()
                    converter.to_caller(down_frame)
                    t2 = clock()
                    up_ns.append(t1 - t0 - overhead)
                    down_ns.append(t2 - t1 - overhead)
                if round_index:
                    r = results[name]
                    r["up"] += [ns / 1000 for ns in up_ns]
                    r["down"] += [ns / 1000 for ns in down_ns]
                    r["pair"] += [(u + d) / 1000 for u, d in zip(up_ns, down_ns, strict=True)]
    finally:
        gc.enable()
    return results


def held_back_ms(converter: Converter, ups: list[bytes], downs: list[bytes]) -> tuple[float, float]:
    """Most output owed but not yet returned at the end of any call, in ms: (up, down)."""
    worst_up = worst_down = 0.0
    up_in = up_out = down_in = down_out = 0
    for up_frame, down_frame in zip(ups, downs, strict=True):
        up_in += len(up_frame)  # 8 bytes per ms
        up_out += len(converter.to_model(up_frame))  # 48 bytes per ms
        down_in += len(down_frame)
        down_out += len(converter.to_caller(down_frame))
        worst_up = max(worst_up, up_in / 8 - up_out / 48)
        worst_down = max(worst_down, down_in / 48 - down_out / 8)
    return worst_up, worst_down


def codec_costs() -> list[tuple[str, float, float, str]]:
    """µs per 20 ms frame of the mu-law steps alone, lookup table against audioop, best of 7 x 5000."""
    rng = np.random.default_rng(3)
    env = {
        "np": np,
        "audioop": audioop,
        "codes": bytes(rng.integers(0, 256, 160, dtype=np.uint8)),
        "decode": np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), np.int16).astype(np.float32),
        "encode": audio._TO_MULAW,
        "buffer": np.zeros(200, np.float32),
        "y": (rng.standard_normal(160) * 4000).astype(np.float32),
        "y2": (rng.standard_normal(160) * 8000).astype(np.float32),  # ours: the taps are pre-scaled by 2
        "i16": np.zeros(160, np.int16),
    }
    clip_round = "np.rint(np.clip(y, -32768.0, 32767.0), out=i16, casting='unsafe')"
    cases = [
        (
            "decode 160 bytes into the float32 history",
            "decode.take(np.frombuffer(codes, np.uint8), out=buffer[:160], mode='wrap')",
            "buffer[:160] = np.frombuffer(audioop.ulaw2lin(codes, 2), np.int16)",
            "audioop",
        ),
        (
            "round, saturate, encode 160 float32 samples",
            "encode[y2.astype(np.intp)].tobytes()",
            f"audioop.lin2ulaw({clip_round}.tobytes(), 2)",
            "lookup table",
        ),
    ]
    rows = []
    for label, table, stdlib, used in cases:
        costs = [
            min(timeit.repeat(s, globals=env, number=5000, repeat=7)) / 5000 * 1e6 for s in (table, stdlib)
        ]
        rows.append((label, costs[0], costs[1], used))
    return rows


# -- quality -------------------------------------------------------------------------------------------


def alias_levels(freq_hz: float, make: Callable[[], Converter]) -> list[float]:
    """A -6 dBFS tone at freq_hz sent down; dB re input of [folded tone, all output] for the PCM before
    mu-law (NaN when there is no such output), then the same after mu-law."""
    data = to_pcm16(tone(freq_hz, 24000))
    folded = abs(freq_hz - 8000 * round(freq_hz / 8000))
    reference = fit(settled(pcm16(data), 24000), freq_hz, 24000)[0]
    converter = make()
    outputs = [pcm16(converter.to_caller_pcm16(data)) if isinstance(converter, audio.Transcoder) else None]
    outputs.append(mulaw_decode(make().to_caller(data)))
    levels = []
    for y in outputs:
        if y is None:
            levels += [float("nan")] * 2
            continue
        y = settled(y, 8000)
        everything = float(np.sqrt(2 * np.mean(y**2)))  # as a sine amplitude
        levels += [db(fit(y, folded, 8000)[0] / reference), db(everything / reference)]
    return levels


def passband(make: Callable[[], Converter]) -> tuple[float, float]:
    """Worst gain deviation (dB) over 300-3400 Hz: up (mu-law in), down (PCM before mu-law if available)."""
    worst_up = worst_down = 0.0
    for freq in range(300, 3401, 50):
        x8 = audioop.lin2ulaw(to_pcm16(tone(freq, 8000)), 2)
        up = fit(settled(pcm16(make().to_model(x8)), 24000), freq, 24000)[0]
        gain = up / fit(settled(mulaw_decode(x8), 8000), freq, 8000)[0]
        worst_up = max(worst_up, abs(db(gain)))
        x24 = to_pcm16(tone(freq, 24000))
        converter = make()
        if isinstance(converter, audio.Transcoder):
            y = pcm16(converter.to_caller_pcm16(x24))
        else:
            y = mulaw_decode(converter.to_caller(x24))
        gain = fit(settled(y, 8000), freq, 8000)[0] / fit(settled(pcm16(x24), 24000), freq, 24000)[0]
        worst_down = max(worst_down, abs(db(gain)))
    return worst_up, worst_down


def round_trip_snr(make: Callable[[], Converter], speech8k: bytes) -> float:
    """SNR (dB) of 8k mu-law speech after to_model then to_caller, at the best whole-sample alignment."""
    converter = make()
    x, y = mulaw_decode(speech8k), mulaw_decode(converter.to_caller(converter.to_model(speech8k)))
    best = -np.inf
    for d in range(40):
        a, b = x[: x.size - d], y[d:]
        error = float(np.linalg.norm(b - a))
        best = max(best, db(float(np.linalg.norm(a)) / error) if error else np.inf)
    return float(best)


# -- report --------------------------------------------------------------------------------------------


def report_cost(rounds: int, ups: list[bytes], downs: list[bytes]) -> None:
    factories: dict[str, Callable[[], Converter]] = {"ours": audio.Transcoder, "stdlib": Stdlib}
    if soxr is not None:
        factories["soxr HQ"] = Soxr
    started = time.perf_counter()
    results = measure(factories, ups, downs, rounds)
    elapsed = time.perf_counter() - started
    print(f"## Cost per 20 ms frame, µs ({rounds} rounds x {FRAMES} frames, {elapsed:.1f} s)\n")
    print("| implementation | up median | up p99 | down median | down p99 | pair median | pair p99 |", end="")
    print(" calls/core |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    medians = {}
    for name, r in results.items():
        median = {k: statistics.median(v) for k, v in r.items()}
        medians[name] = median["pair"]
        cells = " | ".join(f"{median[k]:.1f} | {np.percentile(r[k], 99):.1f}" for k in ("up", "down", "pair"))
        print(f"| {name} | {cells} | {1e6 / (median['pair'] * 50):.0f} |")
    print(f"\nours / stdlib, pair median: {medians['ours'] / medians['stdlib']:.2f}")
    if soxr is None:
        print("soxr is not installed: skipped")

    print("\nOutput held back (most output owed but not returned after any call, ms):\n")
    print("| implementation | up | down |")
    print("|---|---:|---:|")
    for name, factory in factories.items():
        up_ms, down_ms = held_back_ms(factory(), ups, downs)
        print(f"| {name} | {up_ms:.2f} | {down_ms:.2f} |")

    print("\n## mu-law steps alone, µs per 20 ms frame (best of 7)\n")
    print("| step | lookup table | audioop | service.core.audio uses |")
    print("|---|---:|---:|---|")
    for label, table, stdlib, used in codec_costs():
        print(f"| {label} | {table:.2f} | {stdlib:.2f} | {used} |")


def report_quality(speech8: bytes) -> None:
    print("\n## Quality\n")
    print(f"Filter: {audio.FILTER_TAPS} taps ({audio.PHASE_TAPS} per phase), ", end="")
    print(f"pass band to {audio.PASS_EDGE_HZ:.0f} Hz,")
    print(
        f"stop band from {audio.STOP_EDGE_HZ:.0f} Hz, {audio.TO_MODEL_DELAY_MS:.2f} ms delay per direction.\n"
    )
    print("24k -> 8k, a -6 dBFS tone: output in dB re input; the folded tone and all output (RMS)\n")
    print("| tone | ours PCM folded | ours PCM all | ours mu-law folded | ours mu-law all |", end="")
    print(" stdlib mu-law folded |")
    print("|---|---:|---:|---:|---:|---:|")
    for freq in (5000, 6000, 9000, 11000):
        cells = [*alias_levels(freq, audio.Transcoder), alias_levels(freq, Stdlib)[2]]
        print(f"| {freq / 1000:g} kHz | " + " | ".join(f"{v:.1f}" for v in cells) + " |")

    print("\nPass band 300-3400 Hz, worst deviation, dB:\n")
    print("| implementation | up, 8k -> 24k | down, 24k -> 8k |")
    print("|---|---:|---:|")
    for name, make, down_kind in (("ours", audio.Transcoder, "PCM"), ("stdlib", Stdlib, "after mu-law")):
        up_dev, down_dev = passband(make)
        print(f"| {name} | {up_dev:.3f} | {down_dev:.3f} ({down_kind}) |")

    stdlib_snr = round_trip_snr(Stdlib, speech8)
    stdlib_text = (
        f"{stdlib_snr:.1f} dB" if np.isfinite(stdlib_snr) else "exact (its interpolation returns its input)"
    )
    print("\nRound trip 8k -> 24k -> 8k of telephone-band speech-like mu-law, SNR after alignment:")
    print(f"ours {round_trip_snr(audio.Transcoder, speech8):.1f} dB; stdlib {stdlib_text}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Cost and quality of service.core.audio.Transcoder")
    parser.add_argument("--rounds", type=int, default=40, help="passes over the 500 frames (default 40)")
    args = parser.parse_args()
    speech24 = to_pcm16(speech_like(FRAMES * 0.02, 24000, seed=1))
    speech8 = audioop.lin2ulaw(to_pcm16(speech_like(FRAMES * 0.02, 8000, seed=2, band_hz=(300, 3400))), 2)
    report_cost(args.rounds, frames_of(speech8, 160), frames_of(speech24, 960))
    report_quality(speech8)


if __name__ == "__main__":
    main()
