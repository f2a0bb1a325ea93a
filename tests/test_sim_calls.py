"""The Realtime simulator's tools against a raw websockets client: scripted function calls (the GA event
sequence, the function_call_output check, the follow-up response), MCP listings and calls, preamble
responses (two audio items), session.tools validation.

Every server event the simulator sends in these tests is validated against the openai package's GA
models (tests/openai_schema.py) when the ``make_sim`` fixture tears down.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from openai_schema import check_server_event
from simkit import AUTH, Client, check_server_events
from websockets.asyncio.client import connect

from service.sim.realtime_server import RealtimeSimulator
from service.sim.script import Clip, FunctionCall, McpCall, Preamble, ReplyScript, load_clip

pytestmark = pytest.mark.timeout(60)

AUDIO_DELTA = "response.output_audio.delta"
DELTAS = (AUDIO_DELTA, "response.output_audio_transcript.delta", "response.function_call_arguments.delta",
          "response.mcp_call_arguments.delta")  # fmt: skip
AUDIO_ITEM = [
    "response.output_item.added", "conversation.item.added", "response.content_part.added",
    "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
    "conversation.item.done", "response.output_item.done",
]  # fmt: skip
CALL_ITEM = [
    "response.output_item.added", "conversation.item.added", "response.function_call_arguments.done",
    "conversation.item.done", "response.output_item.done",
]  # fmt: skip
MCP_ITEM = [
    "response.output_item.added", "conversation.item.added", "response.mcp_call_arguments.done",
    "response.mcp_call.in_progress", "response.mcp_call.completed", "conversation.item.done",
    "response.output_item.done",
]  # fmt: skip
END = ["response.done", "rate_limits.updated"]

AVAILABILITY = {
    "type": "function", "name": "check_availability", "description": "Free tables on a date.",
    "parameters": {"type": "object",
                   "properties": {"date": {"type": "string"}, "party_size": {"type": "integer"}}},
}  # fmt: skip
BOOK = {"type": "function", "name": "book", "description": "Book a table.", "parameters": {"type": "object"}}
CRM = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.test/sse",
       "allowed_tools": ["lookup_customer"], "require_approval": "never",
       "headers": {"Authorization": "Bearer t0k"}}  # fmt: skip
ARGS = '{"date": "2026-12-24", "party_size": 4}'


def tone_clip(name: str, text: str, ms: int, hz: float = 440.0) -> Clip:
    t = np.arange(ms * 24) / 24000
    return Clip(name, text, 24000, (8000 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes())


ONE_MOMENT = tone_clip("one_moment", "One moment.", 400)
STILL_CHECKING = tone_clip("still_checking", "Still checking.", 300, 550)
FOUND = tone_clip("found", "We have a table at six.", 600, 660)
BOOKED = tone_clip("booked", "You are booked.", 500, 330)

SimFactory = Callable[..., Awaitable[RealtimeSimulator]]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    sims: list[RealtimeSimulator] = []

    async def factory(*replies: Any, **options: Any) -> RealtimeSimulator:
        script = ReplyScript(greeting=load_clip("reply_greeting"), replies=tuple(replies))
        sim = RealtimeSimulator(script, **({"seed": 7, "speed": 20.0, "first_delta_delay_ms": 10} | options))
        await sim.start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        await sim.stop()
        check_server_events(sim)


async def open_session(sim: RealtimeSimulator, **session: Any) -> tuple[Client, list[dict[str, Any]]]:
    """A client whose session.update (``session``) was accepted; the events up to session.updated and
    any MCP listing right after it."""
    client = Client(await connect(sim.url + "?model=gpt-realtime-2", additional_headers=AUTH, proxy=None))
    assert (await client.recv())["type"] == "session.created"
    await client.send({"type": "session.update", "session": {"type": "realtime", **session}})
    events = await client.until("session.updated")
    if any(t.get("type") == "mcp" for t in session.get("tools", [])):
        events += await client.until("conversation.item.done")
    return client, events


async def user_says(client: Client, text: str) -> None:
    """A user turn as a text message (no audio needed)."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await client.send({"type": "conversation.item.create", "item": item})
    await client.until("conversation.item.done")


