"""The per-call state machine: the one place where a call's decisions are made.

Pure and synchronous: it never reads a clock, a socket or the environment. The bridge feeds it parsed
events from both peers (with ``now``, monotonic seconds) and executes the commands it returns, in order.
Tests drive it the same way, so they read like transcripts::

    call = Call(authorize=..., transcoder=Transcoder(), default_model="gpt-realtime-2.1")
    call.begin(now=0.0)                      -> [ConnectRealtime(model)]   (pre-warm while Twilio says hello)
    call.realtime_opened(now)                -> []
    call.receive_twilio(twilio.Start, now)   -> [UpdateSession(...), AppendAudio(...) ...]
    call.receive_realtime(realtime.AudioDelta, now) -> [SendMark(start), SendMedia, SendMark, ...]
    call.receive_realtime(realtime.SpeechStarted, now) -> [SendClear, TruncateItem(...)]
    call.receive_timeout(now) whenever now >= call.next_deadline()

Policies it implements (see ``shared/reference/lessons.md``): input clock aligned to Twilio timestamps,
gaps filled with silence; outbound audio in whole 20 ms frames each followed by a mark; barge-in through
the generation-tagged :class:`~service.core.playback.PlaybackLedger`; greeting after ``start`` and
``session.updated``; fatal model errors and either socket closing end the call once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from service.agents import Agent
from service.core.audio import MULAW_SILENCE, AudioConverter
from service.core.playback import PlaybackLedger
from service.core.playout import Playout
from service.wire import realtime, twilio

log = logging.getLogger(__name__)

FRAME_MS = twilio.FRAME_MS
SILENCE_BYTE = bytes([MULAW_SILENCE])
MAX_GAP_FILL_MS = 10_000
"""A jump in Twilio timestamps longer than this is filled only up to this much silence."""
GAP_LOG_MS = 100
SILENCE_INJECT_AFTER_S = 0.75
SILENCE_INJECT_MS = 1_000
"""While the caller is speaking and Twilio sends nothing for 0.75 s, append 1 s of silence so the
server VAD can close the turn (phone legs may omit silent audio)."""
START_TIMEOUT_S = 10.0
MAX_PENDING_INPUT_MS = 30_000
"""Caller audio held while the model socket opens. More than this means the model is not coming."""
SUPPORTED_FORMAT = ("audio/x-mulaw", 8000, 1)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a stream may not go on (bad token, unknown agent...)."""

    reason: str


Authorize: TypeAlias = Callable[[twilio.Start, float], "Agent | Rejected"]


# --- control commands (besides the peers' own) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectRealtime:
    """Open (or replace) the model socket for ``model``."""

    model: str


@dataclass(frozen=True, slots=True)
class EndCall:
    """Close both sockets. ``twilio_close_code`` 1000 lets the TwiML after ``</Connect>`` run."""

    reason: str
    twilio_close_code: int = 1000


Command: TypeAlias = twilio.Command | realtime.Command | ConnectRealtime | EndCall


@dataclass(slots=True)
class CallStats:
    """What the summary line reports."""

    frames_in: int = 0
    caller_ms: int = 0
    filled_ms: int = 0
    media_gaps: int = 0
    barge_ins: int = 0
    truncations: int = 0
    truncate_errors: int = 0
    dropped_deltas: int = 0
    invalid_twilio: int = 0
    invalid_realtime: int = 0
    responses: int = 0
    usage: realtime.Usage = field(default_factory=realtime.Usage)
    first_audio_ms: list[int] = field(default_factory=list)
    """Per response: caller's end of speech (or call start) to the echo of the start mark."""


def session_for(agent: Agent) -> dict[str, Any]:
    """The ``session.update`` body for ``agent``."""
    td = agent.turn_detection
    turn_detection: dict[str, Any] = {
        "type": td.type,
        "threshold": td.threshold,
        "prefix_padding_ms": td.prefix_padding_ms,
        "silence_duration_ms": td.silence_duration_ms,
        "create_response": td.create_response,
        "interrupt_response": td.interrupt_response,
    }
    if td.idle_timeout_ms is not None:
        turn_detection["idle_timeout_ms"] = td.idle_timeout_ms
    return realtime.session_config(
        instructions=agent.instructions,
        voice=agent.voice_param,
        turn_detection=turn_detection,
        transcription_model=agent.transcription_model,
        noise_reduction=agent.noise_reduction,
    )


def greeting_instructions(greeting: str) -> str:
    return f'Greet the caller by saying exactly this, and nothing else: "{greeting}"'


