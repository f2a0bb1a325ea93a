"""The Realtime simulator's faults and session limit, against a raw websockets client on 127.0.0.1:
drops limited to some sockets, close codes and TCP resets, refused connection attempts, the session
limit and its close, injected ``error`` events (fatal ones close the socket), input transcription
deltas.

Every server event the simulator sends in these tests is validated against the openai package's GA
models (tests/openai_schema.py) when the simulator is stopped.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from openai_schema import check_server_event
from simkit import AUTH, TRANSCRIPTION_DELTA, Client, check_server_events, silence_24k, upsample_8k_to_24k
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidMessage, InvalidStatus

from service.sim.realtime_server import SESSION_LIMIT_REASON, Fault, RealtimeSimulator, SimConnection
from service.sim.script import ReplyScript, load_clip

pytestmark = pytest.mark.timeout(30)

AUDIO_DELTA = "response.output_audio.delta"
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


@asynccontextmanager
async def simulator(**kwargs: Any) -> AsyncIterator[RealtimeSimulator]:
    """A fast simulator; every event it sent is checked against the GA schema at the end."""
    options: dict[str, Any] = {"seed": 11, "speed": 20.0, "first_delta_delay_ms": 10, **kwargs}
    async with RealtimeSimulator(**options) as sim:
        yield sim
    check_server_events(sim)


async def open_client(sim: RealtimeSimulator) -> Client:
    client = Client(await connect(sim.url + "?model=gpt-realtime", additional_headers=AUTH, proxy=None))
    assert (await client.recv())["type"] == "session.created"
    return client


def speech_24k(name: str = "caller_question", lead_ms: int = 300) -> bytes:
    """A fixture utterance (8 kHz) upsampled to the model's 24 kHz PCM16, after some silence."""
    return silence_24k(lead_ms) + upsample_8k_to_24k(load_clip(name).pcm)


# --- which sockets a fault hits --------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["after_ms", "on_response"])
async def test_a_fault_on_connection_0_only_lets_the_reconnect_succeed(trigger: str) -> None:
    fault = Fault(
        close_after_ms=150 if trigger == "after_ms" else None,
        close_on_response=1 if trigger == "on_response" else None,
        close_code=1011,
        close_reason="upstream failure",
        connections=frozenset({0}),
    )
    async with simulator(fault=fault) as sim:
        first = await open_client(sim)
        if trigger == "on_response":
            await first.send({"type": "response.create"})
        closed = await first.until_closed()
        assert isinstance(closed, ConnectionClosedError)
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (
            1011,
            "upstream failure",
        )
        if trigger == "on_response":
            assert AUDIO_DELTA in [e["type"] for e in first.events]
            assert "response.done" not in [e["type"] for e in first.events]

        second = await open_client(sim)
        await asyncio.sleep(0.3)  # past close_after_ms
        await second.send({"type": "response.create"})
        done = (await second.until("response.done"))[-1]
        assert done["response"]["status"] == "completed"
        await second.ws.close()

        conn0, conn1 = sim.connections
        await asyncio.wait_for(conn1.closed.wait(), 5)
        assert (conn0.index, conn0.ended_by, conn0.close_code, conn0.aborted) == (0, "fault", 1011, False)
        assert (conn1.index, conn1.ended_by, conn1.close_code) == (1, None, 1000)
        assert conn0.accepted_at <= conn1.accepted_at and conn0.closed_at is not None


async def test_an_abort_is_a_tcp_reset_without_a_close_frame() -> None:
    async with simulator(fault=Fault(close_on_response=1, abort=True)) as sim:
        client = await open_client(sim)
        await client.send({"type": "response.create"})
        closed = await client.until_closed()
        assert isinstance(closed, ConnectionClosedError)
        assert closed.rcvd is None and closed.sent is None
        assert client.ws.close_code == 1006
        conn = sim.connections[0]
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert conn.aborted and conn.ended_by == "fault" and conn.close_code == 1006
        assert [e["type"] for e in conn.server_events].count(AUDIO_DELTA) == 1  # cut at the first delta


@pytest.mark.parametrize("abort", [False, True])
async def test_drop_while_the_caller_is_speaking(abort: bool) -> None:
    async with simulator() as sim:
        client = await open_client(sim)
        conn = await sim.wait_for_connection(0)
        speaking = asyncio.create_task(client.append(speech_24k(), pace_s=0.005))
        assert (await client.until("input_audio_buffer.speech_started"))[-1]["type"].endswith("started")
        conn.drop(1012, "service restart", abort=abort)
        conn.drop(1000, "ignored: only the first drop counts")
        closed = await client.until_closed()
        with pytest.raises(ConnectionClosed):
            await speaking  # the caller's audio has nowhere to go any more
        assert isinstance(closed, ConnectionClosedError)
        if abort:
            assert closed.rcvd is None
        else:
            assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (
                1012,
                "service restart",
            )
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert (conn.ended_by, conn.aborted, conn.close_code) == ("drop", abort, 1006 if abort else 1012)


# --- refused connection attempts -------------------------------------------------------------------