async def respond(client: Client, **response: Any) -> list[dict[str, Any]]:
    """``response.create``, then every event up to its ``rate_limits.updated``."""
    await client.send({"type": "response.create", **({"response": response} if response else {})})
    return await client.until("rate_limits.updated")


def output_event(call_id: str, output: Any, **extra: Any) -> dict[str, Any]:
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return {"type": "conversation.item.create", "item": item, **extra}


async def answer_call(client: Client, call_id: str, output: str) -> None:
    """The client's ``function_call_output`` for ``call_id``, accepted."""
    await client.send(output_event(call_id, output))
    await client.until("conversation.item.done")


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events if e["type"] not in DELTAS]


def audio_of(events: list[dict[str, Any]], item_id: str) -> bytes:
    return b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == AUDIO_DELTA and e["item_id"] == item_id
    )


async def test_a_function_call_turn_then_its_output_and_the_follow_up(make_sim: SimFactory) -> None:
    sim = await make_sim(FunctionCall("check_availability", ARGS, then=FOUND, preamble=ONE_MOMENT))
    client, _ = await open_session(sim, tools=[AVAILABILITY, BOOK], tool_choice="auto")
    await user_says(client, "Do you have a table for four on Christmas Eve?")
    events = await respond(client)
    assert kinds(events) == ["response.created", *AUDIO_ITEM, *CALL_ITEM, *END]

    preamble_added, call_added = (e for e in events if e["type"] == "response.output_item.added")
    assert (preamble_added["output_index"], call_added["output_index"]) == (0, 1)
    call_item = call_added["item"]
    assert call_item["type"] == "function_call" and call_item["status"] == "in_progress"
    assert (call_item["name"], call_item["arguments"]) == ("check_availability", "")
    call_id, item_id, response_id = call_item["call_id"], call_item["id"], events[0]["response"]["id"]
    assert call_id.startswith("call_") and item_id != preamble_added["item"]["id"]
    assert audio_of(events, preamble_added["item"]["id"]) == ONE_MOMENT.pcm

    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) > 1 and "".join(e["delta"] for e in deltas) == ARGS
    ids = (call_id, item_id, 1, response_id)
    assert all((e["call_id"], e["item_id"], e["output_index"], e["response_id"]) == ids for e in deltas)
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert {k: v for k, v in done.items() if k != "event_id"} == {
        "type": "response.function_call_arguments.done", "response_id": response_id, "item_id": item_id,
        "output_index": 1, "call_id": call_id, "name": "check_availability", "arguments": ARGS,
    }  # fmt: skip
    item_done = next(e for e in events if e["type"] == "response.output_item.done" and e["output_index"] == 1)
    assert item_done["item"] == {"id": item_id, "object": "realtime.item", "type": "function_call",
                                 "status": "completed", "call_id": call_id, "name": "check_availability",
                                 "arguments": ARGS}  # fmt: skip
    response = events[-2]["response"]
    assert response["status"] == "completed" and [o["type"] for o in response["output"]] == [
        "message",
        "function_call",
    ]
    assert response["output"][1] == item_done["item"]
    assert response["usage"]["output_token_details"]["text_tokens"] > 0  # the transcript and the arguments

    # the output must name a call the conversation has
    await client.send(output_event("call_nope", "{}", event_id="evt_out"))
    error = (await client.recv())["error"]
    assert error == {
        "type": "invalid_request_error", "code": None, "param": "item.call_id", "event_id": "evt_out",
        "message": "No tool call found for function call output with call_id call_nope.",
    }  # fmt: skip
    await client.send(output_event(call_id, 42))
    assert (await client.recv())["error"]["code"] == "invalid_type"
    output = json.dumps({"available": ["18:00", "20:30"]})
    await client.send(output_event(call_id, output))
    added, item_done = await client.recv(), await client.recv()
    assert (added["type"], item_done["type"]) == ("conversation.item.added", "conversation.item.done")
    assert added["previous_item_id"] == item_id and item_done["item"]["output"] == output

    follow_up = await respond(client)
    assert kinds(follow_up) == ["response.created", *AUDIO_ITEM, *END]
    answer_id = follow_up[1]["item"]["id"]
    assert audio_of(follow_up, answer_id) == FOUND.pcm
    conn = sim.connections[0]
    assert [r.clip for r in conn.responses] == ["one_moment", "found"]
    assert conn.responses[0].clips == ["one_moment"] and len(conn.responses[0].item_ids) == 2
    (call,) = conn.function_calls
    assert (call.call_id, call.name, call.arguments, call.status, call.output) == (
        call_id, "check_availability", ARGS, "completed", output,
    )  # fmt: skip
    assert conn.function_outputs == [(call_id, output)] and conn.anomalies == []
    usage = follow_up[-2]["response"]["usage"]["input_token_details"]
    assert usage["text_tokens"] > 0  # the call's arguments and output are input to the next response
    await client.ws.close()


