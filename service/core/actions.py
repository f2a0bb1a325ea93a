"""What the agent does besides talking: its tools, call control and the caller's keypad. Pure.

- **Function calls.** The model's ``function_call_arguments.done`` is kept until its response is done:
  only a completed response's calls are acted on (the event is also sent for a response cut short). An
  HTTP tool becomes a :class:`~service.core.commands.CallTool` (the runtime POSTs it; the call goes on,
  audio both ways, barge-in and all), its result a ``function_call_output`` item, then a
  ``response.create`` as soon as no response is active. Arguments that are not a JSON object, or miss
  a required key, are answered at once with an error the model can apologise for. A tool with a
  ``filler`` that has not answered after :data:`FILLER_AFTER_S` gets the filler said (when the model is
  quiet), so the caller is not left in silence.
- **Call control.** ``end_call`` and ``transfer_call`` put the call in ``ending``: once the agent's last
  words (its goodbye, its handoff sentence) have been heard, or after :data:`ENDING_CAP_S`, the call ends
  with an action for Twilio (hang up; dial the destination). ``transfer_call`` takes only a configured
  destination's name. ``send_dtmf`` plays the keys as in-band tones (ITU-T Q.23) in the stream.
- **Voicemail.** On an outbound call a machine may answer: told so by Twilio's answering-machine
  detection (:meth:`Actions.voicemail`), or by the model through the ``voicemail`` tool (offered in the
  first two turns), the agent says its ``voicemail_message`` (after the beep: the detection reports the
  end of the greeting) and hangs up once it has been heard, or after :data:`VOICEMAIL_CAP_S`.
- **Keypad.** The caller's digits are gathered (until the terminator, ``max_digits``, or a pause of
  ``digit_timeout_ms``) and told to the model as the caller's message. Digits are never logged at INFO.

Every tool call is counted and recorded (name, duration, outcome); arguments are logged at DEBUG only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from service.core.agent import Agent
from service.core.commands import Action, CallTool, Command, Dial, Hangup, ToModel
from service.core.conversation import Conversation
from service.core.record import Timeline, ToolCallRecord
from service.core.session import voicemail_instructions
from service.wire import realtime

log = logging.getLogger(__name__)

FILLER_AFTER_S = 0.7
ENDING_CAP_S = 10.0
"""The longest an ending call waits for the agent's last words to be heard."""
VOICEMAIL_CAP_S = 90.0
"""The longest a call leaving a voicemail message waits for it to be heard."""
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(slots=True)
class _Running:
    name: str
    started_at: float
    filler: str | None
    filler_said: bool = False


@dataclass(slots=True)
class Ending:
    """The agent decided to end the call: it ends when its last words are heard (or at ``deadline``)."""

    reason: str
    action: Action
    deadline: float


@dataclass(slots=True)
class ActionStats:
    tool_calls: int = 0
    tool_errors: int = 0
    mcp_calls: int = 0
    mcp_errors: int = 0
    records: list[ToolCallRecord] = field(default_factory=list)


