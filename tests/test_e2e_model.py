"""End to end over real sockets: calls that survive the model connection. hypercorn + Dialtone, the
Realtime simulator with injected faults and a short session limit, the Twilio caller simulator.

Each test asserts that the call goes on (the caller is answered after the fault) and what the new
session received: the agent's configuration, the conversation replayed as text, and no second greeting.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import pytest
from openai_schema import check_client_event

from service.sim.caller import CallRecord, place_call
from service.sim.realtime_server import Fault, RealtimeSimulator, SimConnection
from service.sim.script import AfterAgentSilent, At, HangUp, ReplyScript, Say, load_clip
from service.sim.stack import API_KEY, LocalStack

pytestmark = pytest.mark.timeout(90)

QUESTION = load_clip("caller_question")
FOLLOWUP = load_clip("caller_followup")


async def call(stack: LocalStack, to: str = "+15551239999", **kwargs: Any) -> CallRecord:
    kwargs.setdefault("speed", 2.0)
    return await place_call(stack.http_base, **stack.call_kwargs(to=to, **kwargs))


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polling the simulator's record, which has no event
            await asyncio.sleep(0.01)


async def all_closed(sim: RealtimeSimulator) -> None:
    for conn in sim.connections:
        await asyncio.wait_for(conn.closed.wait(), 10)


def appended(conn: SimConnection) -> int:
    appends = [e for e in conn.client_events if e["type"] == "input_audio_buffer.append"]
    return sum(len(base64.b64decode(e["audio"])) for e in appends)


def control_events(conn: SimConnection) -> list[dict[str, Any]]:
    return [e for e in conn.client_events if e["type"] != "input_audio_buffer.append"]


def replayed(conn: SimConnection) -> list[tuple[str, str]]:
    return [
        (e["item"]["role"], e["item"]["content"][0]["text"])
        for e in conn.client_events
        if e["type"] == "conversation.item.create"
    ]


def assert_clean(record: CallRecord, *conns: SimConnection) -> None:
    assert record.protocol_errors == []
    for conn in conns:
        assert conn.anomalies == []
        assert [e for e in conn.server_events if e["type"] == "error"] == []
        for event in conn.client_events:
            check_client_event(event)


def two_turns() -> list[Say | HangUp]:
    return [
        Say(QUESTION, AfterAgentSilent(400)),
        Say(FOLLOWUP, AfterAgentSilent(400, timeout_ms=15_000)),
        HangUp(AfterAgentSilent(500, timeout_ms=15_000)),
    ]


@pytest.mark.parametrize("abort", [False, True], ids=["close-1011", "tcp-abort"])
async def test_a_model_drop_mid_answer_is_survived(abort: bool) -> None:
    # the first socket fails right after the first audio of its second response (the answer)
    fault = Fault(close_on_response=2, abort=abort, connections=frozenset({0}))
    sim = RealtimeSimulator(api_key=API_KEY, fault=fault)
    async with LocalStack(sim=sim) as stack:
        record = await call(stack, script=two_turns())
        await all_closed(sim)
    assert record.end_reason == "caller_hangup"
    first, second = sim.connections
    assert_clean(record, second)
    assert first.aborted is abort
    kinds = [e["type"] for e in control_events(second)]
    assert kinds[0] == "session.update"
    assert control_events(second)[0]["session"] == control_events(first)[0]["session"]
    # the conversation as heard: the caller's question and the greeting (the answer was barely begun)
    assert replayed(second)[:2] == [("assistant", load_clip("reply_greeting").text), ("user", QUESTION.text)]
    assert "response.create" in kinds  # it was mid-answer: the new session is asked to go on
    assert not any("Greet" in str(e.get("response")) for e in control_events(second))  # no second greeting
    # the caller heard the answer from the new session, and the follow-up was answered too
    assert len(second.responses) == 2
    assert record.agent_audio_ms > sum(r.audio_ms for r in second.responses) - 100
    assert len(record.clears) == 0 or record.clears[0].played_ms < 200


async def test_a_drop_while_the_caller_speaks_gives_the_new_session_the_whole_utterance() -> None:
    sim = RealtimeSimulator(api_key=API_KEY)
    async with LocalStack(sim=sim) as stack:
        placed = asyncio.create_task(
            call(stack, to="+15551230002", script=[Say(QUESTION, At(300)), HangUp(AfterAgentSilent(500))])
        )
        first = await sim.wait_for_connection(0)
        await until(lambda: "input_audio_buffer.speech_started" in [e["type"] for e in first.server_events])
        await asyncio.sleep(0.3)  # well inside the question
        first.drop(abort=True)
        record = await placed
        await all_closed(sim)
    second = sim.connections[1]
    assert_clean(record, second)
    kinds = [e["type"] for e in control_events(second)]
    assert kinds == ["session.update"]  # nothing to replay yet, and no response.create: the VAD decides
    assert len(second.responses) == 1 and record.agent_audio_ms > 1000  # the question was answered
    # the new session first heard again what the lost one had of the utterance
    first_audio = [e["audio"] for e in first.client_events if e["type"] == "input_audio_buffer.append"]
    second_audio = [e["audio"] for e in second.client_events if e["type"] == "input_audio_buffer.append"]
    start_ms = next(e for e in first.server_events if e["type"] == "input_audio_buffer.speech_started")[
        "audio_start_ms"
    ]
    # every append is one 20 ms frame: find where the new session's audio starts in the lost one's
    kept_from = next(
        i for i in range(len(first_audio)) if first_audio[i:] == second_audio[: len(first_audio) - i]
    )
    assert abs(kept_from * 20 - start_ms) <= 20  # from the VAD's start (its prefix padding included)
    assert second_audio[: len(first_audio) - kept_from] == first_audio[kept_from:]
    assert second.conversation.user_turns == 1 and second.responses[0].trigger == "vad"


async def test_refused_connects_are_retried_and_the_call_goes_ahead() -> None:
    sim = RealtimeSimulator(api_key=API_KEY, fault=Fault(refuse_connects=2))
    async with LocalStack(sim=sim) as stack:
        steps = [Say(QUESTION, AfterAgentSilent(400)), HangUp(AfterAgentSilent(500))]
        record = await call(stack, script=steps)
        await all_closed(sim)
    assert sim.refused == 2 and len(sim.connections) == 1
    assert_clean(record, sim.connections[0])
    assert record.end_reason == "caller_hangup" and len(sim.connections[0].responses) == 2


async def test_a_fatal_error_is_not_retried_and_the_caller_gets_the_apology() -> None:
    fault = Fault(error_on_response=1, error_code="insufficient_quota", error_type="insufficient_quota",
                  error_message="You exceeded your current quota.")  # fmt: skip
    sim = RealtimeSimulator(api_key=API_KEY, fault=fault)
    async with LocalStack(sim=sim) as stack:
        record = await call(stack, script=[Say(QUESTION, AfterAgentSilent(400))], max_duration_ms=20_000)
        await all_closed(sim)
    # not retried: one socket; closed by the server (3000) or by us first, on the error event (1000)
    assert len(sim.connections) == 1 and sim.connections[0].close_code in (1000, 3000)
    assert record.end_reason == "server_closed"
    assert [v.name for v in record.action_verbs] == ["Say", "Hangup"]  # the apology, from <Connect action>


async def test_a_session_at_its_limit_is_rolled_over_without_losing_a_byte() -> None:
    greeting = load_clip("reply_greeting")
    script = ReplyScript(greeting, (load_clip("reply_short"), load_clip("reply_followup")),
                         caller_transcripts=(QUESTION.text, FOLLOWUP.text))  # fmt: skip
    # the first session lasts 10 s; the call replaces it 6 s before that, once the greeting has played
    sim = RealtimeSimulator(api_key=API_KEY, script=script, session_limit_s=10.0)
    steps = [Say(QUESTION, AfterAgentSilent(1500)), Say(FOLLOWUP, AfterAgentSilent(400)),
             HangUp(AfterAgentSilent(500))]  # fmt: skip
    async with LocalStack(sim=sim, env={"ROLLOVER_MARGIN_S": "6"}) as stack:
        placed = asyncio.create_task(call(stack, speed=1.0, script=steps))
        await sim.wait_for_connection(0)
        sim.session_limit_s = 3600.0  # the replacement lasts as long as GA's
        record = await placed
        await all_closed(sim)
    assert record.end_reason == "caller_hangup"
    assert len(sim.connections) == 2
    first, second = sim.connections
    assert_clean(record, first, second)
    assert first.ended_by is None and first.close_code == 1000  # we closed it, before its limit
    assert first.closed_at is not None and first.closed_at < first.accepted_at + 10
    assert [e["type"] for e in control_events(second)] == ["session.update", "conversation.item.create"]
    assert replayed(second) == [("assistant", greeting.text)]  # no second greeting, no response asked
    assert len(first.responses) == 1 and len(second.responses) == 2  # both questions were answered
    caller_bytes = sum(len(chunk) for _, chunk in record.spoken)
    assert appended(first) + appended(second) == caller_bytes * 6  # none lost, none twice
