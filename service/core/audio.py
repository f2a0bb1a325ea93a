"""Streaming transcoder between the caller's 8 kHz mu-law and the model's 24 kHz PCM16.

One :class:`Transcoder` per call, pure and synchronous: bytes in, bytes out, no I/O, no clock. Each direction
keeps its filter history between calls, so converting a stream in 20 ms frames, 10 ms frames or any odd sizes
gives the same samples as converting it whole, and every call returns its share of the output at once: no
look-ahead, no bursts.

    to_model(mulaw_8k)    8 kHz mu-law    -> 24 kHz PCM16 LE, exactly 3 samples per input byte
    to_caller(pcm16_24k)  24 kHz PCM16 LE -> 8 kHz mu-law, floor(samples / 3) over the stream: the 0-2
                          samples that do not yet make an output sample are carried to the next call

Filter design (change it knowingly)
-----------------------------------
Both directions use one linear-phase low-pass prototype at 24 kHz, split into 3 polyphase branches:

- ``FILTER_TAPS = 81`` taps (``PHASE_TAPS = 27`` per branch), designed minimax (equiripple) by Lawson's
  iteratively reweighted least squares (:func:`design_lowpass`), no window: pass band 0-3400 Hz
  (``PASS_EDGE_HZ``), stop band from 4600 Hz (``STOP_EDGE_HZ``), stop-band error weighted 30x
  (``STOP_WEIGHT``); the -6 dB point is at 3.9 kHz. ``PHASE_TAPS`` must stay odd.
- Response: pass-band ripple +-0.03 dB; at least 85 dB of rejection from 4.6 kHz up, so nothing audible folds
  into the phone band (what folds at all lands above 3.4 kHz). Upward the same response removes the
  images of the 8 kHz spectrum.
- Delay: (81 - 1) / 2 = 40 samples at 24 kHz = 1.67 ms per direction (``TO_MODEL_DELAY_MS``,
  ``TO_CALLER_DELAY_MS``); downward that is 38 samples of group delay plus at most 2 samples held until a
  whole output sample exists. Because the tap count is odd and a multiple of 3, a round trip
  8k -> 24k -> 8k delays the signal by a whole number of samples: ``ROUND_TRIP_DELAY_8K = 26`` (3.25 ms).
- Upward each branch is normalised to a DC gain of exactly 1 (x3 overall), so a constant stays constant with
  no 8 kHz image; downward the taps sum to 1.
- Six more taps add 1/8 ms of delay and about 0.2 us per direction per 20 ms frame and buy roughly 5 dB of
  stop band (or a narrower transition). ``tests/test_audio.py`` asserts the quality bars, so a change that
  breaks one fails loudly; ``.venv/bin/python -m bench.audio`` prints the figures and the cost.

Implementation
--------------
numpy only, no per-sample Python loops. Each direction appends the new samples to a preallocated float32
buffer, right after the history the filter needs, and computes every output of the call with one product
against a fixed strided window view of that buffer: upward a BLAS product of the 3 x 27 branch matrix with the
27-sample windows, downward ``np.vecdot`` of the 81-sample windows (stepping 3 samples) with the taps. The
history moves back to the front only when the next input would not fit (once a second with 20 ms frames).

Rounding, saturation and mu-law encoding are one table lookup: the taps are scaled by 2, the output is
truncated to an integer index, and a precomputed table (2**19 entries) maps that index to the rounded,
saturated int16 sample, or to its G.711 mu-law byte. Decoding uses ``audioop.ulaw2lin`` (the ``audioop-lts``
package on Python 3.13+). Both choices follow ``bench/audio.py``: ``audioop`` decodes a 20 ms frame faster
than a numpy lookup table (about 1.0 against 1.5 us), the table encodes much faster than clip + round +
``audioop.lin2ulaw`` (about 1.0 against 5 us). The encoding table is bit-exact with ``audioop.lin2ulaw``
(asserted in the tests). Designing the filter and building the tables takes about 20 ms at import.
"""

from __future__ import annotations

import warnings
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

with warnings.catch_warnings():
    # Python 3.11-3.12 warn that audioop goes away in 3.13, where the audioop-lts package provides it.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import audioop

