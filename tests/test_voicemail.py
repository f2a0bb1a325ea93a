"""Answering machines in the pure call core: Twilio's verdict and the model's ``voicemail`` tool."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from callkit import SID, Driver, delta, done, sent, start

from service.core.actions import VOICEMAIL_CAP_S
from service.core.agent import Agent
from service.core.call import Phase
from service.core.commands import Command, EndCall, Hangup
from service.core.inputs import MachineDetected
from service.core.session import greeting_instructions, voicemail_instructions
from service.runtime.recorder import input_line, read_input
from service.wire import realtime, twilio

MESSAGE = "Hi Ada, Dialtone Dental here. Please call us back."
OUTBOUND = Agent(
    key="+15551230001", instructions="You call Ada.", greeting="Hi Ada.", voicemail_message=MESSAGE,
    voicemail_tool=True,
)  # fmt: skip


def outbound_call(agent: Agent = OUTBOUND) -> tuple[Driver, list[Command]]:
    """A live outbound call: the first ``session.update`` and the greeting's request are returned."""
    d = Driver(agent)
    d.begin(0.0)
    first = d.opened(1, 0.1)
    params = {"agent": agent.key, "token": "x", "nonce": "api.n", "direction": "outbound-api"}
    first += d.twilio(start(params), 0.2)
    first += d.authorize(0.2)
    first += d.model(realtime.SessionUpdated("audio/pcm", "audio/pcm", 24000, 24000), 0.3)
    return d, first


def tool_names(commands: list[Command]) -> list[list[str]]:
    """The tool names of each ``session.update`` sent."""
    return [[t["name"] for t in u.session.get("tools", [])] for u in sent(commands, realtime.UpdateSession)]


def echo_all(d: Driver, commands: list[Command], now: float) -> list[Command]:
    out: list[Command] = []
    for c in commands:
        if isinstance(c, twilio.SendMark):
            out += d.twilio(twilio.Mark(SID, c.name), now)
    return out


def ends(commands: list[Command]) -> list[EndCall]:
    return [c for c in commands if isinstance(c, EndCall)]


def test_a_machine_stops_the_agent_then_the_message_is_left_and_the_call_hung_up_once_heard() -> None:
    d, first = outbound_call()
    assert sent(first, realtime.CreateResponse) == [realtime.CreateResponse(greeting_instructions("Hi Ada."))]
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(delta(400), 1.0)  # the greeting plays over the machine's own greeting
    out = d.call.handle(MachineDetected("machine_end_beep"), 2.0)
    assert any(isinstance(c, twilio.SendClear) for c in out)  # the agent stops talking at once
    assert sent(out, realtime.CancelResponse) == [realtime.CancelResponse("resp_1")]
    assert sent(out, realtime.CreateResponse) == []  # not while the cancelled response is still active
    out = d.model(done("resp_1", "cancelled"), 2.1)
    assert sent(out, realtime.CreateResponse) == [realtime.CreateResponse(voicemail_instructions(MESSAGE))]
    assert d.call.phase is Phase.ENDING
    d.model(realtime.ResponseCreated("resp_2"), 2.2)
    played = d.model(delta(600, "item_b", "resp_2"), 2.3)
    d.model(realtime.AudioDone("resp_2", "item_b"), 2.4)
    assert ends(d.model(done("resp_2"), 2.5)) == []  # said, not yet heard
    (end,) = ends(echo_all(d, played, 3.2))
    assert end.action == Hangup() and end.reason.startswith("voicemail")
    noted = [(e.kind, e.detail) for e in d.call.timeline.events]
    assert ("answered_by", {"answered_by": "machine_end_beep"}) in noted


def test_a_person_answering_changes_nothing() -> None:
    d, _ = outbound_call()
    assert d.call.handle(MachineDetected("human"), 2.0) == []
    assert d.call.handle(MachineDetected("unknown"), 2.1) == []
    assert d.call.phase is Phase.LIVE and d.call.actions.ending is None


