"""Tools, call control and the keypad in the pure call core: inputs in, commands out."""

from __future__ import annotations

import json
from typing import Any

from callkit import AGENT, CALL, SID, Driver, delta, done, sent, start, unwrap

from service.core.actions import ENDING_CAP_S, FILLER_AFTER_S
from service.core.agent import Agent, Keypad, Tool, Transfer
from service.core.call import Phase
from service.core.commands import CallTool, Command, Dial, EndCall, Hangup
from service.core.inputs import ToolResult
from service.wire import realtime, twilio

BOOK = Tool(
    name="check_availability",
    description="Free tables.",
    url="http://127.0.0.1:9/availability",
    parameters={"type": "object", "properties": {"date": {"type": "string"}}, "required": ["date"]},
    filler="One moment while I check that.",
)
DESK = Transfer(name="front_desk", description="The front desk.", number="+15551230009")
ACTING = Agent(
    key="+15551230001",
    instructions="Help.",
    greeting=None,
    tools=(BOOK,),
    call_control=frozenset({"end_call", "send_dtmf"}),
    transfers=(DESK,),
    keypad=Keypad(digit_timeout_ms=2000, max_digits=4),
)


def acting_call(agent: Agent = ACTING) -> Driver:
    d = Driver(agent)
    d.begin(0.0)
    d.opened(1, 0.1)
    d.twilio(start({"agent": agent.key, "token": "x", "from": "+15550001111", "to": agent.key}), 0.2)
    d.authorize(0.2)
    d.model(realtime.SessionUpdated("audio/pcm", "audio/pcm", 24000, 24000), 0.3)
    return d


def function_call(name: str, arguments: Any, call_id: str = "call_1", response: str = "resp_1") -> (
    realtime.FunctionCall
):
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return realtime.FunctionCall(response, f"item_{call_id}", call_id, name, text)


def outputs(commands: list[Command]) -> list[dict[str, Any]]:
    """The function_call_output items sent, their output parsed."""
    items = [c.item for c in sent(commands, realtime.CreateItem) if c.item["type"] == "function_call_output"]
    return [{"call_id": i["call_id"], **json.loads(i["output"])} for i in items]


def echo_all(d: Driver, commands: list[Command], now: float) -> list[Command]:
    """Twilio echoes every mark sent (the caller has heard it all)."""
    out: list[Command] = []
    for c in commands:
        if isinstance(c, twilio.SendMark):
            out += d.twilio(twilio.Mark(SID, c.name), now)
    return out


def test_a_tool_call_runs_once_its_response_completed_and_its_result_gets_a_response() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    assert d.model(function_call("check_availability", {"date": "friday"}), 1.1) == []
    out = d.model(done(), 1.2)
    [call] = [c for c in out if isinstance(c, CallTool)]
    assert call.tool is BOOK and dict(call.arguments) == {"date": "friday"}
    who = (call.call_sid, call.agent, call.caller, call.called)
    assert who == (CALL, ACTING.key, "+15550001111", ACTING.key)
    # the answer: its output, then a response (nothing is active)
    back = d.call.handle(ToolResult("call_1", '{"tables": 2}', "ok", 180), 1.4)
    assert outputs(back) == [{"call_id": "call_1", "tables": 2}]
    assert sent(back, realtime.CreateResponse) == [realtime.CreateResponse()]
    record = d.call.record(2.0)
    calls = [(t.name, t.outcome, t.duration_ms) for t in record.tool_calls]
    assert calls == [("check_availability", "ok", 180)]
    assert d.call.summary(2.0)["tool_calls"] == 1


def test_a_result_that_comes_while_the_model_speaks_waits_for_the_response_to_end() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(function_call("check_availability", {"date": "friday"}), 1.1)
    d.model(done(), 1.2)
    d.model(realtime.ResponseCreated("resp_2"), 1.3)  # the model goes on talking meanwhile
    back = d.call.handle(ToolResult("call_1", '{"tables": 2}', "ok", 300), 1.5)
    # no response.create while one is active (conversation_already_has_active_response)
    assert outputs(back) and sent(back, realtime.CreateResponse) == []
    after = d.model(done("resp_2"), 2.0)
    assert sent(after, realtime.CreateResponse) == [realtime.CreateResponse()]
    # and only once
    assert sent(d.model(realtime.ResponseCreated("resp_3"), 2.1), realtime.CreateResponse) == []


def test_a_call_of_a_response_cut_short_is_not_run() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(function_call("check_availability", {"date": "friday"}), 1.1)
    out = d.model(done(status="cancelled"), 1.2)
    assert [c for c in out if isinstance(c, CallTool)] == [] and outputs(out) == []