__all__ = [
    "CALLER_RATE_HZ",
    "FILTER_TAPS",
    "MODEL_RATE_HZ",
    "MULAW_MAGNITUDE",
    "MULAW_SILENCE",
    "PASS_EDGE_HZ",
    "PHASE_TAPS",
    "RATE_RATIO",
    "ROUND_TRIP_DELAY_8K",
    "STOP_EDGE_HZ",
    "STOP_WEIGHT",
    "TO_CALLER_DELAY_MS",
    "TO_MODEL_DELAY_MS",
    "AudioConverter",
    "Transcoder",
    "design_lowpass",
]

CALLER_RATE_HZ: Final = 8000
MODEL_RATE_HZ: Final = 24_000
RATE_RATIO: Final = MODEL_RATE_HZ // CALLER_RATE_HZ
MULAW_SILENCE: Final = 0xFF

PHASE_TAPS: Final = 27
FILTER_TAPS: Final = PHASE_TAPS * RATE_RATIO
PASS_EDGE_HZ: Final = 3400.0
STOP_EDGE_HZ: Final = 4600.0
STOP_WEIGHT: Final = 30.0

_DELAY_24K: Final = (FILTER_TAPS - 1) // 2
TO_MODEL_DELAY_MS: Final = _DELAY_24K * 1000 / MODEL_RATE_HZ
TO_CALLER_DELAY_MS: Final = _DELAY_24K * 1000 / MODEL_RATE_HZ
ROUND_TRIP_DELAY_8K: Final = (2 * _DELAY_24K - (RATE_RATIO - 1)) // RATE_RATIO

_GRID_PER_TAP: Final = 8  # design grid density
_LAWSON_ITERATIONS: Final = 30  # converged to 0.1 dB of the optimum
_UP_HISTORY: Final = PHASE_TAPS - 1  # input samples (8 kHz) kept between calls
_DOWN_HISTORY: Final = FILTER_TAPS - RATE_RATIO  # input samples (24 kHz) kept, not counting the carry
_UP_BLOCK: Final = 8000  # largest input (bytes) converted in one product: 1 s; longer input is split
_DOWN_BLOCK: Final = 24_000  # largest input (samples) converted in one product: 1 s
_INDEX_SIZE: Final = 1 << 19  # lookup table length; indices are trunc(2 * sample)
_FLOAT_BYTES: Final = 4


class AudioConverter(Protocol):
    """What the call logic needs from a transcoder; :class:`Transcoder` is the real one."""

    def to_model(self, mulaw_8k: bytes) -> bytes: ...

    def to_caller(self, pcm16_24k: bytes) -> bytes: ...

    def reset_to_caller(self) -> None: ...

    def flush_to_caller(self) -> bytes: ...


def design_lowpass(
    taps: int = FILTER_TAPS,
    pass_edge_hz: float = PASS_EDGE_HZ,
    stop_edge_hz: float = STOP_EDGE_HZ,
    stop_weight: float = STOP_WEIGHT,
) -> npt.NDArray[np.float64]:
    """The linear-phase low-pass prototype at 24 kHz (odd ``taps``), DC gain 1.

    Minimax by Lawson's algorithm: weighted least squares on a dense frequency grid, each iteration
    multiplying every grid point's weight by its error, which drives the solution towards the Chebyshev
    optimum. Pass band [0, pass_edge_hz], stop band [stop_edge_hz, 12 kHz], stop-band errors weighted
    ``stop_weight`` times the pass-band ones. Deterministic; a few ms.
    """
    half = (taps - 1) // 2
    grid = np.concatenate(
        [
            np.linspace(0.0, pass_edge_hz, _GRID_PER_TAP * half // 3),
            np.linspace(stop_edge_hz, MODEL_RATE_HZ / 2, _GRID_PER_TAP * half),
        ]
    )
    desired = (grid <= pass_edge_hz).astype(np.float64)
    band_weight = np.where(grid <= pass_edge_hz, 1.0, stop_weight)
    # amplitude response = basis @ a for the cosine coefficients a of a symmetric filter
    basis = np.cos(np.outer(2 * np.pi * grid / MODEL_RATE_HZ, np.arange(half + 1)))
    weight = np.full(grid.size, 1.0 / grid.size)
    a = np.zeros(half + 1)
    for _ in range(_LAWSON_ITERATIONS):
        weighted = basis.T * (weight * band_weight**2)
        a = np.linalg.solve(weighted @ basis, weighted @ desired)
        weight = weight * np.abs(basis @ a - desired) * band_weight
        weight /= weight.sum()
    h = np.concatenate([a[:0:-1] / 2, a[:1], a[1:] / 2])
    result: npt.NDArray[np.float64] = h / h.sum()
    return result


def _up_phases(h: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """(3, PHASE_TAPS): 2 x output sample 3j + p = sum_q phases[p, q] * x[j - (PHASE_TAPS - 1) + q]."""
    branches = h.reshape(PHASE_TAPS, RATE_RATIO).T  # branches[p, i] = h[3i + p]
    branches = branches / branches.sum(axis=1, keepdims=True)  # DC gain exactly 1 per branch
    return np.ascontiguousarray(2 * branches[:, ::-1], dtype=np.float32)


def _mulaw_encode(pcm16: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    """16-bit linear samples -> G.711 mu-law bytes, as ``audioop.lin2ulaw`` (it encodes the top 14 bits)."""
    v = pcm16 >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(v), 8159) + 33
    segment = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), magnitude)
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8)