class Call:
    """One phone call, from the Twilio socket's accept to the end of both sockets."""

    def __init__(
        self,
        *,
        authorize: Authorize,
        transcoder: AudioConverter,
        default_model: str,
        truncate_slack_ms: int = 0,
    ) -> None:
        self._authorize = authorize
        self._audio = transcoder
        self._model = default_model
        self.ledger = PlaybackLedger(truncate_slack_ms)
        self.stats = CallStats()
        self.agent: Agent | None = None
        self.call_sid: str | None = None
        self.stream_sid: str | None = None
        self.end_reason: str | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._begun_at = 0.0
        self._realtime_open = False
        self._configured = False
        self._session_confirmed = False
        self._greeting_due = False
        self._pending_input: list[bytes] = []
        self._pending_input_ms = 0
        self._first_timestamp_ms: int | None = None
        self._last_media_at = 0.0
        self._caller_speaking = False
        self._active_response: str | None = None
        self._discarded: set[str] = set()
        self._playout: Playout | None = None  # from ``start``, once the stream is known
        self._turn_ended_at: float | None = None
        self._awaiting_first_audio = False

    # --- lifecycle -----------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    def begin(self, now: float) -> list[Command]:
        """The Twilio socket was accepted: pre-warm the model socket while Twilio sends ``start``."""
        self._begun_at = now
        return [ConnectRealtime(self._model)]

    def realtime_opened(self, now: float) -> list[Command]:
        if self.ended:
            return []
        self._realtime_open = True
        return self._configure()

    def realtime_closed(self, now: float, detail: str) -> list[Command]:
        self._realtime_open = False
        if not self.ended:
            log.warning("model socket closed mid-call (%s): ending the call", detail)
        return self._end(now, f"model socket closed ({detail})")

    def twilio_closed(self, now: float) -> list[Command]:
        return self._end(now, "twilio socket closed")

    def next_deadline(self) -> float | None:
        if self.ended:
            return None
        if self.stream_sid is None:
            return self._begun_at + START_TIMEOUT_S
        if self._caller_speaking and self._configured:
            return self._last_media_at + SILENCE_INJECT_AFTER_S
        return None

    def receive_timeout(self, now: float) -> list[Command]:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        if self.stream_sid is None:
            return self._end(now, "no start message from Twilio", twilio_close_code=1008)
        log.info(
            "no media for %.0f ms while the caller speaks: appending %d ms of silence",
            (now - self._last_media_at) * 1000,
            SILENCE_INJECT_MS,
        )
        self._last_media_at = now
        self.stats.filled_ms += SILENCE_INJECT_MS
        return self._append(SILENCE_BYTE * (SILENCE_INJECT_MS * twilio.BYTES_PER_MS))

    def _end(self, now: float, reason: str, twilio_close_code: int = 1000) -> list[Command]:
        if self.ended:
            return []
        self.end_reason = reason
        self.ended_at = now
        return [EndCall(reason, twilio_close_code)]

    def _configure(self) -> list[Command]:
        """Once the model socket is open and the agent known: configure, then release held audio."""
        if self._configured or not self._realtime_open or self.agent is None:
            return []
        self._configured = True
        commands: list[Command] = [realtime.UpdateSession(session_for(self.agent))]
        commands += [realtime.AppendAudio(pcm) for pcm in self._pending_input]
        self._pending_input.clear()
        self._pending_input_ms = 0
        return commands

    # --- Twilio --------------------------------------------------------------------------------------

    def receive_twilio(self, event: twilio.Event, now: float) -> list[Command]:
        if self.ended:
            return []
        match event:
            case twilio.Media():
                return self._on_media(event, now)
            case twilio.Mark(name=name):
                self._on_mark(name, now)
                return []
            case twilio.Start():
                return self._on_start(event, now)
            case twilio.Stop():
                return self._end(now, "caller hung up")
            case twilio.Connected():
                return []
            case twilio.Dtmf(digit=digit):
                log.info("caller pressed %s", digit)
                return []
            case twilio.Unknown(event=kind):
                log.warning("twilio: unknown event %r skipped", kind)
                return []
            case twilio.Invalid(reason=reason):
                self.stats.invalid_twilio += 1
                log.warning("twilio: message skipped: %s", reason)
                return []

    def _on_start(self, start: twilio.Start, now: float) -> list[Command]:
        if self.stream_sid is not None:
            log.warning("twilio: second start message skipped")
            return []
        fmt = start.media_format
        if (fmt.encoding, fmt.sample_rate_hz, fmt.channels) != SUPPORTED_FORMAT:
            return self._end(now, f"unsupported media format {fmt.encoding}/{fmt.sample_rate_hz}", 1008)
        verdict = self._authorize(start, now)
        if isinstance(verdict, Rejected):
            log.warning("stream rejected: %s", verdict.reason)
            return self._end(now, f"stream rejected: {verdict.reason}", twilio_close_code=1008)
        self.agent = verdict
        self.call_sid = start.call_sid
        self.stream_sid = start.stream_sid
        self._playout = Playout(start.stream_sid, self._audio, self.ledger)
        self.started_at = now
        self._last_media_at = now
        self._greeting_due = bool(verdict.greeting)
        self._turn_ended_at = now
        commands: list[Command] = []
        if verdict.model and verdict.model != self._model:
            self._model = verdict.model
            self._realtime_open = False
            commands.append(ConnectRealtime(verdict.model))
        return commands + self._configure()

    def _on_media(self, media: twilio.Media, now: float) -> list[Command]:
        if self.stream_sid is None:
            self.stats.invalid_twilio += 1
            log.warning("twilio: media before start skipped")
            return []
        if media.stream_sid != self.stream_sid:
            self.stats.invalid_twilio += 1
            log.warning("twilio: media for another stream skipped")
            return []
        if not media.payload:
            return []
        self.stats.frames_in += 1
        self._last_media_at = now
        audio = media.payload
        if self._first_timestamp_ms is None:
            self._first_timestamp_ms = media.timestamp_ms
        else:
            gap_ms = media.timestamp_ms - self._first_timestamp_ms - self.stats.caller_ms
            if gap_ms >= FRAME_MS:
                fill_ms = min(gap_ms, MAX_GAP_FILL_MS)
                self.stats.media_gaps += 1
                self.stats.filled_ms += fill_ms
                if gap_ms > GAP_LOG_MS:
                    log.info("twilio: %d ms media gap filled with %d ms of silence", gap_ms, fill_ms)
                audio = SILENCE_BYTE * (fill_ms * twilio.BYTES_PER_MS) + audio
        return self._append(audio)

    def _append(self, mulaw: bytes) -> list[Command]:
        self.stats.caller_ms += len(mulaw) // twilio.BYTES_PER_MS
        pcm = self._audio.to_model(mulaw)
        if self._configured:
            return [realtime.AppendAudio(pcm)]
        self._pending_input.append(pcm)
        self._pending_input_ms += len(mulaw) // twilio.BYTES_PER_MS
        if self._pending_input_ms > MAX_PENDING_INPUT_MS:
            return self._end(self._last_media_at, "model socket not ready in time")
        return []

    def _on_mark(self, name: str, now: float) -> None:
        echo = self.ledger.echo(name, now)
        if echo is None:
            log.warning("twilio: echo of a mark we did not send skipped")
            return
        if (
            echo.counted
            and echo.end_ms == 0
            and self._awaiting_first_audio
            and self._turn_ended_at is not None
        ):
            self._awaiting_first_audio = False
            self.stats.first_audio_ms.append(round((now - self._turn_ended_at) * 1000))

    # --- Realtime ------------------------------------------------------------------------------------

    def receive_realtime(self, event: realtime.Event, now: float) -> list[Command]:
        if self.ended:
            return []
        match event:
            case realtime.AudioDelta():
                return self._on_audio(event)
            case realtime.AudioDone(item_id=item_id, response_id=response_id):
                return self._on_audio_done(item_id, response_id)
            case realtime.SpeechStarted():
                return self._on_speech_started(now)
            case realtime.SpeechStopped():
                self._caller_speaking = False
                self._turn_ended_at = now
                return []
            case realtime.ResponseCreated(response_id=response_id):
                self._active_response = response_id
                self._awaiting_first_audio = True
                return []
            case realtime.ResponseDone():
                return self._on_response_done(event)
            case realtime.SessionUpdated():
                return self._on_session_updated(event, now)
            case realtime.Error():
                return self._on_error(event, now)
            case realtime.Invalid(reason=reason):
                self.stats.invalid_realtime += 1
                log.warning("realtime: message skipped: %s", reason)
                return []
            case realtime.SessionCreated(expires_at_s=expires_at_s):
                log.debug("realtime session created, expires at %s", expires_at_s)
                return []
            case realtime.ItemTruncated(item_id=item_id, audio_end_ms=audio_end_ms):
                log.debug("item %s truncated at %d ms", item_id, audio_end_ms)
                return []
            case (
                realtime.OutputItemAdded()
                | realtime.InputCommitted()
                | realtime.AgentTranscript()
                | realtime.CallerTranscript()
                | realtime.Unknown()
            ):
                return []

    def _on_session_updated(self, event: realtime.SessionUpdated, now: float) -> list[Command]:
        expected = ("audio/pcm", 24_000)
        if (event.input_format, event.input_rate_hz) != expected or (
            event.output_format,
            event.output_rate_hz,
        ) != expected:
            log.error("realtime: session audio format is not PCM16 24 kHz both ways")
            return self._end(now, "model session has the wrong audio format")
        self._session_confirmed = True
        if self._greeting_due and self.agent is not None and self.agent.greeting:
            self._greeting_due = False
            return [realtime.CreateResponse(greeting_instructions(self.agent.greeting))]
        return []

    def _on_audio(self, delta: realtime.AudioDelta) -> list[Command]:
        if delta.response_id in self._discarded:
            self.stats.dropped_deltas += 1
            return []
        if self._playout is None:
            log.warning("realtime: audio before the Twilio stream started skipped")
            return []
        return list(self._playout.audio(delta.item_id, delta.response_id, delta.audio))

    def _on_audio_done(self, item_id: str, response_id: str) -> list[Command]:
        if self._playout is None or response_id in self._discarded:
            self.ledger.finish(item_id)
            return []
        return list(self._playout.finish(item_id))

    def _on_speech_started(self, now: float) -> list[Command]:
        """Barge-in policy: the caller's speech stops the agent's (see :mod:`service.core.playout`)."""
        self._caller_speaking = True
        self._last_media_at = max(self._last_media_at, now)
        assert self.agent is not None
        commands: list[Command] = []
        active = self._active_response
        if active is not None:
            self._discarded.add(active)  # its late deltas are dropped
            self._awaiting_first_audio = False
            if not self.agent.turn_detection.interrupt_response:  # else the server cancels it itself
                commands.append(realtime.CancelResponse(active))
        if self._playout is None or not self._playout.playing:
            return commands
        cut = self._playout.interrupt(now)
        self.stats.barge_ins += 1
        self.stats.truncations += len(cut.truncations)
        truncates = [realtime.TruncateItem(t.item_id, t.audio_end_ms) for t in cut.truncations]
        log.info("barge-in: cleared playback, %d truncation(s)", len(truncates))
        return [cut.clear, *commands, *truncates]

    def _on_response_done(self, done: realtime.ResponseDone) -> list[Command]:
        self.stats.responses += 1
        self.stats.usage = self.stats.usage + done.usage
        if self._active_response == done.response_id:
            self._active_response = None
        self._discarded.discard(done.response_id)
        if done.status == "failed":
            log.warning("realtime: response failed (%s)", done.reason)
        return []

    def _on_error(self, error: realtime.Error, now: float) -> list[Command]:
        code = error.code or ""
        if code in realtime.FATAL_ERROR_CODES:
            log.error("realtime: fatal error %s: %s", code, error.message)
            return self._end(now, f"model error {code}")
        if error.message.startswith("Audio content of"):
            self.stats.truncate_errors += 1
            log.warning("realtime: truncate rejected: %s", error.message)
        elif code in ("response_cancel_not_active", "conversation_already_has_active_response"):
            log.debug("realtime: %s", code)
        elif code in ("unknown_parameter", "missing_required_parameter", "invalid_value"):
            log.error("realtime: our event %s was rejected: %s (%s)", error.event_id, code, error.param)
        else:
            log.warning("realtime: error %s: %s", code or error.error_type, error.message)
        return []

    def summary(self, now: float) -> dict[str, Any]:
        """The one summary line's fields (no transcripts, no audio)."""
        started = self.started_at if self.started_at is not None else self._begun_at
        ended = self.ended_at if self.ended_at is not None else now
        s = self.stats
        return {
            "call_sid": self.call_sid,
            "agent": self.agent.key if self.agent else None,
            "duration_s": round(ended - started, 3),
            "frames_in": s.frames_in,
            "frames_out": self._playout.frames_sent if self._playout else 0,
            "caller_ms": s.caller_ms,
            "filled_ms": s.filled_ms,
            "media_gaps": s.media_gaps,
            "barge_ins": s.barge_ins,
            "truncations": s.truncations,
            "truncate_errors": s.truncate_errors,
            "dropped_deltas": s.dropped_deltas,
            "invalid_twilio": s.invalid_twilio,
            "invalid_realtime": s.invalid_realtime,
            "responses": s.responses,
            "first_audio_ms": s.first_audio_ms,
            "input_tokens": s.usage.input_tokens,
            "output_tokens": s.usage.output_tokens,
            "cached_tokens": s.usage.cached_tokens,
            "end_reason": self.end_reason,
        }