def test_bad_arguments_and_unknown_tools_are_answered_as_errors_the_model_can_apologise_for() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(function_call("check_availability", "{not json", "c1"), 1.1)
    d.model(function_call("check_availability", {"party": 2}, "c2"), 1.1)
    d.model(function_call("check_availability", [1, 2], "c3"), 1.1)
    d.model(function_call("launch_rocket", {}, "c4"), 1.1)
    out = d.model(done(), 1.2)
    assert [c for c in out if isinstance(c, CallTool)] == []
    errors = {o["call_id"]: o["error"] for o in outputs(out)}
    assert errors == {
        "c1": "the arguments are not JSON",
        "c2": "missing arguments: date",
        "c3": "the arguments are not a JSON object",
        "c4": "no tool named launch_rocket",
    }
    assert sent(out, realtime.CreateResponse) == [realtime.CreateResponse()]  # one response for all
    assert d.call.actions.stats.tool_errors == 4


def test_a_slow_tool_gets_its_filler_said_once_when_the_model_is_quiet() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(function_call("check_availability", {"date": "friday"}), 1.1)
    d.model(done(), 1.2)
    assert d.call.next_deadline() == 1.2 + FILLER_AFTER_S
    out = d.timer(1.2 + FILLER_AFTER_S)
    [filler] = sent(out, realtime.CreateResponse)
    assert filler.instructions is not None and BOOK.filler is not None and BOOK.filler in filler.instructions
    assert d.timer(3.0) == []  # once
    d.model(realtime.ResponseCreated("resp_f"), 2.0)
    # the result comes while the filler is being said: its response waits for the filler's end
    back = d.call.handle(ToolResult("call_1", '{"tables": 0}', "ok", 1500), 2.7)
    assert outputs(back) and sent(back, realtime.CreateResponse) == []
    assert sent(d.model(done("resp_f"), 3.0), realtime.CreateResponse) == [realtime.CreateResponse()]


def test_a_failed_tool_is_counted_and_its_error_given_to_the_model() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(function_call("check_availability", {"date": "friday"}), 1.1)
    d.model(done(), 1.2)
    back = d.call.handle(ToolResult("call_1", '{"error": "timeout"}', "timeout", 4000), 5.2)
    assert outputs(back) == [{"call_id": "call_1", "error": "timeout"}]
    assert d.call.summary(6.0)["tool_errors"] == 1


def test_end_call_ends_once_the_goodbye_has_been_heard_then_hangs_up() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    played = d.model(delta(300), 1.0)
    d.model(realtime.AudioDone("resp_1", "item_a"), 1.1)
    d.model(function_call("end_call", {"reason": "done"}), 1.1)
    out = d.model(done(), 1.2)
    assert d.call.phase is Phase.ENDING
    assert sent(out, realtime.CreateResponse) == []  # the goodbye came with the call
    assert not any(isinstance(c, EndCall) for c in out)
    ends = [c for c in echo_all(d, played, 1.6) if isinstance(c, EndCall)]
    assert ends == [EndCall("agent ended the call (done)", 1000, Hangup())]


def test_end_call_without_words_asks_for_the_goodbye_first() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(function_call("end_call", {"reason": "done"}), 1.1)
    out = d.model(done(), 1.2)
    assert sent(out, realtime.CreateResponse) == [realtime.CreateResponse()]
    d.model(realtime.ResponseCreated("resp_2"), 1.3)
    played = d.model(delta(200, "item_b", "resp_2"), 1.4)
    d.model(realtime.AudioDone("resp_2", "item_b"), 1.4)
    assert not any(isinstance(c, EndCall) for c in d.model(done("resp_2"), 1.5))
    assert any(isinstance(c, EndCall) for c in echo_all(d, played, 1.8))


def test_an_ending_call_ends_at_the_cap_if_the_goodbye_is_never_heard() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(delta(300), 1.0)
    d.model(function_call("end_call", {"reason": "done"}), 1.1)
    d.model(done(), 1.2)
    assert d.call.next_deadline() is not None and d.call.next_deadline() <= 1.2 + ENDING_CAP_S  # type: ignore[operator]
    ends = [c for c in d.timer(1.2 + ENDING_CAP_S) if isinstance(c, EndCall)]
    assert ends and ends[0].action == Hangup()


def test_a_model_socket_lost_while_ending_ends_the_call_as_the_agent_decided() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(delta(300), 1.0)
    d.model(function_call("end_call", {"reason": "done"}), 1.1)
    d.model(done(), 1.2)
    ends = [c for c in d.closed(1, 1.3) if isinstance(c, EndCall)]
    assert ends and ends[0].action == Hangup()


def test_transfer_call_goes_to_a_configured_destination_only() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(function_call("transfer_call", {"destination": "+15559999999", "summary": "x"}, "c1"), 1.1)
    out = d.model(done(), 1.2)
    [refused] = outputs(out)
    assert refused["error"] == "unknown destination" and refused["destinations"] == ["front_desk"]
    assert d.call.phase is Phase.LIVE
    d.model(realtime.ResponseCreated("resp_2"), 1.3)
    played = d.model(delta(200, "item_b", "resp_2"), 1.3)
    d.model(function_call("transfer_call", {"destination": "front_desk", "summary": "Wants a table."}, "c2",
                          "resp_2"), 1.4)  # fmt: skip
    d.model(done("resp_2"), 1.5)
    ends = [c for c in echo_all(d, played, 1.8) if isinstance(c, EndCall)]
    assert ends == [EndCall("transferred to front_desk", 1000, Dial(DESK, "Wants a table."))]