def _rounding_table() -> npt.NDArray[np.int16]:
    """The rounded, saturated int16 sample for every index ``trunc(2 * y)``, negative indices from the end.

    Truncating 2y toward zero and then halving with rounding away from zero gives round(y) (ties away from
    zero), so one float->int cast and one lookup do rounding and saturation together. The table covers
    |y| < 131072, about twice the largest output the filters can produce (sum of |taps| x full scale).
    """
    index = np.arange(_INDEX_SIZE, dtype=np.int32)
    a = np.where(index >= _INDEX_SIZE // 2, index - _INDEX_SIZE, index)
    rounded = np.where(a < 0, a >> 1, (a + 1) >> 1)
    return np.clip(rounded, -32768, 32767).astype(np.int16)


_PROTOTYPE: Final = design_lowpass()
_UP_PHASES: Final = _up_phases(_PROTOTYPE)
_DOWN_TAPS: Final = np.ascontiguousarray(2 * _PROTOTYPE[::-1], dtype=np.float32)
_TO_PCM16: Final = _rounding_table()
_TO_MULAW: Final = _mulaw_encode(np.arange(-32768, 32768, dtype=np.int32))[_TO_PCM16.astype(np.int32) + 32768]
_FLUSH_INPUT: Final = bytes(2 * (FILTER_TAPS - 1))
MULAW_MAGNITUDE: Final = tuple(
    int(v) for v in np.abs(np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), np.int16).astype(np.int32))
)
"""|linear sample| of each mu-law code."""


