"""DTMF keys as in-band audio: the tones the agent plays into the call, and a detector for them. Pure.

Media Streams have no message to send digits, so the agent "presses" keys by playing the tones in the
stream, as 8 kHz G.711 mu-law (what Twilio plays). The signal follows ITU-T Q.23: each key is the sum of
one low-group ("row") and one high-group ("column") frequency, exact to the hertz::

                1209 Hz  1336 Hz  1477 Hz  1633 Hz
        697 Hz     1        2        3        A
        770 Hz     4        5        6        B
        852 Hz     7        8        9        C
        941 Hz     *        0        #        D

- :func:`tones` renders a string of keys: for each key ``tone_ms`` of tone (3 ms raised-cosine edges,
  so nothing splatters outside the band) then ``gap_ms`` of silence. Levels are per frequency, in dBFS
  where a full-scale sine (peak 32768) is 0 dBFS: the low-group tone at ``level_dbfs``, the high-group
  tone :data:`TWIST_DB` (2 dB) above it, the usual pre-emphasis of DTMF senders. A mu-law full-scale sine
  is +3.17 dBm0, so the default -10 dBFS is about -6.8 dBm0 (low) and -4.8 dBm0 (high) per frequency:
  well inside the receivers' operating range of ITU-T Q.24 (about 0 to -25 dBm0 per frequency, twist
  within +-4 dB; Q.24 lists each administration's values, these are the common ones). Tones and
  pauses shorter than 40 ms are refused: Q.24 receivers need at least that much to register a key or
  to tell two presses of the same key apart.
- :func:`detect` finds the keys in mu-law audio and returns them as a string; :func:`scan` also says
  where each one is. A Goertzel filter per DTMF frequency (probed at its nominal value and 1.5% either
  side, the deviation a Q.24 receiver must accept) runs over blocks of 205 samples (25.6 ms, the
  classic size: about 39 Hz of resolution) every 10 ms. A block holds a key when the strongest row
  and column tones are both at least :data:`MIN_TONE_DBFS`, their twist is within
  :data:`MAX_FORWARD_TWIST_DB` (high group louder) / :data:`MAX_REVERSE_TWIST_DB` (low group louder),
  each beats the others of its group by :data:`MIN_GROUP_MARGIN_DB`, and together they carry at least
  :data:`MIN_TONE_SHARE` of the block's energy. That last test rejects speech and noise, and means a
  block must be mostly tone, so a key needs two such blocks in a row: about 30-35 ms of tone. A key
  ends after two blocks without it (a 40 ms pause gives four). Silence, noise, speech and the call
  progress tones (dial tone, ringback, busy) give nothing.

No I/O, no clock: bytes in, bytes (or digits) out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

RATE_HZ = 8_000
ROW_HZ = (697, 770, 852, 941)
COLUMN_HZ = (1209, 1336, 1477, 1633)
KEYPAD = ("123A", "456B", "789C", "*0#D")
#: Every key and its (row, column) frequencies in Hz.
FREQUENCIES: dict[str, tuple[int, int]] = {
    key: (ROW_HZ[r], COLUMN_HZ[c]) for r, row in enumerate(KEYPAD) for c, key in enumerate(row)
}
DIGITS = frozenset(FREQUENCIES)

TWIST_DB = 2.0
"""How much louder the high-group tone is sent than the low-group tone."""
MIN_TONE_MS = 40
MIN_GAP_MS = 40
RAMP_MS = 3
FULL_SCALE = 32768.0  # the peak of a 0 dBFS sine
MULAW_MAX = 32124  # the largest magnitude mu-law can carry (16-bit scale)
DBM0_AT_0_DBFS = 3.17  # mu-law: a full-scale sine is +3.17 dBm0 (G.711 digital milliwatt)

BLOCK = 205
HOP = 80
MIN_TONE_DBFS = -36.0
MAX_FORWARD_TWIST_DB = 8.0  # high group louder than low
MAX_REVERSE_TWIST_DB = 4.0  # low group louder than high
MIN_GROUP_MARGIN_DB = 8.0
MIN_TONE_SHARE = 0.8
MIN_BLOCKS = 2


@dataclass(frozen=True, slots=True)
class KeyTone:
    """One key found by :func:`scan`: where its tone starts and ends, in ms from the start of the audio
    (to the resolution of the detector's 10 ms hop)."""

    digit: str
    start_ms: float
    end_ms: float


# --- G.711 mu-law ----------------------------------------------------------------------------------

_BIAS = 0x84


def _decode_table() -> npt.NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


_MULAW_TO_PCM = _decode_table()


def mulaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """mu-law bytes -> 16-bit samples."""
    return _MULAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(samples: npt.NDArray[np.int16]) -> bytes:
    """16-bit samples -> mu-law bytes (the G.711 segment encoder; 0 encodes as 0xFF)."""
    x = samples.astype(np.int32) >> 2
    sign = np.where(x < 0, 0x00, 0x80)
    magnitude = np.minimum(np.minimum(np.abs(x), 8159) + (_BIAS >> 2), 0x1FFF)
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 5
    mantissa = (magnitude >> (exponent + 1)) & 0x0F
    codes = (sign | ((7 - exponent) << 4) | (0x0F - mantissa)) & 0xFF
    return bytes(codes.astype(np.uint8).tobytes())


# --- tones -----------------------------------------------------------------------------------------


def _amplitude(dbfs: float) -> float:
    return FULL_SCALE * 10 ** (dbfs / 20)


def check_digits(digits: str) -> str:
    """``digits`` if every character is a DTMF key (``0-9 * # A-D``); else ValueError naming the first
    one that is not."""
    for i, ch in enumerate(digits):
        if ch not in DIGITS:
            raise ValueError(f"{ch!r} (position {i}) is not a DTMF key: use 0-9, *, # and A-D")
    return digits


def tones(digits: str, tone_ms: int = 80, gap_ms: int = 80, level_dbfs: float = -10) -> bytes:
    """``digits`` as 8 kHz mu-law DTMF: per key ``tone_ms`` of tone then ``gap_ms`` of silence (so two
    renderings concatenate cleanly). ``level_dbfs`` is the low-group tone's level; the high-group tone
    is :data:`TWIST_DB` louder. ValueError for a character that is not a key, a tone or gap shorter
    than 40 ms, or a level that would clip."""
    check_digits(digits)
    if tone_ms < MIN_TONE_MS or gap_ms < MIN_GAP_MS:
        raise ValueError(f"tone_ms and gap_ms must be at least {MIN_TONE_MS} ms (ITU-T Q.24)")
    low, high = _amplitude(level_dbfs), _amplitude(level_dbfs + TWIST_DB)
    if low + high > MULAW_MAX:
        raise ValueError(f"level_dbfs {level_dbfs} clips: the two tones together exceed full scale")
    n = tone_ms * RATE_HZ // 1000
    t = np.arange(n) / RATE_HZ
    ramp_n = RAMP_MS * RATE_HZ // 1000
    envelope = np.ones(n)
    edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_n) + 0.5) / ramp_n)
    envelope[:ramp_n], envelope[n - ramp_n :] = edge, edge[::-1]
    gap = b"\xff" * (gap_ms * RATE_HZ // 1000)
    out: list[bytes] = []
    for key in digits:
        row, column = FREQUENCIES[key]
        signal = (low * np.sin(2 * np.pi * row * t) + high * np.sin(2 * np.pi * column * t)) * envelope
        out += [mulaw_encode(np.round(signal).astype(np.int16)), gap]
    return b"".join(out)


# --- detection ---------------------------------------------------------------------------------------

_BASE_HZ = np.array([*ROW_HZ, *COLUMN_HZ], dtype=float)
FREQUENCY_TOLERANCE = 0.015
"""Q.24: a receiver must operate with each frequency off by up to 1.5%: each one is probed at its
nominal value and 1.5% either side, and the best of the three counts."""
_PROBES_HZ = np.outer([1 - FREQUENCY_TOLERANCE, 1.0, 1 + FREQUENCY_TOLERANCE], _BASE_HZ).ravel()


def _goertzel(blocks: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per block (rows) and frequency of :data:`_BASE_HZ` (columns): the energy of the sinusoid at that
    frequency (the best of its three probes), scaled so that a tone filling a block scores the tone's
    energy in it (its sum of squares)."""
    coeff = 2 * np.cos(2 * np.pi * _PROBES_HZ / RATE_HZ)
    s1 = np.zeros((blocks.shape[0], len(_PROBES_HZ)))
    s2 = np.zeros_like(s1)
    for n in range(blocks.shape[1]):
        s0 = blocks[:, n, None] + coeff * s1 - s2
        s2, s1 = s1, s0
    power = (s1 * s1 + s2 * s2 - coeff * s1 * s2) * 2 / blocks.shape[1]
    best: npt.NDArray[np.float64] = power.reshape(len(blocks), 3, len(_BASE_HZ)).max(axis=1)
    return best


def _db(ratio: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    result: npt.NDArray[np.float64] = 10 * np.log10(np.maximum(ratio, 1e-20))
    return result


def _block_keys(samples: npt.NDArray[np.float64]) -> list[str | None]:
    """The key each detector block holds, if any."""
    if len(samples) < BLOCK:
        return []
    blocks = np.lib.stride_tricks.sliding_window_view(samples, BLOCK)[::HOP]
    power = _goertzel(blocks)
    energy = np.einsum("ij,ij->i", blocks, blocks)
    rows, columns = power[:, :4], power[:, 4:]
    r, c = rows.argmax(axis=1), columns.argmax(axis=1)
    index = np.arange(len(blocks))
    row_p, column_p = rows[index, r], columns[index, c]
    row_rest = np.sort(rows, axis=1)[:, -2]
    column_rest = np.sort(columns, axis=1)[:, -2]
    floor = BLOCK / 2 * 10 ** (MIN_TONE_DBFS / 10)  # the energy of a tone at MIN_TONE_DBFS
    row_p, column_p = np.maximum(row_p, 1e-20), np.maximum(column_p, 1e-20)
    twist = _db(column_p / row_p)
    ok = (
        (row_p >= floor)
        & (column_p >= floor)
        & (twist <= MAX_FORWARD_TWIST_DB)
        & (twist >= -MAX_REVERSE_TWIST_DB)
        & (_db(row_p / np.maximum(row_rest, 1e-20)) >= MIN_GROUP_MARGIN_DB)
        & (_db(column_p / np.maximum(column_rest, 1e-20)) >= MIN_GROUP_MARGIN_DB)
        & (row_p + column_p >= MIN_TONE_SHARE * energy)
    )
    return [KEYPAD[int(r[i])][int(c[i])] if ok[i] else None for i in range(len(blocks))]


def scan(mulaw: bytes) -> list[KeyTone]:
    """Every key in ``mulaw`` (8 kHz G.711 mu-law), in order, with where its tone is."""
    samples = mulaw_decode(mulaw).astype(np.float64) / FULL_SCALE
    found: list[KeyTone] = []
    current: str | None = None
    first = last = 0
    misses = 0

    def close() -> None:
        if current is not None and last - first + 1 >= MIN_BLOCKS:
            end = (last * HOP + BLOCK) * 1000 / RATE_HZ
            found.append(KeyTone(current, first * HOP * 1000 / RATE_HZ, end))

    for i, key in enumerate(_block_keys(samples)):
        if key is not None and key == current:
            last, misses = i, 0
        elif key is not None:
            close()
            current, first, last, misses = key, i, i, 0
        elif current is not None:
            misses += 1
            if misses >= 2:
                close()
                current = None
    close()
    return found


def detect(mulaw: bytes) -> str:
    """The keys in ``mulaw`` (8 kHz G.711 mu-law), in order; "" when there are none."""
    return "".join(tone.digit for tone in scan(mulaw))