def test_send_dtmf_plays_tones_after_the_words_and_never_truncates_them() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(function_call("send_dtmf", {"digits": "12#"}), 1.1)
    out = d.model(done(), 1.2)
    assert outputs(out) == [{"call_id": "call_1", "sent": "12#"}]
    media = sent(out, twilio.SendMedia)
    assert sum(len(m.payload) for m in media) >= 3 * 8 * 70  # three tones of at least 70 ms
    d.model(function_call("send_dtmf", {"digits": "12x"}, "c2", "resp_2"), 1.3)
    bad = d.model(done("resp_2"), 1.4)
    assert "error" in outputs(bad)[0]
    barge = d.model(realtime.SpeechStarted("item_u", 1300), 1.5)
    assert sent(barge, realtime.TruncateItem) == [] and sent(barge, realtime.DeleteItem) == []


def test_the_keypad_is_gathered_until_the_terminator_and_told_to_the_model() -> None:
    d = acting_call()
    assert d.twilio(twilio.Dtmf(SID, "1"), 1.0) == []
    assert d.twilio(twilio.Dtmf(SID, "2"), 1.5) == []
    out = d.twilio(twilio.Dtmf(SID, "#"), 2.0)
    [item] = [c.item for c in sent(out, realtime.CreateItem)]
    assert item["role"] == "user" and item["content"][0]["text"] == "The caller pressed 1 2 #"
    assert sent(out, realtime.CreateResponse) == [realtime.CreateResponse()]


def test_the_keypad_entry_ends_after_a_pause_or_at_its_maximum_length() -> None:
    d = acting_call()
    d.twilio(twilio.Dtmf(SID, "7"), 1.0)
    assert d.call.next_deadline() == 3.0
    out = d.timer(3.0)
    assert [c.item["content"][0]["text"] for c in sent(out, realtime.CreateItem)] == ["The caller pressed 7"]
    for i, digit in enumerate("1234"):
        out = d.twilio(twilio.Dtmf(SID, digit), 4.0 + i / 10)
    assert [c.item["content"][0]["text"] for c in sent(out, realtime.CreateItem)] == [
        "The caller pressed 1 2 3 4"
    ]


def test_an_agent_that_ignores_the_keypad_ignores_it() -> None:
    d = acting_call(Agent(key="default", instructions="x", keypad=Keypad(mode="ignore")))
    assert d.twilio(twilio.Dtmf(SID, "#"), 1.0) == []
    assert d.timer(5.0) == []


def test_a_barge_in_during_a_preamble_truncates_it_and_deletes_the_unheard_answer() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(realtime.OutputItemAdded("resp_1", "item_pre", "message", "assistant"), 1.0)
    pre = d.model(delta(600, "item_pre"), 1.0)
    d.model(realtime.AudioDone("resp_1", "item_pre"), 1.0)
    d.model(realtime.OutputItemAdded("resp_1", "item_ans", "message", "assistant"), 1.0)
    d.model(delta(400, "item_ans"), 1.0)
    first_marks = [c for c in pre if isinstance(c, twilio.SendMark)][:2]  # 0 and 100 ms heard
    for mark in first_marks:
        d.twilio(twilio.Mark(SID, mark.name), 1.15)
    barge = unwrap(d.model(realtime.SpeechStarted("item_u", 1100), 1.2))
    truncates = [c for c in barge if isinstance(c, realtime.TruncateItem)]
    assert [t.item_id for t in truncates] == ["item_pre"] and 100 <= truncates[0].audio_end_ms <= 160
    assert [c for c in barge if isinstance(c, realtime.DeleteItem)] == [realtime.DeleteItem("item_ans")]


def test_a_tool_result_after_a_reconnect_goes_to_the_new_session() -> None:
    d = acting_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(function_call("check_availability", {"date": "friday"}), 1.1)
    d.model(done(), 1.2)
    d.closed(1, 1.3)
    d.opened(2, 1.4)
    replay = d.model(realtime.SessionUpdated("audio/pcm", "audio/pcm", 24000, 24000), 1.5, link=2)
    assert replay == []
    back = d.call.handle(ToolResult("call_1", '{"tables": 2}', "ok", 600), 1.8)
    assert {c.link for c in back if hasattr(c, "link")} == {2}
    assert outputs(back) and sent(back, realtime.CreateResponse)


def test_agents_without_tools_behave_as_before() -> None:
    d = Driver(AGENT).live()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(function_call("end_call", {}), 1.1)
    out = d.model(done(), 1.2)
    assert outputs(out)[0]["error"] == "no tool named end_call"
    assert d.call.phase is Phase.LIVE