def _windows(
    buffer: npt.NDArray[np.float32], shape: tuple[int, int], steps: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """A read-only view of ``buffer`` whose element (i, j) is buffer[i * steps[0] + j * steps[1]]."""
    strides = (steps[0] * _FLOAT_BYTES, steps[1] * _FLOAT_BYTES)
    view: npt.NDArray[np.float32] = as_strided(buffer, shape=shape, strides=strides, writeable=False)
    return view


class Transcoder:
    """Per-call streaming converter between Twilio's 8 kHz mu-law and the model's 24 kHz PCM16.

    Both directions start from silence and keep their filter state between calls.
    """

    __slots__ = (
        "_down_buffer",
        "_down_fill",
        "_down_pending",
        "_down_start",
        "_down_windows",
        "_up_buffer",
        "_up_start",
        "_up_windows",
    )

    def __init__(self) -> None:
        # Each buffer holds the history the filter needs followed by the new samples. Calls append further
        # along the buffer and only move the history back to the front when the next input would not fit.
        self._up_buffer = np.zeros(_UP_HISTORY + _UP_BLOCK, dtype=np.float32)
        self._up_start = 0  # where the history begins
        # column j: the PHASE_TAPS input samples that make output frame j (3 samples)
        self._up_windows = _windows(self._up_buffer, (PHASE_TAPS, _UP_BLOCK), (1, 1))
        self._down_buffer = np.zeros(_DOWN_HISTORY + RATE_RATIO - 1 + _DOWN_BLOCK, dtype=np.float32)
        self._down_start = 0  # where the history begins, a multiple of 3
        self._down_fill = _DOWN_HISTORY  # history + carried samples from there
        # row i: the FILTER_TAPS input samples that make output sample i
        rows = (RATE_RATIO - 1 + _DOWN_BLOCK) // RATE_RATIO
        self._down_windows = _windows(self._down_buffer, (rows, FILTER_TAPS), (RATE_RATIO, 1))
        self._down_pending = False  # input converted since the last reset or flush

    # -- caller -> model -------------------------------------------------------------------------------

    def to_model(self, mulaw_8k: bytes) -> bytes:
        """Convert 8 kHz mu-law to 24 kHz PCM16 LE: exactly 3 samples (6 bytes) per input byte."""
        return self._up(mulaw_8k)

    def _up(self, mulaw_8k: bytes | memoryview) -> bytes:
        size = len(mulaw_8k)
        if size > _UP_BLOCK:
            data = memoryview(mulaw_8k)
            return b"".join(self._up(data[start : start + _UP_BLOCK]) for start in range(0, size, _UP_BLOCK))
        if size == 0:
            return b""
        buffer = self._up_buffer
        start = self._up_start
        if start + _UP_HISTORY + size > buffer.size:
            buffer[:_UP_HISTORY] = buffer[start : start + _UP_HISTORY]
            start = 0
        end = start + _UP_HISTORY + size
        buffer[start + _UP_HISTORY : end] = np.frombuffer(audioop.ulaw2lin(mulaw_8k, 2), np.int16)
        frames = np.dot(_UP_PHASES, self._up_windows[:, start : start + size])  # [p, j]: 2 x sample 3j + p
        self._up_start = start + size
        pcm16: bytes = _TO_PCM16[frames.T.astype(np.intp, order="C")].tobytes()
        return pcm16

    # -- model -> caller -------------------------------------------------------------------------------

    def to_caller(self, pcm16_24k: bytes) -> bytes:
        """Convert 24 kHz PCM16 LE to 8 kHz mu-law; samples short of a whole output sample are carried.

        Raises ValueError for an odd byte count.
        """
        return _TO_MULAW[self._down(pcm16_24k)].tobytes()

    def to_caller_pcm16(self, pcm16_24k: bytes) -> bytes:
        """:meth:`to_caller` without the mu-law step: 8 kHz PCM16 LE, same filter and same state."""
        return _TO_PCM16[self._down(pcm16_24k)].tobytes()

    def reset_to_caller(self) -> None:
        """Forget the downward history and carry (barge-in): the next response starts from silence."""
        self._down_buffer[:_DOWN_HISTORY] = 0.0
        self._down_start = 0
        self._down_fill = _DOWN_HISTORY
        self._down_pending = False

    def flush_to_caller(self) -> bytes:
        """Emit the end of the downward stream (end of a response), then reset as :meth:`reset_to_caller`.

        Converts ``FILTER_TAPS - 1`` (80) zero samples after the input so far. That yields exactly the output
        samples whose filter window still covers real input: the 0-2 carried samples padded with zeros to a
        whole output sample, and the filter's tail (the delayed last 1.67 ms of the signal plus the decay).
        Returns 26 mu-law bytes when nothing was carried, 27 when 1 or 2 samples were; so the bytes returned
        by to_caller over a response plus the flush are ceil(samples / 3) + 26. Returns b"" when nothing was
        converted since the last reset or flush.
        """
        if not self._down_pending:
            return b""
        tail = self.to_caller(_FLUSH_INPUT)
        self.reset_to_caller()
        return tail

    def _down(self, pcm16_24k: bytes | memoryview) -> npt.NDArray[np.intp]:
        """Table indices (2 x each complete output sample, truncated) for the input; updates the state."""
        size = len(pcm16_24k)
        if size & 1:
            raise ValueError(f"PCM16 audio needs whole 2-byte samples, got an odd byte count ({size})")
        if size > 2 * _DOWN_BLOCK:
            data = memoryview(pcm16_24k)
            step = 2 * _DOWN_BLOCK
            pieces = [self._down(data[start : start + step]) for start in range(0, size, step)]
            joined: npt.NDArray[np.intp] = np.concatenate(pieces)
            return joined
        buffer = self._down_buffer
        start = self._down_start
        fill = self._down_fill
        if start + fill + (size >> 1) > buffer.size:
            buffer[:fill] = buffer[start : start + fill]
            start = 0
        end = start + fill + (size >> 1)
        buffer[start + fill : end] = np.frombuffer(pcm16_24k, "<i2")
        outputs = (end - start - _DOWN_HISTORY) // RATE_RATIO
        windows = self._down_windows[start // RATE_RATIO : start // RATE_RATIO + outputs]
        index: npt.NDArray[np.intp] = np.vecdot(windows, _DOWN_TAPS).astype(np.intp)  # numpy >= 2.0
        self._down_start = start + RATE_RATIO * outputs
        self._down_fill = end - self._down_start
        self._down_pending = self._down_pending or size > 0
        return index
