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

Phases (:class:`Phase`): awaiting start → authorizing → connecting (no configured model socket yet:
caller audio is held) → configuring (``session.update`` sent) → live (``session.updated``). A model
socket lost mid-call puts the call in reconnecting (caller audio of the gap is dropped and counted)
until a new session is configured with the conversation so far; the session's 60-minute limit is met
by a rollover to a spare socket (:mod:`service.core.links`). Ended is final.

Policies (``shared/reference/lessons.md``): the input clock follows Twilio's timestamps
(:mod:`~service.core.uplink`); outbound audio in whole 20 ms frames each followed by a mark, barge-in
through the generation-tagged ledger (:mod:`~service.core.playout`); greeting after ``start`` and
``session.updated``, once; the conversation kept as heard (:mod:`~service.core.conversation`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, assert_never

from service.core.agent import Agent
from service.core.audio import AudioConverter
from service.core.commands import Authorize, CloseModel, Command, EndCall, OpenModel, ToModel
from service.core.conversation import Conversation
from service.core.inputs import (
    Input,
    ModelClosed,
    ModelMessage,
    ModelOpened,
    StartAuthorized,
    StartRejected,
    StreamAccepted,
    TimerFired,
    TwilioClosed,
    TwilioMessage,
)
from service.core.links import Link, LinkState, RolloverPolicy
from service.core.playback import PlaybackLedger
from service.core.playout import Playout
from service.core.reconnect import ReconnectPolicy, Retry
from service.core.session import context_items, greeting_instructions, session_for
from service.core.summary import CallStats, summary_line
from service.core.uplink import Uplink
from service.wire import realtime, twilio

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
MAX_PENDING_INPUT_MS = 30_000
"""Caller audio held while the model socket opens. More than this means the model is not coming."""
SUPPORTED_FORMAT = ("audio/x-mulaw", 8000, 1)
MODEL_FORMAT = ("audio/pcm", 24_000)


class Phase(StrEnum):
    AWAITING_START = "awaiting start"
    AUTHORIZING = "authorizing"
    CONNECTING = "connecting"
    CONFIGURING = "configuring"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class CallConfig:
    truncate_slack_ms: int = 0
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    rollover: RolloverPolicy = field(default_factory=RolloverPolicy)
    context_tokens: int = 4_000
    """Budget of the conversation replayed to a new session (oldest turns dropped first)."""


class Call:
    """One phone call, from the Twilio socket's accept to the end of both sockets."""

    def __init__(
        self,
        *,
        transcoder: AudioConverter,
        default_model: str,
        config: CallConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config if config is not None else CallConfig()
        self._audio = transcoder
        self._model = default_model
        self._rng = rng if rng is not None else random.Random(0)
        self.phase = Phase.AWAITING_START
        self.ledger = PlaybackLedger(self.config.truncate_slack_ms)
        self.uplink = Uplink()
        self.conversation = Conversation()
        self.stats = CallStats()
        self.agent: Agent | None = None
        self.call_sid: str | None = None
        self.stream_sid: str | None = None
        self.end_reason: str | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._begun_at = 0.0
        self._links = 0
        self._live: Link | None = None
        self._spare: Link | None = None
        self._spare_not_before = 0.0
        self._retry: Retry | None = None
        self._resume_answer = False  # after a reconnect: the model was mid-answer, ask it to go on
        self._greeting_due = False
        self._held: list[bytes] = []
        self._held_ms = 0
        self._caller_speaking = False
        self._active_response: str | None = None
        self._response_items: list[str] = []  # assistant items of the active response
        self._discarded: set[str] = set()
        self._playout: Playout | None = None  # from ``start``, once the stream is known
        self._turn_ended_at: float | None = None
        self._awaiting_first_audio = False

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    @property
    def live_link(self) -> int | None:
        return self._live.id if self._live is not None else None

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
                commands = self._open_live()
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
            case _:
                assert_never(event)
        if self._spare is not None and self._spare.state is LinkState.READY and not self.ended:
            commands += self._maybe_switch(now)
        return commands

    def next_deadline(self) -> float | None:
        """When to be called with :class:`TimerFired` next (None: only when an input arrives)."""
        if self.ended:
            return None
        if self.stream_sid is None:
            return self._begun_at + START_TIMEOUT_S
        deadlines: list[float] = []
        live = self._live
        if self._caller_speaking and live is not None and live.configured:
            deadlines.append(self.uplink.last_media_at + 0.75)
        if self._retry is not None:
            deadlines.append(self._retry.lost_at + self.config.reconnect.give_up_s)
        if live is not None and self.phase is Phase.LIVE:
            policy, spare = self.config.rollover, self._spare
            if spare is None:
                at = live.rollover_at(policy)
                if at is not None:
                    deadlines.append(max(at, self._spare_not_before))
            elif spare.state is LinkState.READY:  # not ready yet: its session.updated will switch
                at = live.force_at(policy)
                if at is not None:
                    deadlines.append(at)
        return min(deadlines) if deadlines else None

    # --- lifecycle ------------------------------------------------------------------------------

    def _end(self, now: float, reason: str, twilio_close_code: int = 1000) -> list[Command]:
        if self.ended:
            return []
        self.phase = Phase.ENDED
        self.end_reason = reason
        self.ended_at = now
        return [EndCall(reason, twilio_close_code)]

    def _on_timer(self, now: float) -> list[Command]:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        if self.stream_sid is None:
            return self._end(now, "no start message from Twilio", twilio_close_code=1008)
        if self._retry is not None and now >= self._retry.lost_at + self.config.reconnect.give_up_s:
            return self._give_up(now)
        live = self._live
        due = self.uplink.silence_due(self._caller_speaking)
        if due is not None and now >= due and live is not None and live.configured:
            return self._append(self.uplink.inject_silence(now))
        if live is not None and self._spare is None and self.phase is Phase.LIVE:
            at = live.rollover_at(self.config.rollover)
            if at is not None and now >= at and now >= self._spare_not_before:
                return self._open_spare(now)
        return []  # a forced switch is checked after every input (see handle)

    # --- Twilio -----------------------------------------------------------------------------------

    def _on_twilio(self, event: twilio.Event, now: float) -> list[Command]:
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
            case twilio.Dtmf():
                log.debug("caller pressed a key")  # digits are personal data (PINs): never at INFO
                return []
            case twilio.Unknown(event=kind):
                log.warning("twilio: unknown event %r skipped", kind)
                return []
            case twilio.Invalid(reason=reason):
                self.stats.invalid_twilio += 1
                log.warning("twilio: message skipped: %s", reason)
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
        return [Authorize(start)]

    def _on_authorized(self, agent: Agent, now: float) -> list[Command]:
        if self.phase is not Phase.AUTHORIZING or self.stream_sid is None:
            log.warning("authorization without a start being checked skipped")
            return []
        self.agent = agent
        self.phase = Phase.CONNECTING
        self._playout = Playout(self.stream_sid, self._audio, self.ledger)
        self.started_at = now
        self.uplink.start(now)
        self._greeting_due = bool(agent.greeting)
        self._turn_ended_at = now
        commands: list[Command] = []
        if agent.model and agent.model != self._model:
            self._model = agent.model
            if self._live is not None:
                commands.append(CloseModel(self._live.id))
            self._live, self._retry = None, None
            commands += self._open_live()
        return commands + self._configure(now)

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
        return self._append(self.uplink.frame(media, now))

    def _append(self, mulaw: bytes) -> list[Command]:
        """Caller audio to the live session; held until it is configured; dropped while reconnecting."""
        pcm = self._audio.to_model(mulaw)
        live = self._live
        if live is not None and live.configured and self.phase is not Phase.RECONNECTING:
            return [ToModel(live.id, realtime.AppendAudio(pcm))]
        ms = len(mulaw) // twilio.BYTES_PER_MS
        if self.phase is Phase.RECONNECTING:
            self.uplink.stats.dropped_ms += ms
            return []
        self._held.append(pcm)
        self._held_ms += ms
        if self._held_ms > MAX_PENDING_INPUT_MS:
            return self._end(self.uplink.last_media_at, "model socket not ready in time")
        return []

    def _on_mark(self, name: str, now: float) -> None:
        echo = self.ledger.echo(name, now)
        if echo is None:
            log.warning("twilio: echo of a mark we did not send skipped")
            return
        ended_at = self._turn_ended_at
        if echo.counted and echo.end_ms == 0 and self._awaiting_first_audio and ended_at is not None:
            self._awaiting_first_audio = False
            self.stats.first_audio_ms.append(round((now - ended_at) * 1000))

    # --- model sockets ------------------------------------------------------------------------------

    def _new_link(self) -> Link:
        self._links += 1
        return Link(self._links, self._model)

    def _open_live(self, delay_s: float = 0.0) -> list[Command]:
        self._live = link = self._new_link()
        return [OpenModel(link.id, link.model, delay_s)]

    def _on_model_opened(self, link_id: int, wall_s: float, now: float) -> list[Command]:
        if self._spare is not None and link_id == self._spare.id:
            self._spare.opened(now, wall_s)
            self._spare.state = LinkState.CONFIGURED
            assert self.agent is not None  # a spare is only opened for a live call
            return [ToModel(link_id, realtime.UpdateSession(session_for(self.agent)))]
        if self._live is None or link_id != self._live.id:
            return []
        self._live.opened(now, wall_s)
        return self._configure(now)

    def _configure(self, now: float) -> list[Command]:
        """Once the live socket is open and the agent known: configure, replay, release held audio."""
        live, agent = self._live, self.agent
        if live is None or live.state is not LinkState.OPEN or agent is None:
            return []
        live.state = LinkState.CONFIGURED
        commands: list[Command] = [ToModel(live.id, realtime.UpdateSession(session_for(agent)))]
        if self.phase is Phase.RECONNECTING:
            items = context_items(self.conversation, self.config.context_tokens)
            commands += [ToModel(live.id, realtime.CreateItem(item)) for item in items]
            if self._resume_answer and not self._caller_speaking:
                commands.append(ToModel(live.id, realtime.CreateResponse()))
            self._resume_answer = False
            log.info("model session replaced: %d turn(s) of context replayed", len(items))
        commands += [ToModel(live.id, realtime.AppendAudio(pcm)) for pcm in self._held]
        self._held.clear()
        self._held_ms = 0
        self.phase = Phase.CONFIGURING
        return commands

    def _on_model_closed(self, closed: ModelClosed, now: float) -> list[Command]:
        if self._spare is not None and closed.link == self._spare.id:
            log.warning("spare model socket lost (%s); the rollover will try again", closed.detail)
            self._spare = None
            self._spare_not_before = now + self.config.rollover.retry_s
            return []
        if self._live is None or closed.link != self._live.id:
            return []  # a socket we replaced
        if realtime.close_is_fatal(closed.code, closed.http_status):
            log.error("model socket refused for good (%s): ending the call", closed.detail)
            return self._end(now, f"model socket closed ({closed.detail})")
        log.warning("model socket lost (%s) in phase %s", closed.detail, self.phase)
        return self._lost_live(now)

    def _lost_live(self, now: float) -> list[Command]:
        """The live socket is gone: clean up what it was doing, then open another (or give up)."""
        commands: list[Command] = []
        spare = self._spare
        if spare is not None and spare.configured and self._retry is None:
            self._live = None  # the rollover's spare is ready: switch to it now
            return self._switch(now, forced=True)
        if self._retry is None:
            mid_call = self.phase in (Phase.CONFIGURING, Phase.LIVE)
            if mid_call:
                if len(self.stats.reconnect_ms) >= self.config.reconnect.max_per_call:
                    return self._end(now, "model socket lost too many times")
                commands += self._drop_answer(now)
                self.phase = Phase.RECONNECTING
            self._retry = Retry(lost_at=now, mid_call=mid_call)
            if spare is not None:  # still opening: it becomes the replacement
                self._live, self._spare = spare, None
                self._retry.attempt = 1
                return commands + self._configure(now)
        delay = self._retry.next_delay(self.config.reconnect, self._rng, now)
        if delay is None:
            return commands + self._give_up(now)
        return commands + self._open_live(delay)

    def _give_up(self, now: float) -> list[Command]:
        log.error("model socket could not be reopened in %.0f s", self.config.reconnect.give_up_s)
        return self._end(now, "model unreachable")

    def _drop_answer(self, now: float) -> list[Command]:
        """The session that was answering is gone: clear what is still queued at Twilio, keep in the
        conversation what was heard, and remember to ask the next session to go on."""
        mid_answer = self._active_response is not None or (
            self._playout is not None and self._playout.playing
        )
        commands: list[Command] = []
        heard: dict[str, int] = {}
        if self._playout is not None and self._playout.playing:
            cut = self._playout.interrupt(now)
            heard = cut.heard
            commands.append(cut.clear)
        self._cut_turns(heard)
        self._active_response = None
        self._response_items = []
        self._discarded.clear()
        self._awaiting_first_audio = False
        self._resume_answer = mid_answer
        return commands

    # --- rollover -----------------------------------------------------------------------------------

    def _open_spare(self, now: float) -> list[Command]:
        self._spare = spare = self._new_link()
        log.info("model session expires soon: opening its replacement")
        return [OpenModel(spare.id, spare.model)]

    def _quiet(self) -> bool:
        playing = self._playout is not None and self._playout.playing
        return not (self._active_response or playing or self._caller_speaking)

    def _maybe_switch(self, now: float) -> list[Command]:
        live = self._live
        if self.phase is not Phase.LIVE or live is None:
            return []
        force_at = live.force_at(self.config.rollover)
        if self._quiet():
            return self._switch(now, forced=False)
        if force_at is not None and now >= force_at:
            return self._switch(now, forced=True)
        return []

    def _switch(self, now: float, *, forced: bool) -> list[Command]:
        """Make the spare the live session: replay the conversation to it, then close the old one."""
        spare, old = self._spare, self._live
        assert spare is not None
        commands: list[Command] = self._drop_answer(now) if forced else []
        items = context_items(self.conversation, self.config.context_tokens)
        commands += [ToModel(spare.id, realtime.CreateItem(item)) for item in items]
        if self._resume_answer and not self._caller_speaking:
            commands.append(ToModel(spare.id, realtime.CreateResponse()))
        self._resume_answer = False
        if old is not None:
            commands.append(CloseModel(old.id))
        self._live, self._spare = spare, None
        self.phase = Phase.LIVE if spare.state is LinkState.READY else Phase.CONFIGURING
        self.stats.rollovers += 1
        how = "forced" if forced else "at a quiet moment"
        log.info("model session rolled over (%s): %d turn(s) replayed", how, len(items))
        return commands

    # --- model events -------------------------------------------------------------------------------

    def _on_model_message(self, link: int, event: realtime.Event, now: float) -> list[Command]:
        if self._spare is not None and link == self._spare.id:
            return self._on_spare_event(self._spare, event, now)
        if self._live is None or link != self._live.id:
            return []
        match event:
            case realtime.AudioDelta():
                return self._on_audio(event, now)
            case realtime.AgentTranscriptDelta(item_id=item_id, delta=text):
                self.conversation.agent_text(item_id, text, now)
                return []
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
                self._response_items = []
                self._awaiting_first_audio = True
                return []
            case realtime.ResponseDone():
                return self._on_response_done(event)
            case realtime.SessionUpdated():
                return self._on_session_updated(self._live, event, now)
            case realtime.SessionCreated(expires_at_s=expires_at_s):
                self._live.expires(expires_at_s)
                return []
            case realtime.Error():
                return self._on_error(event, now)
            case realtime.Invalid(reason=reason):
                self.stats.invalid_realtime += 1
                log.warning("realtime: message skipped: %s", reason)
                return []
            case realtime.InputCommitted(item_id=item_id):
                self.conversation.caller_committed(item_id, now)
                return []
            case realtime.CallerTranscript(item_id=item_id, transcript=text):
                self.conversation.caller_transcript(item_id, text, now)
                return []
            case realtime.AgentTranscript(item_id=item_id, transcript=text):
                self.conversation.agent_transcript(item_id, text, now)
                return []
            case realtime.OutputItemAdded(item_id=item_id, item_type=kind, role=role):
                if kind == "message" and role == "assistant":
                    self.conversation.agent_item(item_id, now)
                    self._response_items.append(item_id)
                return []
            case realtime.ItemTruncated(item_id=item_id, audio_end_ms=audio_end_ms):
                log.debug("item %s truncated at %d ms", item_id, audio_end_ms)
                return []
            case realtime.Unknown():
                return []
            case _:
                assert_never(event)

    def _on_spare_event(self, spare: Link, event: realtime.Event, now: float) -> list[Command]:
        match event:
            case realtime.SessionCreated(expires_at_s=expires_at_s):
                spare.expires(expires_at_s)
            case realtime.SessionUpdated():
                if self._formats_ok(event):
                    spare.state = LinkState.READY
                else:
                    log.error("realtime: spare session has the wrong audio format; dropping it")
                    self._spare = None
                    return [CloseModel(spare.id)]
            case realtime.Error(kind=kind, code=code, message=message):
                log.warning("realtime: spare session error (%s) %s: %s", kind, code, message)
                if kind in (realtime.ErrorKind.FATAL, realtime.ErrorKind.RETRYABLE):
                    self._spare = None
                    self._spare_not_before = now + self.config.rollover.retry_s
                    return [CloseModel(spare.id)]
            case _:
                pass
        return []

    @staticmethod
    def _formats_ok(event: realtime.SessionUpdated) -> bool:
        return (event.input_format, event.input_rate_hz) == MODEL_FORMAT == (
            event.output_format,
            event.output_rate_hz,
        )

    def _on_session_updated(self, live: Link, event: realtime.SessionUpdated, now: float) -> list[Command]:
        if not self._formats_ok(event):
            log.error("realtime: session audio format is not PCM16 24 kHz both ways")
            return self._end(now, "model session has the wrong audio format")
        if live.state is LinkState.READY:
            return []
        live.state = LinkState.READY
        if self._retry is not None:
            if self._retry.mid_call:
                self.stats.reconnect_ms.append(round((now - self._retry.lost_at) * 1000))
            self._retry = None
        if self.phase is Phase.CONFIGURING:
            self.phase = Phase.LIVE
        if self._greeting_due and self.agent is not None and self.agent.greeting:
            self._greeting_due = False
            instructions = greeting_instructions(self.agent.greeting)
            return [ToModel(live.id, realtime.CreateResponse(instructions))]
        return []

    def _on_audio(self, delta: realtime.AudioDelta, now: float) -> list[Command]:
        self.conversation.agent_audio(delta.item_id, len(delta.audio) // realtime.BYTES_PER_MS, now)
        if delta.response_id in self._discarded:
            self.stats.dropped_deltas += 1
            return []
        if self._playout is None:
            log.warning("realtime: audio before the Twilio stream started skipped")
            return []
        if delta.item_id not in self._response_items and delta.response_id == self._active_response:
            self._response_items.append(delta.item_id)
        return self._playout.audio(delta.item_id, delta.response_id, delta.audio)

    def _on_audio_done(self, item_id: str, response_id: str) -> list[Command]:
        if self._playout is None or response_id in self._discarded:
            self.ledger.finish(item_id)
            return []
        return self._playout.finish(item_id)

    def _on_speech_started(self, now: float) -> list[Command]:
        """Barge-in policy: the caller's speech stops the agent's (see :mod:`service.core.playout`)."""
        self._caller_speaking = True
        self.uplink.last_media_at = max(self.uplink.last_media_at, now)
        live = self._live
        commands: list[Command] = []
        active = self._active_response
        if active is not None and live is not None:
            self._discarded.add(active)  # its late deltas are dropped
            self._awaiting_first_audio = False
            interrupts = self.agent is None or self.agent.turn_detection.interrupt_response
            if not interrupts:  # else the server cancels it itself
                commands.append(ToModel(live.id, realtime.CancelResponse(active)))
        if self._playout is None or not self._playout.playing or live is None:
            self._cut_turns({})
            return commands
        cut = self._playout.interrupt(now)
        self._cut_turns(cut.heard)
        self.stats.barge_ins += 1
        self.stats.truncations += len(cut.truncations)
        truncates = [
            ToModel(live.id, realtime.TruncateItem(t.item_id, t.audio_end_ms)) for t in cut.truncations
        ]
        log.info("barge-in: cleared playback, %d truncation(s)", len(truncates))
        return [cut.clear, *commands, *truncates]

    def _cut_turns(self, heard: dict[str, int]) -> None:
        """Mark the agent turns the caller stopped hearing: the active response's items (nothing heard
        unless the ledger says otherwise) and every item that still had audio to play."""
        for item_id, heard_ms in (dict.fromkeys(self._response_items, 0) | heard).items():
            self.conversation.agent_cut(item_id, heard_ms)

    def _on_response_done(self, done: realtime.ResponseDone) -> list[Command]:
        self.stats.responses += 1
        self.stats.usage = self.stats.usage + done.usage
        if self._active_response == done.response_id:
            self._active_response = None
            self._response_items = []
        self._discarded.discard(done.response_id)
        if done.status == "failed":
            log.warning("realtime: response failed (%s)", done.reason)
        return []

    def _on_error(self, error: realtime.Error, now: float) -> list[Command]:
        code = error.code or error.error_type
        match error.kind:
            case realtime.ErrorKind.FATAL:
                log.error("realtime: fatal error %s: %s", code, error.message)
                return self._end(now, f"model error {code}")
            case realtime.ErrorKind.RETRYABLE:
                log.warning("realtime: session over (%s): opening a new one", code)
                assert self._live is not None
                return [CloseModel(self._live.id), *self._lost_live(now)]
            case realtime.ErrorKind.TRUNCATE_TOO_LONG:
                self.stats.truncate_errors += 1
                log.warning("realtime: truncate rejected: %s", error.message)
            case realtime.ErrorKind.REJECTED:
                log.error("realtime: our event %s was rejected: %s (%s)", error.event_id, code, error.param)
            case realtime.ErrorKind.BENIGN:
                log.debug("realtime: %s", code)
            case realtime.ErrorKind.OTHER:
                log.warning("realtime: error %s: %s", code, error.message)
            case _:
                assert_never(error.kind)
        return []

    def summary(self, now: float) -> dict[str, Any]:
        """The one summary line's fields (no transcripts, no audio)."""
        started = self.started_at if self.started_at is not None else self._begun_at
        ended = self.ended_at if self.ended_at is not None else now
        return summary_line(
            call_sid=self.call_sid,
            agent=self.agent.key if self.agent else None,
            phase=self.phase.value,
            duration_s=ended - started,
            frames_out=self._playout.frames_sent if self._playout else 0,
            turns=len(self.conversation),
            uplink=self.uplink.stats,
            stats=self.stats,
            end_reason=self.end_reason,
        )