async def test_refuse_the_first_two_attempts_with_http_503() -> None:
    async with simulator(fault=Fault(refuse_connects=2)) as sim:
        for _ in range(2):
            with pytest.raises(InvalidStatus) as refused:
                await connect(sim.url + "?model=gpt-realtime", additional_headers=AUTH, proxy=None)
            response = refused.value.response
            assert response.status_code == 503
            assert json.loads(response.body or b"{}")["error"]["type"] == "server_error"
        client = await open_client(sim)
        assert (sim.refused, len(sim.attempts), len(sim.connections)) == (2, 3, 1)
        assert sim.connections[0].index == 0
        assert sim.attempts == sorted(sim.attempts)
        await client.ws.close()


async def test_refuse_with_a_tcp_reset_during_the_handshake() -> None:
    async with simulator(fault=Fault(refuse_connects=1, refuse_with="tcp_reset")) as sim:
        with pytest.raises((InvalidMessage, OSError)):
            await connect(sim.url + "?model=gpt-realtime", additional_headers=AUTH, proxy=None)
        client = await open_client(sim)
        assert (sim.refused, len(sim.attempts), len(sim.connections)) == (1, 2, 1)
        await client.ws.close()


async def test_refusals_do_not_take_a_connection_index() -> None:
    fault = Fault(refuse_connects=1, close_after_ms=100, connections=frozenset({0}))
    async with simulator(fault=fault) as sim:
        with pytest.raises(InvalidStatus):
            await connect(sim.url + "?model=gpt-realtime", additional_headers=AUTH, proxy=None)
        first = await open_client(sim)  # accepted socket 0: the fault closes it
        assert (await first.until_closed()).rcvd is not None
        second = await open_client(sim)
        await asyncio.sleep(0.3)
        await second.send({"type": "input_audio_buffer.clear"})
        assert (await second.recv())["type"] == "input_audio_buffer.cleared"
        await second.ws.close()


# --- the session limit -----------------------------------------------------------------------------


async def test_session_limit_closes_with_1001_and_cuts_the_response() -> None:
    script = ReplyScript(greeting=load_clip("reply_long"), replies=())
    async with simulator(script=script, session_limit_s=1.5, speed=1.0) as sim:
        started = time.monotonic()
        client = await open_client(sim)
        conn = await sim.wait_for_connection(0)
        session = client.events[0]["session"]
        assert session["expires_at"] == math.floor(conn.accepted_at + 1.5)
        assert isinstance(session["expires_at"], int)
        await asyncio.sleep(0.5)
        await client.send({"type": "response.create"})  # 9 s of audio at real time: still playing at 1.5 s
        closed = await client.until_closed(timeout_s=5)
        elapsed = time.monotonic() - started
        assert 1.3 < elapsed < 2.2
        assert isinstance(closed, ConnectionClosed)
        assert closed.rcvd is not None and closed.rcvd.code == 1001
        assert (
            closed.rcvd.reason
            == SESSION_LIMIT_REASON
            == "Your session hit the maximum duration of 60 minutes."
        )
        types = [e["type"] for e in client.events]
        assert AUDIO_DELTA in types and "response.done" not in types and "error" not in types
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert (conn.ended_by, conn.close_code, conn.close_reason) == (
            "session_limit",
            1001,
            SESSION_LIMIT_REASON,
        )
        assert conn.closed_at is not None and 1.3 < conn.closed_at - conn.accepted_at < 2.2

        rollover = await open_client(sim)  # a new socket, a new session and a new deadline
        new_session = rollover.events[0]["session"]
        assert new_session["id"] != session["id"]
        assert new_session["expires_at"] == math.floor(sim.connections[1].accepted_at + 1.5)
        await rollover.ws.close()


async def test_session_update_keeps_expires_at() -> None:
    async with simulator(session_limit_s=600) as sim:
        client = await open_client(sim)
        expires_at = client.events[0]["session"]["expires_at"]
        assert expires_at == math.floor(sim.connections[0].accepted_at + 600)
        await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Hi."}})
        assert (await client.recv())["session"]["expires_at"] == expires_at
        await client.ws.close()


# --- input transcription ---------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "one_delta"), [("gpt-4o-mini-transcribe", False), ("whisper-1", True)])
async def test_transcription_deltas_then_completed(model: str, one_delta: bool) -> None:
    async with simulator() as sim:
        client = await open_client(sim)
        transcription = {"model": model, "language": "en"}
        session = {
            "type": "realtime",
            "audio": {"input": {"transcription": transcription, "turn_detection": None}},
        }
        await client.send({"type": "session.update", "session": session})
        assert (await client.recv())["type"] == "session.updated"
        await client.append(speech_24k())
        await client.send({"type": "input_audio_buffer.commit"})
        events = await client.until("conversation.item.input_audio_transcription.completed")
        types = [e["type"] for e in events]
        deltas = [e for e in events if e["type"] == TRANSCRIPTION_DELTA]
        assert types == [
            "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
            *[TRANSCRIPTION_DELTA] * len(deltas), "conversation.item.input_audio_transcription.completed",
        ]  # fmt: skip
        completed, item_id = events[-1], events[0]["item_id"]
        text = load_clip("caller_question").text
        assert completed["transcript"] == text == "".join(e["delta"] for e in deltas)
        assert (len(deltas) == 1) is one_delta and (len(deltas) == len(text.split()) or one_delta)
        for event in [*deltas, completed]:
            assert (event["item_id"], event["content_index"]) == (item_id, 0)
            check_server_event(event)
        assert set(deltas[0]) == {"type", "event_id", "item_id", "content_index", "delta"}
        assert completed["usage"]["type"] == "tokens"
        await client.ws.close()


