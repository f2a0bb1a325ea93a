"""How the call carries out what :mod:`service.core.actions` decides: a base of
:class:`~service.core.call.Call`, kept apart as one policy (tools, call control, keypad).

- after each response: its function calls are acted on; a response is asked for once none is active
  (after a tool's output, a keypad entry, a goodbye that was not said yet);
- a tool's result: its output to the model, then a response when the model is quiet;
- the timer: a filler when a tool is slow, a keypad entry after a pause, the end of an ending call;
- ``ending``: once the agent's last words have been heard (no response active, nothing left to play),
  the call ends with the action decided (hang up, transfer).
- an outbound call: Twilio's answering-machine verdict (:class:`~service.core.inputs.MachineDetected`):
  on ``machine_*`` the agent stops talking, leaves its voicemail message and hangs up; ``fax`` is hung up
  on at once; ``human`` changes nothing. The ``voicemail`` tool (for when detection is off or wrong) is
  withdrawn after the agent's first :data:`VOICEMAIL_TOOL_TURNS` responses.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from service.core.actions import Actions
from service.core.agent import Agent
from service.core.answers import Answers
from service.core.commands import Action, Command, Hangup, ToModel
from service.core.dtmf import tones
from service.core.inputs import ToolResult
from service.core.links import Sessions
from service.core.phase import Phase
from service.core.record import Timeline
from service.core.session import tools_update
from service.core.summary import CallStats
from service.wire import realtime

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

VOICEMAIL_TOOL_TURNS = 2
"""The ``voicemail`` tool is offered during the agent's first responses only: a machine answers at once."""


class Acting:
    """The tools-and-call-control policy of :class:`~service.core.call.Call` (see the module docstring)."""

    # Owned by Call; declared here for the type checker.
    phase: Phase
    agent: Agent | None
    call_sid: str | None
    actions: Actions
    answers: Answers
    sessions: Sessions
    _start_params: Mapping[str, str]
    _response_requested: bool
    _greeting_due: bool
    stats: CallStats
    timeline: Timeline

    def _end(
        self, now: float, reason: str, twilio_close_code: int = 1000, action: Action | None = None
    ) -> list[Command]:
        raise NotImplementedError

    def _who(self) -> dict[str, str]:
        params = self._start_params
        agent = self.agent.key if self.agent is not None else ""
        return {"call_sid": self.call_sid or "", "agent": agent, "from": params.get("from", ""),
                "to": params.get("to", "")}  # fmt: skip

    def _after_response(self, done: realtime.ResponseDone, link: int, now: float) -> list[Command]:
        """A response ended (``answers.done`` has counted it): its function calls, then what is due."""
        commands: list[Command] = []
        if self.agent is not None:
            who, spoke = self._who(), self.answers.spoke
            commands += self.actions.response_done(done, self.agent, link, who, spoke, now)
            if self.actions.tones_due:
                digits, self.actions.tones_due = self.actions.tones_due, ""
                commands += self.answers.tones(tones(digits), now)
            if self.actions.ending is not None and self.phase is not Phase.ENDING:
                self.phase = Phase.ENDING
            commands += self._withdraw_voicemail_tool(link)
        return commands + self._respond_if_idle(link)

    def _withdraw_voicemail_tool(self, link: int) -> list[Command]:
        """After the first turns a machine would have shown itself: the ``voicemail`` tool goes."""
        agent = self.agent
        if agent is None or not agent.voicemail_tool or self.stats.responses < VOICEMAIL_TOOL_TURNS:
            return []
        self.agent = agent = replace(agent, voicemail_tool=False)
        return [ToModel(link, realtime.UpdateSession(tools_update(agent)))]

    def _on_machine(self, answered_by: str, now: float) -> list[Command]:
        """Twilio's answering-machine detection has decided who answered this (outbound) call."""
        self.timeline.note(now, "answered_by", answered_by=answered_by)
        log.info("answered by: %s", answered_by)
        agent = self.agent
        if agent is None:
            log.warning("answering-machine verdict before the stream started: ignored")
            return []
        if answered_by == "fax":
            return self._end(now, "a fax machine answered", action=Hangup())
        if not answered_by.startswith("machine_"):
            return []  # a person (or unknown): the conversation goes on
        if not self.actions.voicemail(agent, f"answering machine ({answered_by})", now):
            return []
        self._greeting_due = False
        live = self.sessions.live
        if live is None or not live.configured:
            return []  # said once the session is configured (see _on_session_updated)
        commands: list[Command] = []
        if self.answers.busy():
            commands += self.answers.barge_in(now, live.id, server_cancels=False)  # stop talking over it
        return commands + self._respond_if_idle(live.id)

    def _respond_if_idle(self, link: int) -> list[Command]:
        """A response the call owes the model (after a tool output...), once none is active."""
        if not self.actions.respond_when_idle or self.answers.active is not None or self._response_requested:
            return []
        self.actions.respond_when_idle = False
        self._response_requested = True
        instructions, self.actions.say_due = self.actions.say_due, None
        return [ToModel(link, realtime.CreateResponse(instructions))]

    def _on_tool_result(self, result: ToolResult, now: float) -> list[Command]:
        live = self.sessions.live
        link = live.id if live is not None and live.configured else None
        r = result
        commands = self.actions.result(r.call_id, r.output, r.outcome, r.duration_ms, link, now)
        return commands + (self._respond_if_idle(link) if link is not None else [])

    def _on_digit(self, digit: str, now: float) -> list[Command]:
        live = self.sessions.live
        if self.agent is None or live is None or not live.configured:
            return []
        digits = self.actions.digit(digit, self.agent, now)
        return self._tell_digits(digits, live.id) if digits else []

    def _tell_digits(self, digits: str, link: int) -> list[Command]:
        text = "The caller pressed " + " ".join(digits)
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        self.actions.respond_when_idle = True
        return [ToModel(link, realtime.CreateItem(item)), *self._respond_if_idle(link)]

    def _acting_timer(self, now: float) -> list[Command]:
        """What the tools, the keypad and an ending call have due at ``now``."""
        live = self.sessions.live
        if live is None or not live.configured:
            return []
        commands: list[Command] = []
        digits = self.actions.digits_due(now)
        if digits:
            commands += self._tell_digits(digits, live.id)
        filler = self.actions.filler_due(now)
        if filler and self.answers.active is None and not self._response_requested:
            self._response_requested = True
            instructions = f'Say exactly this, and nothing else: "{filler}"'
            commands.append(ToModel(live.id, realtime.CreateResponse(instructions)))
        return commands + self._check_ending(now)

    def _check_ending(self, now: float) -> list[Command]:
        ending = self.actions.ending
        if ending is None or self.phase is Phase.ENDED:
            return []
        heard = not (self.answers.busy() or self._response_requested or self.actions.respond_when_idle)
        if heard or now >= ending.deadline:
            if not heard:
                log.warning("ending the call before the agent's last words were heard (%.0f s)", now)
            return self._end(now, ending.reason, action=ending.action)
        return []