def test_a_fax_is_hung_up_on_at_once() -> None:
    d, _ = outbound_call()
    (end,) = ends(d.call.handle(MachineDetected("fax"), 2.0))
    assert end.action == Hangup()


def test_without_a_voicemail_message_the_agent_hangs_up_without_a_word() -> None:
    d, _ = outbound_call(replace(OUTBOUND, voicemail_message=None, greeting=None))
    out = d.call.handle(MachineDetected("machine_end_silence"), 2.0)
    assert sent(out, realtime.CreateResponse) == []
    (end,) = ends(out)
    assert end.action == Hangup()


def test_a_verdict_for_a_call_that_has_not_started_is_ignored() -> None:
    d = Driver(OUTBOUND)
    d.begin(0.0)
    assert d.call.handle(MachineDetected("machine_end_beep"), 0.5) == []
    assert d.call.actions.ending is None


def test_the_voicemail_tool_is_offered_in_the_first_two_turns_only() -> None:
    d, first = outbound_call()
    assert tool_names(first) == [["voicemail"]]
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    assert tool_names(d.model(done("resp_1"), 1.1)) == []
    d.model(realtime.ResponseCreated("resp_2"), 2.0)
    out = d.model(done("resp_2"), 2.1)
    assert tool_names(out) == [[]]  # withdrawn
    (update,) = sent(out, realtime.UpdateSession)
    assert update.session == {"type": "realtime", "tools": [], "tool_choice": "auto"}
    assert d.call.agent is not None and not d.call.agent.voicemail_tool  # a new session would not get it
    d.model(realtime.ResponseCreated("resp_3"), 3.0)
    assert tool_names(d.model(done("resp_3"), 3.1)) == []  # only once


def test_an_inbound_agent_is_never_offered_the_voicemail_tool() -> None:
    _, first = outbound_call(replace(OUTBOUND, voicemail_tool=False))
    assert tool_names(first) == [[]]


def test_the_model_calling_voicemail_leaves_the_message_then_hangs_up() -> None:
    d, _ = outbound_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(realtime.FunctionCall("resp_1", "item_c", "call_1", "voicemail", "{}"), 1.1)
    out = d.model(done("resp_1"), 1.2)
    outputs = [json.loads(c.item["output"]) for c in sent(out, realtime.CreateItem)]
    assert outputs == [{"result": "Leaving the voicemail message now."}]
    assert sent(out, realtime.CreateResponse) == [realtime.CreateResponse(voicemail_instructions(MESSAGE))]
    d.model(realtime.ResponseCreated("resp_2"), 1.3)
    played = d.model(delta(500, "item_b", "resp_2"), 1.4)
    d.model(realtime.AudioDone("resp_2", "item_b"), 1.4)
    d.model(done("resp_2"), 1.5)
    (end,) = ends(echo_all(d, played, 2.1))
    assert end.action == Hangup()
    assert d.call.handle(MachineDetected("machine_end_beep"), 2.2) == []  # over: the first decision stood


def test_a_message_never_heard_ends_the_call_at_the_voicemail_cap() -> None:
    d, _ = outbound_call(replace(OUTBOUND, greeting=None))
    out = d.call.handle(MachineDetected("machine_end_beep"), 2.0)
    assert sent(out, realtime.CreateResponse) == [realtime.CreateResponse(voicemail_instructions(MESSAGE))]
    assert ends(d.timer(2.0 + VOICEMAIL_CAP_S - 1)) == []
    (end,) = ends(d.timer(2.0 + VOICEMAIL_CAP_S))
    assert end.action == Hangup()


def test_the_verdict_is_recorded_and_replayed() -> None:
    line: dict[str, Any] = input_line(MachineDetected("machine_end_beep"))
    assert read_input(json.loads(json.dumps(line))) == MachineDetected("machine_end_beep")