async def test_calls_chain_and_outputs_can_come_for_replayed_calls(make_sim: SimFactory) -> None:
    book_args = '{"date": "2026-12-24", "time": "18:00", "party_size": 4}'
    sim = await make_sim(
        FunctionCall("check_availability", ARGS, then=FunctionCall("book", book_args, then=BOOKED))
    )
    client, _ = await open_session(sim, tools=[AVAILABILITY, BOOK])
    await user_says(client, "A table for four, please.")
    first = await respond(client)
    assert kinds(first) == ["response.created", *CALL_ITEM, *END]  # no preamble: the call only
    first_call = first[1]["item"]["call_id"]
    await answer_call(client, first_call, "ok")
    second = await respond(client)
    assert kinds(second) == ["response.created", *CALL_ITEM, *END]
    second_call = second[1]["item"]["call_id"]
    assert second_call != first_call and second[1]["item"]["name"] == "book"
    await answer_call(client, second_call, "BK-1")
    third = await respond(client)
    assert audio_of(third, third[1]["item"]["id"]) == BOOKED.pcm
    # a function call item the client replays (context on a new socket) may be answered too
    replayed = {"type": "function_call", "call_id": "call_replayed", "name": "book", "arguments": "{}"}
    await client.send({"type": "conversation.item.create", "item": replayed})
    await client.until("conversation.item.done")
    await client.send(output_event("call_replayed", "x"))
    assert [e["type"] for e in await client.until("conversation.item.done")][-1] == "conversation.item.done"
    conn = sim.connections[0]
    assert [c.name for c in conn.function_calls] == ["check_availability", "book"]
    assert [c.output for c in conn.function_calls] == ["ok", "BK-1"]
    assert conn.function_outputs[-1] == ("call_replayed", "x") and conn.anomalies == []
    await client.ws.close()


async def test_a_user_turn_after_the_output_wins_over_the_follow_up(make_sim: SimFactory) -> None:
    sim = await make_sim(FunctionCall("send_dtmf", '{"digits": "12#"}', then=FOUND), BOOKED)
    client, _ = await open_session(sim, tools=[{"type": "function", "name": "send_dtmf"}])
    await user_says(client, "Press 1 2 hash for me.")
    call_id = (await respond(client))[1]["item"]["call_id"]
    await answer_call(client, call_id, '{"sent": "12#"}')  # no response.create: the bridge stays quiet
    await user_says(client, "The caller pressed 5.")  # turn 2 comes first
    events = await respond(client)
    assert audio_of(events, events[1]["item"]["id"]) == BOOKED.pcm  # the reply for turn 2
    again = await respond(client)
    assert audio_of(again, again[1]["item"]["id"]) == BOOKED.pcm  # the dropped follow-up stays dropped
    assert sim.connections[0].anomalies == []
    await client.ws.close()


