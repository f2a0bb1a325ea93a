"""Uplink: the caller's audio on its way to the model, on a clock the model can trust. Pure.

The server VAD's ``audio_start_ms`` / ``audio_end_ms`` count the audio appended, so every millisecond of
Twilio's stream is appended once: a jump in ``media.timestamp`` (Twilio leaves out silent or lost
frames) is filled with mu-law silence. A peer cannot turn that into a flood:

- a gap is filled once, then the clock is re-anchored on the frame that showed it (a timestamp that
  jumps 1e9 ms ahead costs at most one fill, and the following frames are contiguous again);
- fills draw on a budget of :data:`MAX_GAP_FILL_MS` that refills at the pace of wall time (no more
  silence than time that really passed, beyond one burst), and at most :data:`MAX_FILL_PER_CALL_MS`
  per call;
- a timestamp that goes backwards re-anchors without filling; a missing or invalid one (``None``
  from the parser) counts the frame as contiguous. Warnings about either are rate-limited.

While the caller speaks and Twilio sends nothing for :data:`SILENCE_INJECT_AFTER_S`, one second of
silence is appended so that the server VAD can close the turn (phone legs may omit silent audio).

:class:`QuietBatch` lets quiet audio wait, up to :data:`QUIET_BATCH_MS`, so that it goes to the model in one
append instead of five: only while the server VAD does not hear the caller, and only frames with no
sample above :data:`QUIET_LEVEL` (about -48 dBFS). Any other frame sends the batch and itself at once,
so the VAD hears the onset of speech (a barge-in) without delay: the saving costs no latency where
latency matters. (Each append is a websocket message, a base64 encoding and a write: most of a call's
CPU is per message.)

:class:`Utterance` keeps what the model was sent of the utterance in progress (from a little before
the server VAD heard it start), so that a session replacing a lost one hears the caller's whole
sentence, not its tail.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from service.core.audio import MULAW_MAGNITUDE, MULAW_SILENCE
from service.wire import twilio

log = logging.getLogger(__name__)

FRAME_MS = twilio.FRAME_MS
BYTES_PER_MS = twilio.BYTES_PER_MS
SILENCE_BYTE = bytes([MULAW_SILENCE])
MAX_GAP_FILL_MS = 10_000
"""The most silence one gap gets, and the fill budget's burst: it refills 1 ms per ms of wall time."""
MAX_FILL_PER_CALL_MS = 600_000
GAP_LOG_MS = 100
SILENCE_INJECT_AFTER_S = 0.75
SILENCE_INJECT_MS = 1_000
UTTERANCE_LEAD_MS = 2_000
"""Audio kept while the caller is quiet: the VAD's ``speech_started`` comes after the speech began,
and points back into this (with its ``prefix_padding_ms``, 300 by default)."""
MAX_UTTERANCE_MS = 8_000
"""The most of one utterance kept for a new session (24 kHz PCM16: 48 kB a second)."""
QUIET_LEVEL = 128
"""A frame whose samples are all at most this (|linear PCM16|) may wait in the quiet batch."""
QUIET_BATCH_MS = 100
_QUIET_CODES = bytes(code for code in range(256) if MULAW_MAGNITUDE[code] <= QUIET_LEVEL)
WARN_EVERY_S = 10.0
"""A repeated warning about a peer's input is logged at most this often (with a count of the rest)."""