async def test_no_transcription_events_without_transcription() -> None:
    async with simulator() as sim:
        client = await open_client(sim)
        manual = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        await client.send({"type": "session.update", "session": manual})
        await client.recv()
        await client.append(speech_24k())
        await client.send({"type": "input_audio_buffer.commit"})
        await client.until("conversation.item.done")
        await client.send({"type": "input_audio_buffer.clear"})
        assert (await client.recv())["type"] == "input_audio_buffer.cleared"
        assert not any("transcription" in e["type"] for e in client.events)
        await client.ws.close()


# --- injected error events -------------------------------------------------------------------------


def assert_ga_error_shape(event: dict[str, Any]) -> None:
    assert set(event) == {"type", "event_id", "error"} and event["type"] == "error"
    assert set(event["error"]) == {"type", "code", "message", "param", "event_id"}
    assert event["event_id"].startswith("event_")
    check_server_event(event)


async def test_an_error_on_the_kth_response_and_the_session_goes_on() -> None:
    fault = Fault(error_on_response=2, connections=frozenset({0}))
    async with simulator(fault=fault) as sim:
        client = await open_client(sim)
        await client.send({"type": "response.create"})
        first = await client.until("response.done")
        assert "error" not in [e["type"] for e in first]
        await client.send({"type": "response.create"})
        second = await client.until("response.done")
        types = [e["type"] for e in second]
        error = second[types.index("error")]
        assert types.index(AUDIO_DELTA) < types.index("error")  # right after the first audio delta
        assert_ga_error_shape(error)
        assert error["error"] == {"type": "server_error", "code": "server_error", "message": SERVER_ERROR,
                                  "param": None, "event_id": None}  # fmt: skip
        assert second[-1]["response"]["status"] == "completed"
        await client.ws.close()
        assert sim.connections[0].ended_by is None


async def test_send_error_from_a_test_has_the_ga_shape() -> None:
    async with simulator() as sim:
        client = await open_client(sim)
        conn = await sim.wait_for_connection(0)
        await conn.send_error("rate_limit_exceeded", "Rate limit reached.", "invalid_request_error")
        await conn.send_error(None, "Something odd happened.", param="session.audio")
        first, second = await client.recv(), await client.recv()
        for event in (first, second):
            assert_ga_error_shape(event)
        assert first["error"] == {
            "type": "invalid_request_error", "code": "rate_limit_exceeded", "message": "Rate limit reached.",
            "param": None, "event_id": None,
        }  # fmt: skip
        assert (second["error"]["type"], second["error"]["code"], second["error"]["param"]) == (
            "server_error", None, "session.audio",
        )  # fmt: skip
        await client.send({"type": "input_audio_buffer.clear"})  # not fatal: the session goes on
        assert (await client.recv())["type"] == "input_audio_buffer.cleared"
        await client.ws.close()


@pytest.mark.parametrize(
    ("code", "error_type", "close_code"),
    [
        ("invalid_api_key", "invalid_request_error", 3000),
        ("insufficient_quota", "insufficient_quota", 3000),
        ("invalid_model", "invalid_request_error", 4000),
    ],
)
async def test_a_fatal_error_is_followed_by_a_close(code: str, error_type: str, close_code: int) -> None:
    async with simulator() as sim:
        client = await open_client(sim)
        conn = await sim.wait_for_connection(0)
        await conn.send_error(code, f"fatal: {code}", error_type)
        event = await client.recv()
        assert_ga_error_shape(event)
        assert (event["error"]["code"], event["error"]["type"]) == (code, error_type)
        closed = await client.until_closed()
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (close_code, f"{error_type}.{code}")
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert (conn.ended_by, conn.close_code) == ("fatal_error", close_code)


async def test_a_fatal_fault_error_cuts_the_response() -> None:
    fault = Fault(error_on_response=1, error_code="invalid_api_key", error_type="invalid_request_error",
                  error_message="Incorrect API key provided.")  # fmt: skip
    async with simulator(fault=fault) as sim:
        client = await open_client(sim)
        await client.send({"type": "response.create"})
        closed = await client.until_closed()
        types = [e["type"] for e in client.events]
        assert types[-1] == "error" and "response.done" not in types
        assert closed.rcvd is not None and closed.rcvd.code == 3000
        conn: SimConnection = sim.connections[0]
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert conn.ended_by == "fatal_error" and conn.responses[0].status == "in_progress"