async def test_a_deleted_call_cannot_be_answered(make_sim: SimFactory) -> None:
    sim = await make_sim(FunctionCall("check_availability", ARGS, then=FOUND))
    client, _ = await open_session(sim, tools=[AVAILABILITY])
    await user_says(client, "A table?")
    events = await respond(client)
    item = events[1]["item"]
    await client.send({"type": "conversation.item.delete", "item_id": item["id"]})
    assert (await client.recv())["type"] == "conversation.item.deleted"
    await client.send(output_event(item["call_id"], "x"))
    assert (await client.recv())["error"]["param"] == "item.call_id"
    assert sim.connections[0].function_outputs == []
    await client.ws.close()


async def test_script_and_client_mismatches_are_anomalies(make_sim: SimFactory) -> None:
    sim = await make_sim(FunctionCall("check_availability", ARGS, then=FOUND),
                         FunctionCall("transfer_call", '{"name": "desk"}', then=FOUND))  # fmt: skip
    client, _ = await open_session(sim, tools=[BOOK], tool_choice="none")
    await user_says(client, "A table?")
    call_id = (await respond(client))[1]["item"]["call_id"]
    conn = sim.connections[0]
    assert conn.anomalies == [
        "scripted call to function check_availability, which the tools do not declare",
        "scripted call to function check_availability with tool_choice 'none'",
    ]
    conn.anomalies.clear()
    await respond(client)  # a response while the call waits for its output: the call is made again
    assert conn.anomalies[0].startswith(f"a response while function call check_availability ({call_id})")
    assert conn.anomalies[0].endswith("(the script has no waiting clip)") and len(conn.anomalies) == 3
    conn.anomalies.clear()
    for _ in range(2):
        await answer_call(client, call_id, "x")
    assert conn.anomalies == [f"a second function_call_output for call {call_id} (check_availability)"]
    await user_says(client, "Then put me through.")  # turn 2: the tools of the response count
    await respond(client, tools=[{"type": "function", "name": "transfer_call"}], tool_choice="auto")
    assert conn.anomalies[1:] == []
    await client.ws.close()


async def test_a_waiting_clip_plays_while_the_call_has_no_output(make_sim: SimFactory) -> None:
    sim = await make_sim(FunctionCall("check_availability", ARGS, then=FOUND, waiting=STILL_CHECKING))
    client, _ = await open_session(sim, tools=[AVAILABILITY])
    await user_says(client, "A table?")
    call_id = (await respond(client))[1]["item"]["call_id"]
    filler = await respond(client, instructions="Say that you are still checking.")
    assert audio_of(filler, filler[1]["item"]["id"]) == STILL_CHECKING.pcm
    await answer_call(client, call_id, "x")
    answer = await respond(client)
    assert audio_of(answer, answer[1]["item"]["id"]) == FOUND.pcm
    assert [r.clip for r in sim.connections[0].responses] == ["", "still_checking", "found"]
    assert sim.connections[0].anomalies == []
    await client.ws.close()


async def test_a_call_cancelled_mid_arguments_is_incomplete(make_sim: SimFactory) -> None:
    long_args = json.dumps({"note": "x" * 2000})
    sim = await make_sim(FunctionCall("book", long_args, then=FOUND, preamble=ONE_MOMENT), speed=1.0)
    client, _ = await open_session(sim, tools=[BOOK])
    await user_says(client, "Book it.")
    await client.send({"type": "response.create"})
    await client.until("response.content_part.done")  # the preamble has been spoken
    await client.until("response.function_call_arguments.delta")
    await client.send({"type": "response.cancel"})
    events = await client.until("rate_limits.updated")
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert 0 < len(done["arguments"]) < len(long_args) and long_args.startswith(done["arguments"])
    response = events[-2]["response"]
    assert response["status"] == "cancelled" and response["output"][1]["status"] == "incomplete"
    assert sim.connections[0].function_calls[0].status == "incomplete"
    await client.ws.close()