class Throttle:
    """Rate-limits one kind of warning: ``ready(now)`` is True at most once per ``every_s``."""

    def __init__(self, every_s: float = WARN_EVERY_S) -> None:
        self.every_s = every_s
        self.suppressed = 0
        self._last: float | None = None

    def ready(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.every_s:
            self.suppressed += 1
            return False
        self._last = now
        return True

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


@dataclass(slots=True)
class UplinkStats:
    frames_in: int = 0
    caller_ms: int = 0
    """ms of caller audio appended or held (filled silence included)."""
    filled_ms: int = 0
    media_gaps: int = 0
    clock_resets: int = 0
    """Timestamps that went backwards, or whose gap was larger than the fill allowed."""
    bad_timestamps: int = 0
    dropped_ms: int = 0
    """Caller audio that reached no model (the model socket was being replaced)."""
    replayed_ms: int = 0
    """Caller audio sent again to a new session (the utterance the lost session was hearing)."""


class Uplink:
    """Per-call input clock, gap filling and silence injection."""

    def __init__(self) -> None:
        self.stats = UplinkStats()
        self.last_media_at = 0.0
        self._expected_ms: int | None = None  # the timestamp the next frame should carry
        self._budget_ms = float(MAX_GAP_FILL_MS)
        self._budget_at: float | None = None
        self._bad_ts = Throttle()
        self._backwards = Throttle()

    def start(self, now: float) -> None:
        self.last_media_at = now

    def frame(self, media: twilio.Media, now: float) -> bytes:
        """The mu-law to append for this frame: its payload, after any silence its timestamp calls for."""
        stats = self.stats
        stats.frames_in += 1
        self.last_media_at = now
        audio = media.payload
        ms = len(audio) // BYTES_PER_MS
        ts = media.timestamp_ms
        expected = self._expected_ms
        if ts is None:
            stats.bad_timestamps += 1
            if self._bad_ts.ready(now):
                log.warning(
                    "twilio: media without a valid timestamp taken as contiguous (%d more not logged)",
                    self._bad_ts.take_suppressed(),
                )
            self._expected_ms = None if expected is None else expected + ms
        elif expected is None:
            self._expected_ms = ts + ms
        else:
            gap_ms = ts - expected
            if gap_ms >= FRAME_MS:
                fill_ms = self._fill_allowed(gap_ms, now)
                stats.media_gaps += 1
                if fill_ms < gap_ms:
                    stats.clock_resets += 1
                if gap_ms > GAP_LOG_MS:
                    log.info("twilio: %d ms media gap filled with %d ms of silence", gap_ms, fill_ms)
                if fill_ms:
                    stats.filled_ms += fill_ms
                    audio = SILENCE_BYTE * (fill_ms * BYTES_PER_MS) + audio
                self._expected_ms = ts + ms  # re-anchored: a gap is filled once, whatever was allowed
            elif gap_ms <= -FRAME_MS:
                stats.clock_resets += 1
                if self._backwards.ready(now):
                    log.warning(
                        "twilio: media timestamp went back %d ms; clock re-anchored (%d more not logged)",
                        -gap_ms,
                        self._backwards.take_suppressed(),
                    )
                self._expected_ms = ts + ms
            else:
                self._expected_ms = expected + ms  # jitter under a frame: keep counting
        stats.caller_ms += len(audio) // BYTES_PER_MS
        return audio

    def _fill_allowed(self, gap_ms: int, now: float) -> int:
        if self._budget_at is not None:
            refill = (now - self._budget_at) * 1000
            self._budget_ms = min(float(MAX_GAP_FILL_MS), self._budget_ms + max(0.0, refill))
        self._budget_at = now
        left_in_call = MAX_FILL_PER_CALL_MS - self.stats.filled_ms
        fill_ms = max(0, min(gap_ms, int(self._budget_ms), left_in_call))
        self._budget_ms -= fill_ms
        return fill_ms

    def silence_due(self, caller_speaking: bool) -> float | None:
        """When silence must be injected (the caller speaks and Twilio has gone quiet), or None."""
        return self.last_media_at + SILENCE_INJECT_AFTER_S if caller_speaking else None

    def inject_silence(self, now: float) -> bytes:
        log.info(
            "no media for %.0f ms while the caller speaks: appending %d ms of silence",
            (now - self.last_media_at) * 1000,
            SILENCE_INJECT_MS,
        )
        self.last_media_at = now
        self.stats.filled_ms += SILENCE_INJECT_MS
        self.stats.caller_ms += SILENCE_INJECT_MS
        if self._expected_ms is not None:
            self._expected_ms += SILENCE_INJECT_MS
        return SILENCE_BYTE * (SILENCE_INJECT_MS * BYTES_PER_MS)


def is_quiet(mulaw: bytes) -> bool:
    """No sample above :data:`QUIET_LEVEL` (one C pass: delete the quiet codes, see if anything is left)."""
    return not mulaw.translate(None, _QUIET_CODES)


class QuietBatch:
    """Quiet caller audio waiting to go to the model in one append (see the module docstring)."""

    def __init__(self, limit_ms: int = QUIET_BATCH_MS) -> None:
        self.limit_ms = limit_ms
        self._frames: list[bytes] = []
        self.ms = 0

    def add(self, mulaw: bytes, ms: int) -> bool:
        """Keep a quiet frame; True when the batch is full and must go."""
        self._frames.append(mulaw)
        self.ms += ms
        return self.ms >= self.limit_ms

    def take(self) -> bytes:
        frames, self._frames, self.ms = self._frames, [], 0
        return frames[0] if len(frames) == 1 else b"".join(frames)


class Utterance:
    """The audio the live session was sent of the caller's utterance in progress, bounded.

    Positions are on the session's input clock (ms appended to it), the clock of the VAD's
    ``audio_start_ms``, which already includes its ``prefix_padding_ms``: the utterance is kept from
    there. While the caller is not speaking, the last :data:`UTTERANCE_LEAD_MS` are kept (the VAD
    announces speech a little after it began).
    """

    def __init__(self, lead_ms: int = UTTERANCE_LEAD_MS, max_ms: int = MAX_UTTERANCE_MS) -> None:
        self.lead_ms = lead_ms
        self.max_ms = max_ms
        self.speaking = False
        self._chunks: deque[tuple[bytes, int, int]] = deque()  # (PCM, start ms, ms)
        self._session_ms = 0  # the live session's input clock

    def add(self, pcm: bytes, ms: int) -> None:
        """``ms`` of audio were appended to the live session."""
        self._chunks.append((pcm, self._session_ms, ms))
        self._session_ms += ms
        self._keep_from(self._session_ms - (self.max_ms if self.speaking else self.lead_ms))

    def started(self, audio_start_ms: int) -> None:
        self.speaking = True
        self._keep_from(audio_start_ms)

    def stopped(self) -> None:
        self.speaking = False
        self._keep_from(self._session_ms - self.lead_ms)

    def _keep_from(self, start_ms: int) -> None:
        chunks = self._chunks
        while chunks and chunks[0][1] + chunks[0][2] <= start_ms:
            chunks.popleft()

    def audio(self) -> list[bytes]:
        """What to send a new session, if the caller is speaking (nothing otherwise)."""
        return [pcm for pcm, _, _ in self._chunks] if self.speaking else []

    @property
    def ms(self) -> int:
        return sum(ms for _, _, ms in self._chunks) if self.speaking else 0

    def new_session(self) -> None:
        """A new session: its clock starts with what :meth:`audio` gave it (if anything)."""
        kept = list(self._chunks) if self.speaking else []
        self._chunks.clear()
        self._session_ms = 0
        for pcm, _, ms in kept:
            self.add(pcm, ms)
