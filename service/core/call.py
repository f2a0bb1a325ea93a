"""The per-call state machine: the one place where a call's decisions are made.

Pure and synchronous: it never reads a clock, a socket or the environment. The runtime feeds it one
:mod:`~service.core.inputs` value at a time with ``now`` (monotonic seconds, its only clock) and executes
the :mod:`~service.core.commands` it returns, in order. Tests drive it the same way, so they read like
transcripts::

    call = Call(transcoder=Transcoder(), default_model="gpt-realtime-2.1")
    call.handle(StreamAccepted(), 0.0)                 -> [OpenModel(1, model)]  (pre-warm)
    call.handle(ModelOpened(1, wall), now)             -> []
    call.handle(TwilioMessage(twilio.Start), now)      -> [Authorize(start)]
    call.handle(StartAuthorized(agent), now)           -> [ToModel(1, UpdateSession), ...]
    call.handle(ModelMessage(1, AudioDelta), now)      -> [SendMark, SendMedia, SendMark, ...]
    call.handle(ModelMessage(1, SpeechStarted), now)   -> [SendClear, ToModel(1, TruncateItem)]
    call.handle(TimerFired(), now)                     whenever now >= call.next_deadline()

The call's phase is one :class:`~service.core.phase.Phase`. The parts, one policy each:

- :mod:`~service.core.uplink`: the caller's audio and its clock (gap fill, silence injection);
- :mod:`~service.core.answers`: the agent's answers, their playout and barge-in;
- :mod:`~service.core.failover`: the model sockets (configure, reconnect, rollover), a base of ``Call``;
- :mod:`~service.core.acting` and :mod:`~service.core.actions`: tools, call control and the keypad (a
  base of ``Call``, and its decisions);
- :mod:`~service.core.conversation` and :mod:`~service.core.session`: what was said and heard, and
  what a model session is told.

This module dispatches the inputs to them and owns the call's lifecycle: ``start`` and its
authorization, the greeting (after ``session.updated``, once), errors by class, the end.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, assert_never

from service.core.acting import Acting
from service.core.actions import Actions
from service.core.agent import Agent
from service.core.answers import Answers
from service.core.audio import AudioConverter
from service.core.commands import Action, Authorize, CloseModel, Command, Dial, EndCall, ToModel
from service.core.conversation import Conversation
from service.core.failover import Failover, formats_ok
from service.core.inputs import (
    Input,
    MachineDetected,
    ModelClosed,
    ModelMessage,
    ModelOpened,
    Shutdown,
    StartAuthorized,
    StartRejected,
    StreamAccepted,
    TimerFired,
    ToolResult,
    TwilioClosed,
    TwilioMessage,
)
from service.core.links import Link, LinkState, RolloverPolicy, Sessions
from service.core.phase import Phase
from service.core.playback import PlaybackLedger
from service.core.reconnect import ReconnectPolicy
from service.core.record import CallRecord, Timeline, TurnRecord
from service.core.session import greeting_instructions
from service.core.summary import SHUTDOWN_REASON, CallStats, end_kind, summary_line
from service.core.uplink import QUIET_BATCH_MS, QuietBatch, Throttle, Uplink, Utterance, is_quiet
from service.wire import realtime, twilio

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
MAX_PENDING_INPUT_MS = 30_000
"""Caller audio held while the model socket opens. More than this means the model is not coming."""
SUPPORTED_FORMAT = ("audio/x-mulaw", 8000, 1)


@dataclass(frozen=True, slots=True)
class CallConfig:
    truncate_slack_ms: int = 0
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    rollover: RolloverPolicy = field(default_factory=RolloverPolicy)
    context_tokens: int = 4_000
    """Budget of the conversation replayed to a new session (oldest turns dropped first)."""
    quiet_batch_ms: int = QUIET_BATCH_MS
    """Quiet caller audio may wait this long to go in one append (0: every frame at once)."""


class Call(Failover, Acting):
    """One phone call, from the Twilio socket's accept to the end of both sockets."""

    def __init__(
        self,
        *,
        transcoder: AudioConverter,
        default_model: str,
        config: CallConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config = config if config is not None else CallConfig()
        self._audio = transcoder
        self.phase = Phase.AWAITING_START
        self.ledger = PlaybackLedger(config.truncate_slack_ms)
        self.uplink = Uplink()
        self.utterance = Utterance()
        self.quiet = QuietBatch(config.quiet_batch_ms)
        self.conversation = Conversation()
        self.stats = CallStats()
        self.timeline = Timeline()
        self.answers = Answers(self.ledger, self.conversation, self.stats, self.timeline)
        self.sessions = Sessions(default_model, config.reconnect, config.rollover, rng or random.Random(0))
        self.actions = Actions(self.conversation, self.timeline)
        self._response_requested = False  # a response.create of ours not yet answered by response.created
        self.agent: Agent | None = None
        self.call_sid: str | None = None
        self.stream_sid: str | None = None
        self.end_reason: str | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._begun_at = 0.0
        self._resume_answer = False  # after a reconnect: the model was mid-answer, ask it to go on
        self._greeting_due = False
        self._held: list[tuple[bytes, int]] = []  # (PCM, ms)
        self._held_ms = 0
        self._caller_speaking = False
        self._start_params: Mapping[str, str] = {}
        self._throttles: dict[str, Throttle] = {}

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    @property
    def start_params(self) -> Mapping[str, str]:
        """The ``customParameters`` of the stream's ``start`` (empty before it)."""
        return self._start_params

    @property
    def live_link(self) -> int | None:
        live = self.sessions.live
        return live.id if live is not None else None

    # --- the one entry point --------------------------------------------------------------------

    def handle(self, event: Input, now: float) -> list[Command]:
        """Take one input; return what to do, in order."""
        if self.ended:
            return []
        match event:
            case TwilioMessage(event=message):
                commands = self._on_twilio(message, now)
            case ModelMessage(link=link, event=message):
                commands = self._on_model_message(link, message, now)
            case TimerFired():
                commands = self._on_timer(now)
            case StreamAccepted():
                self._begun_at = now
                self.timeline.origin = now
                commands = [self.sessions.open_live()]  # pre-warm while Twilio sends ``start``
            case StartAuthorized(agent=agent):
                commands = self._on_authorized(agent, now)
            case StartRejected(reason=reason):
                log.warning("stream rejected: %s", reason)
                commands = self._end(now, f"stream rejected: {reason}", 1008)
            case ModelOpened(link=link, wall_s=wall_s):
                commands = self._on_model_opened(link, wall_s, now)
            case ModelClosed():
                commands = self._on_model_closed(event, now)
            case TwilioClosed():
                commands = self._end(now, "twilio socket closed")
            case ToolResult():
                commands = self._on_tool_result(event, now)
            case Shutdown():
                commands = self._end(now, SHUTDOWN_REASON)
            case MachineDetected(answered_by=answered_by):
                commands = self._on_machine(answered_by, now)
            case _:
                assert_never(event)
        if self.actions.ending is not None:
            commands += self._check_ending(now)
        spare = self.sessions.spare
        if spare is not None and spare.state is LinkState.READY and self.phase is Phase.LIVE:
            commands += self._maybe_switch(now)
        return commands

    def next_deadline(self) -> float | None:
        """When to be called with :class:`TimerFired` next (None: only when an input arrives)."""
        if self.ended:
            return None
        if self.stream_sid is None:
            return self._begun_at + START_TIMEOUT_S
        deadlines: list[float] = []
        live = self.sessions.live
        silence_at = self.uplink.silence_due(self._caller_speaking)
        if silence_at is not None and live is not None and live.configured:
            deadlines.append(silence_at)
        give_up_at = self.sessions.give_up_at()
        if give_up_at is not None:
            deadlines.append(give_up_at)
        rollover_at = self.sessions.rollover_deadline() if self.phase is Phase.LIVE else None
        if rollover_at is not None:
            deadlines.append(rollover_at)
        acting_at = self.actions.next_deadline()
        if acting_at is not None:
            deadlines.append(acting_at)
        return min(deadlines) if deadlines else None

    # --- lifecycle ------------------------------------------------------------------------------

    def _warn(self, kind: str, now: float, message: str, *args: object) -> None:
        """A warning about a peer's input, at most once per ``WARN_EVERY_S`` for each kind."""
        throttle = self._throttles.get(kind)
        if throttle is None:
            throttle = self._throttles[kind] = Throttle()
        if throttle.ready(now):
            suppressed = throttle.take_suppressed()
            suffix = f" ({suppressed} more since the last one)" if suppressed else ""
            log.warning(message + suffix, *args)

    def _end(
        self, now: float, reason: str, twilio_close_code: int = 1000, action: Action | None = None
    ) -> list[Command]:
        """The call ends: with ``action`` for Twilio (or the agent's decision, if it made one)."""
        if self.ended:
            return []
        ending = self.actions.ending
        if action is None and ending is not None:
            action = ending.action
        live = self.sessions.live
        commands: list[Command] = []
        if live is not None and live.configured and self.phase is not Phase.RECONNECTING:
            commands = self._send_quiet(live.id)  # the last of the caller's audio, as sent
        self.phase = Phase.ENDED
        self.end_reason = reason
        self.ended_at = now
        self.timeline.note(now, "ended", reason=reason)
        return [*commands, EndCall(reason, twilio_close_code, action)]

    def _on_timer(self, now: float) -> list[Command]:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        if self.stream_sid is None:
            return self._end(now, "no start message from Twilio", twilio_close_code=1008)
        give_up_at = self.sessions.give_up_at()
        if give_up_at is not None and now >= give_up_at:
            return self._give_up(now)
        commands = self._acting_timer(now)
        if self.ended:
            return commands
        live = self.sessions.live
        silence_at = self.uplink.silence_due(self._caller_speaking)
        if silence_at is not None and now >= silence_at and live is not None and live.configured:
            commands += self._append(self.uplink.inject_silence(now))
        if self.phase is Phase.LIVE and self.sessions.spare_due(now):
            log.info("model session expires soon: opening its replacement")
            commands.append(self.sessions.open_spare())
        return commands  # a forced switch is checked after every input (see handle)

    # --- Twilio -----------------------------------------------------------------------------------

    def _on_twilio(self, event: twilio.Event, now: float) -> list[Command]:
        match event:
            case twilio.Media():
                return self._on_media(event, now)
            case twilio.Mark(name=name):
                self.answers.mark(name, now)
                return []
            case twilio.Start():
                return self._on_start(event, now)
            case twilio.Stop():
                return self._end(now, "caller hung up")
            case twilio.Connected():
                return []
            case twilio.Dtmf(digit=digit):
                log.debug("caller pressed a key")  # digits are personal data (PINs): never at INFO
                return self._on_digit(digit, now)
            case twilio.Unknown(event=kind):
                self._warn("unknown", now, "twilio: unknown event %r skipped", kind)
                return []
            case twilio.Invalid(reason=reason):
                self.stats.invalid_twilio += 1
                self._warn("twilio invalid", now, "twilio: message skipped: %s", reason)
                return []
            case _:
                assert_never(event)

    def _on_start(self, start: twilio.Start, now: float) -> list[Command]:
        if self.phase is not Phase.AWAITING_START:
            log.warning("twilio: second start message skipped")
            return []
        fmt = start.media_format
        if (fmt.encoding, fmt.sample_rate_hz, fmt.channels) != SUPPORTED_FORMAT:
            return self._end(now, f"unsupported media format {fmt.encoding}/{fmt.sample_rate_hz}", 1008)
        self.phase = Phase.AUTHORIZING
        self.call_sid = start.call_sid
        self.stream_sid = start.stream_sid
        self._start_params = start.custom_parameters
        return [Authorize(start)]

    def _on_authorized(self, agent: Agent, now: float) -> list[Command]:
        if self.phase is not Phase.AUTHORIZING or self.stream_sid is None:
            log.warning("authorization without a start being checked skipped")
            return []
        self.agent = agent
        self.phase = Phase.CONNECTING
        self.answers.start(self.stream_sid, self._audio, now)
        self.started_at = now
        self.uplink.start(now)
        self._greeting_due = bool(agent.greeting)
        sessions = self.sessions
        commands: list[Command] = []
        if agent.model and agent.model != sessions.model:
            sessions.model = agent.model
            if sessions.live is not None:
                commands.append(CloseModel(sessions.live.id))
            sessions.retry = None
            commands.append(sessions.open_live())
        return commands + self._configure(now)

    def _on_media(self, media: twilio.Media, now: float) -> list[Command]:
        if self.stream_sid is None:
            self.stats.invalid_twilio += 1
            self._warn("early media", now, "twilio: media before start skipped")
            return []
        if media.stream_sid != self.stream_sid:
            self.stats.invalid_twilio += 1
            self._warn("foreign media", now, "twilio: media for another stream skipped")
            return []
        if not media.payload:
            return []
        return self._append(self.uplink.frame(media, now))

    def _append(self, mulaw: bytes) -> list[Command]:
        """Caller audio to the live session (quiet audio in batches); held until it is configured; dropped
        while reconnecting."""
        live = self.sessions.live
        ms = len(mulaw) // twilio.BYTES_PER_MS
        if live is not None and live.configured and self.phase is not Phase.RECONNECTING:
            quiet = self.quiet
            if quiet.limit_ms and not self._caller_speaking and is_quiet(mulaw):
                return self._send_quiet(live.id) if quiet.add(mulaw, ms) else []
            commands = self._send_quiet(live.id) if quiet.ms else []
            pcm = self._audio.to_model(mulaw)
            self.utterance.add(pcm, ms)
            commands.append(ToModel(live.id, realtime.AppendAudio(pcm)))
            return commands
        pcm = self._audio.to_model(mulaw)
        if self.phase is Phase.RECONNECTING:
            self.uplink.stats.dropped_ms += ms
            return []
        self._held.append((pcm, ms))
        self._held_ms += ms
        if self._held_ms > MAX_PENDING_INPUT_MS:
            return self._end(self.uplink.last_media_at, "model socket not ready in time")
        return []

    def _send_quiet(self, link: int) -> list[Command]:
        """The quiet batch, converted in one go, as one append to ``link``."""
        ms = self.quiet.ms
        if not ms:
            return []
        pcm = self._audio.to_model(self.quiet.take())
        self.utterance.add(pcm, ms)
        return [ToModel(link, realtime.AppendAudio(pcm))]

    # --- model events -------------------------------------------------------------------------------

    def _on_model_message(self, link_id: int, event: realtime.Event, now: float) -> list[Command]:
        link = self.sessions.which(link_id)
        if link is None:
            return []
        if link is self.sessions.spare:
            return self._on_spare_event(link, event, now)
        answers = self.answers
        match event:
            case realtime.AudioDelta():
                return answers.audio(event, now)
            case realtime.AgentTranscriptDelta(item_id=item_id, delta=text):
                self.conversation.agent_text(item_id, text, now)
                return []
            case realtime.AudioDone(item_id=item_id, response_id=response_id):
                return answers.audio_done(item_id, response_id, now)
            case realtime.SpeechStarted(audio_start_ms=audio_start_ms):
                self._caller_speaking = True
                self.timeline.note(now, "caller_started")
                self.utterance.started(audio_start_ms)
                self.uplink.last_media_at = max(self.uplink.last_media_at, now)
                server_cancels = self.agent is None or self.agent.turn_detection.interrupt_response
                barge_in = answers.barge_in(now, link.id, server_cancels=server_cancels)
                return barge_in + self._send_quiet(link.id)
            case realtime.SpeechStopped():
                self._caller_speaking = False
                self.timeline.note(now, "caller_stopped")
                self.utterance.stopped()
                answers.caller_stopped(now)
                return []
            case realtime.ResponseCreated(response_id=response_id):
                self._response_requested = False
                answers.created(response_id)
                return []
            case realtime.ResponseDone():
                answers.done(event)
                return self._after_response(event, link.id, now)
            case realtime.FunctionCall():
                self.actions.function_call(event)
                return []
            case realtime.McpEvent(type=kind, failed=failed):
                self.actions.mcp_event(kind, failed, now)
                return []
            case realtime.SessionUpdated():
                return self._on_session_updated(link, event, now)
            case realtime.SessionCreated(expires_at_s=expires_at_s):
                link.expires(expires_at_s)
                return []
            case realtime.Error():
                return self._on_error(link, event, now)
            case realtime.Invalid(reason=reason):
                self.stats.invalid_realtime += 1
                self._warn("realtime invalid", now, "realtime: message skipped: %s", reason)
                return []
            case realtime.InputCommitted(item_id=item_id):
                self.conversation.caller_committed(item_id, now)
                return []
            case realtime.CallerTranscript(item_id=item_id, transcript=text):
                self.conversation.caller_transcript(item_id, text, now)
                self.stats.transcription_tokens += event.usage_tokens
                self.stats.transcription_seconds += event.usage_seconds
                return []
            case realtime.AgentTranscript(item_id=item_id, transcript=text):
                self.conversation.agent_transcript(item_id, text, now)
                return []
            case realtime.OutputItemAdded(item_id=item_id, item_type=kind, role=role):
                if kind == "message" and role == "assistant":
                    answers.item_added(item_id, now)
                return []
            case realtime.RateLimits():
                return []  # the runtime reads them (new calls are refused when tokens run low)
            case realtime.ItemTruncated(item_id=item_id, audio_end_ms=audio_end_ms):
                log.debug("item %s truncated at %d ms", item_id, audio_end_ms)
                return []
            case realtime.Unknown():
                return []
            case _:
                assert_never(event)

    def _on_session_updated(self, live: Link, event: realtime.SessionUpdated, now: float) -> list[Command]:
        if not formats_ok(event):
            log.error("realtime: session audio format is not PCM16 24 kHz both ways")
            return self._end(now, "model session has the wrong audio format")
        if live.state is LinkState.READY:
            return []
        live.state = LinkState.READY
        reconnect_ms = self.sessions.recovered(now)
        if reconnect_ms is not None:
            self.stats.reconnect_ms.append(reconnect_ms)
            self.timeline.note(now, "model_back", reconnect_ms=reconnect_ms)
        if self.phase is Phase.CONFIGURING:
            self.phase = Phase.LIVE
        if self._greeting_due and self.agent is not None and self.agent.greeting:
            self._greeting_due = False
            instructions = greeting_instructions(self.agent.greeting)
            return [ToModel(live.id, realtime.CreateResponse(instructions))]
        return self._respond_if_idle(live.id)  # a tool's output that came while the model was away

    def _on_error(self, live: Link, error: realtime.Error, now: float) -> list[Command]:
        code = error.code or error.error_type
        match error.kind:
            case realtime.ErrorKind.FATAL:
                log.error("realtime: fatal error %s: %s", code, error.message)
                return self._end(now, f"model error {code}")
            case realtime.ErrorKind.RETRYABLE:
                log.warning("realtime: session over (%s): opening a new one", code)
                return [CloseModel(live.id), *self._lost_live(now)]
            case realtime.ErrorKind.TRUNCATE_TOO_LONG:
                self.stats.truncate_errors += 1
                log.warning("realtime: truncate rejected: %s", error.message)
            case realtime.ErrorKind.REJECTED:
                log.error(
                    "realtime: our event %s on socket %d was rejected: %s (%s)",
                    error.event_id, live.id, code, error.param,
                )  # fmt: skip
            case realtime.ErrorKind.BENIGN:
                log.debug("realtime: %s", code)
            case realtime.ErrorKind.OTHER:
                log.warning("realtime: error %s: %s", code, error.message)
            case _:
                assert_never(error.kind)
        return []

    def record(self, now: float) -> CallRecord:
        """The call's record (the runtime adds the wall clock); meant for when it has ended."""
        params = self._start_params
        transcript = tuple(
            TurnRecord(
                role=turn.role,
                text=turn.text,
                started_s=round(turn.started_at - self.timeline.origin, 3),
                interrupted=turn.interrupted,
                heard_text=turn.heard_text if turn.interrupted else None,
            )
            for turn in self.conversation
        )
        stats = self.stats
        return CallRecord(
            call_sid=self.call_sid,
            direction=params.get("direction", "inbound"),
            caller=params.get("from", ""),
            called=params.get("to", ""),
            agent=self.agent.key if self.agent else None,
            model=self.sessions.model,
            duration_s=round((self.ended_at or now) - (self.started_at or self._begun_at), 3),
            end_reason=self.end_reason,
            transcript=transcript,
            timeline=tuple(self.timeline.events),
            tool_calls=tuple(self.actions.stats.records),
            barge_ins=stats.barge_ins,
            reconnect_ms=tuple(stats.reconnect_ms),
            rollovers=stats.rollovers,
            first_audio_ms=tuple(stats.first_audio_ms),
            usage=stats.usage,
            transcription_seconds=round(stats.transcription_seconds, 3),
            transcription_tokens=stats.transcription_tokens,
            summary=self.summary(now),
        )

    def summary(self, now: float) -> dict[str, Any]:
        """The one summary line's fields (no transcripts, no audio)."""
        started = self.started_at if self.started_at is not None else self._begun_at
        ended = self.ended_at if self.ended_at is not None else now
        return summary_line(
            call_sid=self.call_sid,
            agent=self.agent.key if self.agent else None,
            phase=self.phase.value,
            duration_s=ended - started,
            frames_out=self.answers.frames_sent,
            turns=len(self.conversation),
            uplink=self.uplink.stats,
            stats=self.stats,
            actions=self.actions.stats,
            end_reason=self.end_reason,
            end_kind=self.end_kind,
        )

    @property
    def end_kind(self) -> str:
        """The kind of the end (:data:`~service.core.summary.END_KINDS`), for metrics."""
        ending = self.actions.ending
        decided = None
        if ending is not None:
            decided = "transfer" if isinstance(ending.action, Dial) else "agent_hangup"
        return end_kind(self.end_reason, decided)