async def test_mcp_listing_then_a_call_inside_the_response(make_sim: SimFactory) -> None:
    output = json.dumps({"name": "Ada Lovelace", "tier": "gold"})
    sim = await make_sim(
        McpCall("crm", "lookup_customer", '{"phone": "+15557654321"}', answer=FOUND, output=output)
    )
    client, events = await open_session(sim, tools=[CRM])
    assert [e["type"] for e in events] == [
        "session.updated", "conversation.item.added", "mcp_list_tools.in_progress",
        "mcp_list_tools.completed", "conversation.item.done",
    ]  # fmt: skip
    assert events[0]["session"]["tools"] == [CRM]
    listing = events[-1]["item"]
    assert listing["type"] == "mcp_list_tools" and listing["server_label"] == "crm"
    assert [t["name"] for t in listing["tools"]] == ["lookup_customer"] and events[1]["item"]["tools"] == []
    assert events[2]["item_id"] == events[3]["item_id"] == listing["id"]
    # the same configuration again is not listed again
    await client.send({"type": "session.update", "session": {"type": "realtime", "tools": [CRM]}})
    await client.until("session.updated")
    await user_says(client, "Who am I?")
    response = await respond(client)
    assert kinds(response) == ["response.created", *MCP_ITEM, *AUDIO_ITEM, *END]
    mcp_added = response[1]
    item_id = mcp_added["item"]["id"]
    assert mcp_added["output_index"] == 0 and mcp_added["item"] == {
        "id": item_id, "type": "mcp_call", "server_label": "crm", "name": "lookup_customer", "arguments": "",
    }  # fmt: skip
    arguments = [e for e in response if e["type"] == "response.mcp_call_arguments.delta"]
    assert "".join(e["delta"] for e in arguments) == '{"phone": "+15557654321"}'
    completed = next(e for e in response if e["type"] == "response.mcp_call.completed")
    assert (completed["item_id"], completed["output_index"]) == (item_id, 0)
    final = response[-2]["response"]
    assert [o["type"] for o in final["output"]] == ["mcp_call", "message"] and final["status"] == "completed"
    assert final["output"][0]["output"] == output and "error" not in final["output"][0]
    answer = next(e for e in response if e["type"] == "response.output_item.added" and e["output_index"] == 1)
    assert audio_of(response, answer["item"]["id"]) == FOUND.pcm
    conn = sim.connections[0]
    assert conn.mcp_listed == {"crm": True} and conn.anomalies == []
    assert [(c.server_label, c.name, c.output, c.error) for c in conn.mcp_calls] == [
        ("crm", "lookup_customer", output, None)
    ]
    # another configuration of the server is listed anew
    session = {"type": "realtime", "tools": [CRM | {"allowed_tools": None}]}
    await client.send({"type": "session.update", "session": session})
    relisted = await client.until("conversation.item.done")
    assert [t["name"] for t in relisted[-1]["item"]["tools"]] == ["lookup_customer"]  # the script's tools
    await client.ws.close()


async def test_mcp_failures(make_sim: SimFactory) -> None:
    sim = await make_sim(McpCall("crm", "lookup_customer", "{}", answer=FOUND, error="CRM timed out"),
                         mcp_list_failures=frozenset({"crm"}))  # fmt: skip
    client, events = await open_session(sim, tools=[CRM])
    assert [e["type"] for e in events][2:4] == ["mcp_list_tools.in_progress", "mcp_list_tools.failed"]
    await user_says(client, "Who am I?")
    response = await respond(client)
    failed = [e["type"] for e in response if e["type"].startswith("response.mcp_call.")]
    assert failed == ["response.mcp_call.in_progress", "response.mcp_call.failed"]
    mcp_item = response[-2]["response"]["output"][0]
    assert mcp_item["error"] == {"type": "tool_execution_error", "message": "CRM timed out"}
    assert "output" not in mcp_item
    conn = sim.connections[0]
    assert conn.mcp_listed == {"crm": False}
    assert conn.anomalies == ["scripted call to MCP server crm, whose listing failed"]
    assert conn.mcp_calls[0].error == "CRM timed out"
    await client.ws.close()


