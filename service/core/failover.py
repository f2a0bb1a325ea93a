"""The call's model sockets over its life: configure a new one, survive losing one, roll over before
the session limit. Pure; part of :class:`~service.core.call.Call` (which it is a base of), kept apart
because it is one policy with its own vocabulary:

- a socket lost mid-call puts the call in ``reconnecting``: what the lost session was saying is
  cleared at Twilio and kept in the conversation as heard; attempts follow the
  :class:`~service.core.reconnect.ReconnectPolicy` (the first at once); the new session gets the
  agent's ``session.update``, the conversation replayed as text, then the caller's utterance so far if
  they are speaking (the new session's VAD takes the turn), or else, if the lost one was mid-answer,
  a ``response.create`` to go on; caller audio of the gap is dropped and counted; no second greeting.
- before the session's ``expires_at`` (:class:`~service.core.links.RolloverPolicy`), a spare socket is
  opened and configured; at the first quiet moment (no answer in progress or playing, the caller not
  speaking) the conversation is replayed to it and it becomes the live one, and the old one is closed
  (make before break: every caller frame goes to exactly one session). No quiet moment until shortly
  before expiry: the switch is forced. A 1001 close with a spare ready switches at once.
- fatal failures (a refused key, no quota, an unknown model) end the call; they are never retried.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from service.core.actions import Actions
from service.core.agent import Agent
from service.core.answers import Answers
from service.core.commands import Action, CloseModel, Command, ToModel
from service.core.conversation import Conversation
from service.core.inputs import ModelClosed
from service.core.links import Link, LinkState, Sessions
from service.core.phase import Phase
from service.core.record import Timeline
from service.core.session import context_items, session_for
from service.core.summary import CallStats
from service.core.uplink import QuietBatch, Uplink, Utterance
from service.wire import realtime

if TYPE_CHECKING:
    from service.core.call import CallConfig

log = logging.getLogger(__name__)

MODEL_FORMAT = ("audio/pcm", 24_000)


def formats_ok(event: realtime.SessionUpdated) -> bool:
    """PCM16 24 kHz both ways, as asked (old sessions silently kept another format)."""
    return (event.input_format, event.input_rate_hz) == MODEL_FORMAT == (
        event.output_format,
        event.output_rate_hz,
    )


class Failover:
    """The model-socket policy of :class:`~service.core.call.Call` (see the module docstring)."""

    # Owned by Call; declared here for the type checker.
    config: CallConfig
    phase: Phase
    agent: Agent | None
    sessions: Sessions
    answers: Answers
    conversation: Conversation
    stats: CallStats
    _held: list[tuple[bytes, int]]
    _held_ms: int
    _caller_speaking: bool
    utterance: Utterance
    uplink: Uplink
    quiet: QuietBatch
    timeline: Timeline
    _resume_answer: bool
    _response_requested: bool
    actions: Actions

    def _end(
        self, now: float, reason: str, twilio_close_code: int = 1000, action: Action | None = None
    ) -> list[Command]:
        raise NotImplementedError

    def _send_quiet(self, link: int) -> list[Command]:
        raise NotImplementedError

    def _on_model_opened(self, link_id: int, wall_s: float, now: float) -> list[Command]:
        link = self.sessions.which(link_id)
        if link is None or link.state is not LinkState.OPENING:
            return []
        link.opened(now, wall_s)
        if link is self.sessions.live:
            return self._configure(now)
        assert self.agent is not None  # a spare is only opened for a live call
        link.state = LinkState.CONFIGURED
        return [ToModel(link_id, realtime.UpdateSession(session_for(self.agent)))]

    def _configure(self, now: float) -> list[Command]:
        """Once the live socket is open and the agent known: configure, replay, release held audio."""
        live, agent = self.sessions.live, self.agent
        if live is None or live.state is not LinkState.OPEN or agent is None:
            return []
        live.state = LinkState.CONFIGURED
        commands: list[Command] = [ToModel(live.id, realtime.UpdateSession(session_for(agent)))]
        if self.phase is Phase.RECONNECTING:
            commands += self._replay_context(live)
        for pcm, ms in self._held:
            commands.append(ToModel(live.id, realtime.AppendAudio(pcm)))
            self.utterance.add(pcm, ms)
        self._held.clear()
        self._held_ms = 0
        self.phase = Phase.CONFIGURING
        return commands

    def _replay_context(self, link: Link) -> list[Command]:
        """The conversation so far to a new session; then, if the caller is speaking, their utterance
        so far (its VAD takes the turn); else, if the lost session was answering, ask it to go on."""
        items = context_items(self.conversation, self.config.context_tokens)
        commands: list[Command] = [ToModel(link.id, realtime.CreateItem(item)) for item in items]
        if self._caller_speaking:
            commands += [ToModel(link.id, realtime.AppendAudio(pcm)) for pcm in self.utterance.audio()]
            self.uplink.stats.replayed_ms += self.utterance.ms
        self.utterance.new_session()
        if self._resume_answer and not self._caller_speaking:
            commands.append(ToModel(link.id, realtime.CreateResponse()))
        self._resume_answer = False
        log.info("new model session: %d turn(s) of context replayed", len(items))
        return commands

    def _on_model_closed(self, closed: ModelClosed, now: float) -> list[Command]:
        sessions = self.sessions
        link = sessions.which(closed.link)
        if link is None:
            return []  # a socket we replaced
        if link is sessions.spare:
            log.warning("spare model socket lost (%s); the rollover will try again", closed.detail)
            sessions.spare_failed(now)
            return []
        if realtime.close_is_fatal(closed.code, closed.http_status):
            log.error("model socket refused for good (%s): ending the call", closed.detail)
            return self._end(now, f"model socket closed ({closed.detail})")
        log.warning("model socket lost (%s) in phase %s", closed.detail, self.phase)
        return self._lost_live(now)

    def _lost_live(self, now: float) -> list[Command]:
        """The live socket is gone: clean up what it was doing, then open another (or give up)."""
        if self.phase is Phase.ENDING:
            return self._end(now, "model socket lost while the call was ending")  # as the agent decided
        self.actions.session_lost()
        self._response_requested = False
        self.uplink.stats.dropped_ms += self.quiet.ms  # quiet audio that was waiting for it
        self.quiet.take()
        sessions = self.sessions
        spare = sessions.spare
        if spare is not None and spare.configured and sessions.retry is None:
            return self._switch(now, forced=True)  # the rollover's spare is there: no gap at all
        commands: list[Command] = []
        if sessions.retry is None:
            mid_call = self.phase in (Phase.CONFIGURING, Phase.LIVE)
            if mid_call:
                self.timeline.note(now, "model_lost")
                if len(self.stats.reconnect_ms) >= self.config.reconnect.max_per_call:
                    return self._end(now, "model socket lost too many times")
                commands += self._drop_answer(now)
                self.phase = Phase.RECONNECTING
            sessions.lost(now, mid_call=mid_call)
            if spare is not None:  # still opening: it becomes the replacement
                sessions.promote_spare()
                return commands + self._configure(now)
        attempt = sessions.next_attempt(now)
        if attempt is None:
            return commands + self._give_up(now)
        return [*commands, attempt]

    def _give_up(self, now: float) -> list[Command]:
        log.error("model socket could not be reopened in %.0f s", self.config.reconnect.give_up_s)
        return self._end(now, "model unreachable")

    def _drop_answer(self, now: float) -> list[Command]:
        self._resume_answer = self.answers.busy()
        return self.answers.drop(now)

    # --- rollover -----------------------------------------------------------------------------------

    def _maybe_switch(self, now: float) -> list[Command]:
        if not (self.answers.busy() or self._caller_speaking):
            return self._switch(now, forced=False)
        if self.sessions.must_switch(now):
            return self._switch(now, forced=True)
        return []

    def _switch(self, now: float, *, forced: bool) -> list[Command]:
        """Make the spare the live session: replay the conversation to it, then close the old one."""
        commands: list[Command] = self._drop_answer(now) if forced else []
        self.actions.session_lost()
        self._response_requested = False
        if self.sessions.live is not None:
            commands += self._send_quiet(self.sessions.live.id)  # the old session hears all it was due
        old = self.sessions.promote_spare()
        live = self.sessions.live
        assert live is not None
        commands += self._replay_context(live)
        if old is not None:
            commands.append(CloseModel(old.id))
        self.phase = Phase.LIVE if live.state is LinkState.READY else Phase.CONFIGURING
        self.stats.rollovers += 1
        self.timeline.note(now, "rollover", forced=forced)
        log.info("model session rolled over (%s)", "forced" if forced else "at a quiet moment")
        return commands

    def _on_spare_event(self, spare: Link, event: realtime.Event, now: float) -> list[Command]:
        match event:
            case realtime.SessionCreated(expires_at_s=expires_at_s):
                spare.expires(expires_at_s)
            case realtime.SessionUpdated():
                if formats_ok(event):
                    spare.state = LinkState.READY
                else:
                    log.error("realtime: spare session has the wrong audio format; dropping it")
                    self.sessions.spare_failed(now)
                    return [CloseModel(spare.id)]
            case realtime.Error(kind=kind, code=code, message=message):
                log.warning("realtime: spare session error (%s) %s: %s", kind, code, message)
                if kind in (realtime.ErrorKind.FATAL, realtime.ErrorKind.RETRYABLE):
                    self.sessions.spare_failed(now)
                    return [CloseModel(spare.id)]
            case _:
                pass
        return []