class Actions:
    """Function calls, call control and keypad of one call (see the module docstring)."""

    def __init__(self, conversation: Conversation, timeline: Timeline) -> None:
        self._conversation = conversation
        self._timeline = timeline
        self.stats = ActionStats()
        self.ending: Ending | None = None
        self._calls: dict[str, list[realtime.FunctionCall]] = {}  # by response
        self._running: dict[str, _Running] = {}  # HTTP tool calls in flight, by call_id
        self.respond_when_idle = False
        self.tones_due = ""
        """Keys ``send_dtmf`` asked to play, for the call to turn into audio."""
        self.say_due: str | None = None
        """Instructions for the next response the call asks for (the voicemail message to leave)."""
        self._digits: list[str] = []
        self._digit_at = 0.0

    # --- the model's calls -----------------------------------------------------------------------

    def function_call(self, event: realtime.FunctionCall) -> None:
        self._calls.setdefault(event.response_id, []).append(event)

    def response_done(
        self, done: realtime.ResponseDone, agent: Agent, link: int, who: dict[str, str], heard_audio: bool,
        now: float,
    ) -> list[Command]:  # fmt: skip
        """The response ended: act on its function calls if it completed."""
        calls = self._calls.pop(done.response_id, [])
        if done.status != "completed":
            for call in calls:
                log.info("tool %s not run: its response was %s", call.name, done.status)
            return []
        commands: list[Command] = []
        for call in calls:
            commands += self._dispatch(call, agent, link, who, heard_audio, now)
        return commands

    def _dispatch(
        self, call: realtime.FunctionCall, agent: Agent, link: int, who: dict[str, str], heard_audio: bool,
        now: float,
    ) -> list[Command]:  # fmt: skip
        self.stats.tool_calls += 1
        self._timeline.note(now, "tool_started", name=call.name)
        log.debug("tool %s called with %s", call.name, call.arguments)
        self._conversation.tool_call(call.call_id, call.name, call.arguments, now)
        arguments, problem = _arguments(call.arguments)
        match call.name:
            case "end_call" if "end_call" in agent.call_control:
                reason = str(arguments.get("reason", "")) if arguments else ""
                why = f"agent ended the call ({reason[:80]})"
                return self._end(call, link, why, Hangup(), heard_audio, now)
            case "transfer_call" if agent.transfers:
                destination = agent.transfer(str(arguments.get("destination", ""))) if arguments else None
                if destination is None:
                    names = [t.name for t in agent.transfers]
                    return self._answer(call, link, {"error": "unknown destination", "destinations": names},
                                        "bad_arguments", 0, now, respond=True)  # fmt: skip
                summary = str(arguments.get("summary", "")) if arguments else ""
                reason = f"transferred to {destination.name}"
                return self._end(call, link, reason, Dial(destination, summary), heard_audio, now)
            case "voicemail" if agent.voicemail_tool:
                if not self.voicemail(agent, "the model heard a voicemail greeting", now):
                    return self._answer(call, link, {"result": "The call is already ending."}, "ok", 0, now)
                done = "Leaving the voicemail message now." if agent.voicemail_message else "Hanging up."
                return self._answer(call, link, {"result": done}, "ok", 0, now)
            case "send_dtmf" if "send_dtmf" in agent.call_control:
                digits = str(arguments.get("digits", "")) if arguments else ""
                if not digits or not set(digits) <= DTMF_DIGITS or len(digits) > 32:
                    return self._answer(call, link, {"error": "digits must be 0-9, *, #, A-D (at most 32)"},
                                        "bad_arguments", 0, now, respond=True)  # fmt: skip
                self.tones_due += digits
                return self._answer(call, link, {"sent": digits}, "ok", 0, now)
        tool = agent.tool(call.name)
        if tool is None:
            return self._answer(call, link, {"error": f"no tool named {call.name}"}, "unknown_tool", 0, now,
                                respond=True)  # fmt: skip
        if problem is None:
            missing = [key for key in tool.parameters.get("required", []) if key not in arguments]
            if missing:
                problem = f"missing arguments: {', '.join(missing)}"
        if problem is not None:
            return self._answer(call, link, {"error": problem}, "bad_arguments", 0, now, respond=True)
        self._running[call.call_id] = _Running(call.name, now, tool.filler)
        sid, agent_key, caller, called = who["call_sid"], who["agent"], who["from"], who["to"]
        return [CallTool(call.call_id, tool, arguments, sid, agent_key, caller, called)]

    def _end(
        self, call: realtime.FunctionCall, link: int, reason: str, action: Action, heard_audio: bool,
        now: float,
    ) -> list[Command]:  # fmt: skip
        """end_call / transfer_call: the call ends once the agent's last words are heard."""
        if self.ending is not None:  # called twice: the first decision stands
            return self._answer(call, link, {"result": "The call is already ending."}, "ok", 0, now)
        self.ending = Ending(reason, action, now + ENDING_CAP_S)
        output = {"result": "The call ends once the caller has heard your last words."}
        log.info("the agent ends the call: %s", reason)
        # No words came with the call: the model is asked to say them now.
        return self._answer(call, link, output, "ok", 0, now, respond=not heard_audio)

    def voicemail(self, agent: Agent, why: str, now: float) -> bool:
        """A machine answered: leave the agent's voicemail message (if it has one), then hang up. False
        when the call was already ending (the first decision stands)."""
        if self.ending is not None:
            return False
        self.ending = Ending(f"voicemail ({why})", Hangup(), now + VOICEMAIL_CAP_S)
        self._timeline.note(now, "voicemail", message=bool(agent.voicemail_message))
        log.info("voicemail: %s; %s", why, "leaving the message" if agent.voicemail_message else "hanging up")
        if agent.voicemail_message:
            self.say_due = voicemail_instructions(agent.voicemail_message)
            self.respond_when_idle = True
        return True

    def _answer(
        self, call: realtime.FunctionCall, link: int, output: dict[str, Any], outcome: str, duration_ms: int,
        now: float, *, respond: bool = False,
    ) -> list[Command]:  # fmt: skip
        """The ``function_call_output`` item for ``call`` (and a response, when one is wanted)."""
        text = json.dumps(output)
        return self._output(call.call_id, call.name, text, outcome, duration_ms, link, now, respond)

    def _output(
        self, call_id: str, name: str, text: str, outcome: str, duration_ms: int, link: int, now: float,
        respond: bool,
    ) -> list[Command]:  # fmt: skip
        if outcome != "ok":
            self.stats.tool_errors += 1
        started_s = round(now - self._timeline.origin - duration_ms / 1000, 3)
        self.stats.records.append(ToolCallRecord(name, call_id, started_s, duration_ms, outcome))
        self._timeline.note(now, "tool_done", name=name, outcome=outcome, duration_ms=duration_ms)
        log.info("tool %s: %s in %d ms", name, outcome, duration_ms)
        self._conversation.tool_output(call_id, text, now)
        item = {"type": "function_call_output", "call_id": call_id, "output": text}
        commands: list[Command] = [ToModel(link, realtime.CreateItem(item))]
        if respond:
            self.respond_when_idle = True
        return commands

    def result(
        self, call_id: str, output: str, outcome: str, duration_ms: int, link: int | None, now: float
    ) -> list[Command]:
        """An HTTP tool answered: its output goes to the model, which then speaks (when it is quiet)."""
        running = self._running.pop(call_id, None)
        if running is None or link is None:
            return []  # a call the call forgot (its model socket was replaced without it)
        return self._output(call_id, running.name, output, outcome, duration_ms, link, now, respond=True)

    # --- fillers and the end ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [
            r.started_at + FILLER_AFTER_S for r in self._running.values() if r.filler and not r.filler_said
        ]
        if self.ending is not None:
            deadlines.append(self.ending.deadline)
        if self._digits:
            deadlines.append(self._digit_at)
        return min(deadlines) if deadlines else None

    def filler_due(self, now: float) -> str | None:
        """A filler to say now (one per tool call, once), or None."""
        for running in self._running.values():
            if running.filler and not running.filler_said and now >= running.started_at + FILLER_AFTER_S:
                running.filler_said = True
                return running.filler
        return None

    def session_lost(self) -> None:
        """The model session was replaced: its unfinished responses will never complete. (Tools in
        flight still answer: their output goes to the new session, which was told of the call.)"""
        self._calls.clear()

    def mcp_event(self, kind: str, failed: bool, now: float) -> None:
        """OpenAI talks to an MCP server itself: the call only logs and counts it."""
        if kind.startswith("response.mcp_call.") and not kind.endswith("in_progress"):
            self.stats.mcp_calls += 1
            self.stats.mcp_errors += failed
            self._timeline.note(now, "mcp_call", failed=failed)
        if failed:
            log.warning("mcp: %s", kind)
        else:
            log.info("mcp: %s", kind)

    # --- keypad ------------------------------------------------------------------------------------

    def digit(self, digit: str, agent: Agent, now: float) -> str | None:
        """A key the caller pressed; the digits to tell the model when the entry is complete."""
        keypad = agent.keypad
        if keypad.mode == "ignore" or len(digit) != 1 or digit not in DTMF_DIGITS:
            return None
        self._digits.append(digit)
        self._digit_at = now + keypad.digit_timeout_ms / 1000
        if digit == keypad.terminator or len(self._digits) >= keypad.max_digits:
            return self._take_digits(now)
        return None

    def digits_due(self, now: float) -> str | None:
        if self._digits and now >= self._digit_at:
            return self._take_digits(now)
        return None

    def _take_digits(self, now: float) -> str:
        digits, self._digits = "".join(self._digits), []
        self._timeline.note(now, "keypad", digits=len(digits))
        return digits


def _arguments(text: str) -> tuple[dict[str, Any], str | None]:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}, "the arguments are not JSON"
    if not isinstance(value, dict):
        return {}, "the arguments are not a JSON object"
    return value, None