async def test_mcp_calls_the_session_does_not_allow_are_anomalies(make_sim: SimFactory) -> None:
    sim = await make_sim(McpCall("crm", "delete_customer", "{}", answer=FOUND),
                         McpCall("billing", "refund", "{}", answer=FOUND))  # fmt: skip
    client, _ = await open_session(sim, tools=[CRM])
    await user_says(client, "Delete me.")
    await respond(client)
    await user_says(client, "Refund me.")
    await respond(client)
    assert sim.connections[0].anomalies == [
        "scripted call to MCP tool delete_customer, not in allowed_tools",
        "scripted call to MCP server billing, which the tools do not declare",
    ]
    await client.ws.close()


async def test_a_preamble_response_has_two_audio_items(make_sim: SimFactory) -> None:
    short = load_clip("reply_short")
    sim = await make_sim(Preamble(ONE_MOMENT, short))
    client, _ = await open_session(sim)
    await user_says(client, "When do you open?")
    events = await respond(client)
    assert kinds(events) == ["response.created", *AUDIO_ITEM, *AUDIO_ITEM, *END]
    first, second = (e["item"]["id"] for e in events if e["type"] == "response.output_item.added")
    assert first != second
    for item_id, index, clip in ((first, 0, ONE_MOMENT), (second, 1, short)):
        mine = [e for e in events if e.get("item_id") == item_id]
        assert {e["output_index"] for e in mine} == {index}
        assert audio_of(events, item_id) == clip.pcm
        transcript = next(e for e in mine if e["type"] == "response.output_audio_transcript.done")
        assert transcript["transcript"] == clip.text
        assert "".join(e["delta"] for e in mine if e["type"] == DELTAS[1]) == clip.text
    response = events[-2]["response"]
    assert [o["id"] for o in response["output"]] == [first, second]
    assert [o["content"][0]["transcript"] for o in response["output"]] == [ONE_MOMENT.text, short.text]
    conn = sim.connections[0]
    assert conn.generated_ms == {first: 400, second: short.duration_ms}
    assert (
        conn.responses[0].clips == ["one_moment", "reply_short"] and conn.responses[0].clip == "reply_short"
    )
    assert conn.responses[0].audio_ms == 400 + short.duration_ms

    for item_id, end_ms in ((first, 200), (second, 1000)):  # each item truncates on its own clock
        await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                           "audio_end_ms": end_ms})  # fmt: skip
        truncated = await client.recv()
        assert (truncated["type"], truncated["item_id"], truncated["audio_end_ms"]) == (
            "conversation.item.truncated", item_id, end_ms,
        )  # fmt: skip
    await client.send({"type": "conversation.item.truncate", "item_id": first, "content_index": 0,
                       "audio_end_ms": 300})  # fmt: skip
    assert (await client.recv())["error"]["message"] == "Audio content of 200ms is already shorter than 300ms"
    await client.send({"type": "conversation.item.delete", "item_id": second})
    deleted = await client.recv()
    assert (deleted["type"], deleted["item_id"]) == ("conversation.item.deleted", second)
    assert second not in conn.conversation.order and first in conn.conversation.order
    assert conn.anomalies == [] and [(t.item_id, t.audio_end_ms) for t in conn.truncations] == [
        (first, 200), (second, 1000),
    ]  # fmt: skip
    await client.ws.close()


@pytest.mark.parametrize("cut_during", ["preamble", "answer"])
async def test_cancelling_a_preamble_response(make_sim: SimFactory, cut_during: str) -> None:
    preamble = tone_clip("preamble", "Let me look that up for you.", 1500)
    sim = await make_sim(Preamble(preamble, load_clip("reply_short")), speed=2.0)
    client, _ = await open_session(sim)
    await user_says(client, "When do you open?")
    await client.send({"type": "response.create"})
    await client.until(AUDIO_DELTA)
    if cut_during == "answer":
        await client.until("response.output_item.done")
        await client.until(AUDIO_DELTA)
    await client.send({"type": "response.cancel"})
    events = await client.until("rate_limits.updated")
    response = events[-2]["response"]
    assert response["status"] == "cancelled"
    output = response["output"]
    if cut_during == "preamble":
        assert [o["status"] for o in output] == ["incomplete"]  # the answer never started
    else:
        assert [o["status"] for o in output] == ["completed", "incomplete"]
    cut = output[-1]["id"]
    conn = sim.connections[0]
    assert conn.generated_ms[cut] > 0
    # the cancelled item can be truncated to what was heard, and deleted
    await client.send(
        {"type": "conversation.item.truncate", "item_id": cut, "content_index": 0, "audio_end_ms": 10}
    )
    assert (await client.recv())["type"] == "conversation.item.truncated"
    for item in output:
        await client.send({"type": "conversation.item.delete", "item_id": item["id"]})
        assert (await client.recv())["type"] == "conversation.item.deleted"
    assert [conn.conversation.items[i].role for i in conn.conversation.order] == ["user"]
    assert conn.anomalies == []
    await client.ws.close()


URL = {"type": "mcp", "server_label": "crm", "server_url": "https://x"}


@pytest.mark.parametrize(
    ("tool", "code", "param"),
    [
        ({"type": "function", "description": "x"}, "missing_required_parameter", "name"),
        ({"type": "function", "function": {"name": "x"}}, "missing_required_parameter", "name"),
        ({"type": "function", "name": "x", "function": {}}, "unknown_parameter", "function"),
        ({"type": "function", "name": "check availability"}, "invalid_value", "name"),
        ({"type": "function", "name": "x" * 65}, "string_above_max_length", "name"),
        ({"type": "function", "name": "x", "parameters": "{}"}, "invalid_type", "parameters"),
        ({"type": "web_search"}, "invalid_value", "type"),
        ({"type": "mcp", "server_url": "https://x"}, "missing_required_parameter", "server_label"),
        ({"type": "mcp", "server_label": "crm"}, "missing_required_parameter", "server_url"),
        (URL | {"connector_id": "connector_gmail"}, "invalid_value", "connector_id"),
        (
            {"type": "mcp", "server_label": "crm", "connector_id": "connector_crm"},
            "invalid_value",
            "connector_id",
        ),
        (URL | {"require_approval": "sometimes"}, "invalid_value", "require_approval"),
        (URL | {"allowed_tools": "lookup"}, "invalid_type", "allowed_tools"),
        (URL | {"headers": {"X": 1}}, "invalid_type", "headers.X"),
        (URL | {"url": "https://x"}, "unknown_parameter", "url"),
    ],
)
async def test_session_tools_are_validated_like_ga(
    make_sim: SimFactory, tool: dict[str, Any], code: str, param: str
) -> None:
    sim = await make_sim()
    client = Client(await connect(sim.url + "?model=gpt-realtime", additional_headers=AUTH, proxy=None))
    await client.recv()
    await client.send({"type": "session.update", "event_id": "evt_t",
                       "session": {"type": "realtime", "tools": [tool]}})  # fmt: skip
    error = (await client.recv())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, f"session.tools[0].{param}", "evt_t")
    await client.send({"type": "response.create", "event_id": "evt_r", "response": {"tools": [tool]}})
    error = (await client.recv())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, f"response.tools[0].{param}", "evt_r")
    await client.ws.close()


@pytest.mark.parametrize(
    ("choice", "code"),
    [("sometimes", "invalid_value"), ({"type": "function"}, "missing_required_parameter"),
     ({"type": "mcp", "name": "x"}, "missing_required_parameter"), (3, "invalid_type")],
)  # fmt: skip
async def test_tool_choice_is_validated(make_sim: SimFactory, choice: Any, code: str) -> None:
    sim = await make_sim()
    client = Client(await connect(sim.url + "?model=gpt-realtime", additional_headers=AUTH, proxy=None))
    await client.recv()
    await client.send({"type": "session.update", "session": {"type": "realtime", "tool_choice": choice}})
    error = (await client.recv())["error"]
    assert error["code"] == code and error["param"].startswith("session.tool_choice")
    for good in ("required", {"type": "function", "name": "book"}, {"type": "mcp", "server_label": "crm"}):
        await client.send({"type": "session.update", "session": {"type": "realtime", "tool_choice": good}})
        event = await client.recv()
        assert event["type"] == "session.updated" and event["session"]["tool_choice"] == good
        check_server_event(event)
    await client.ws.close()
