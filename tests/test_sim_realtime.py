"""The Realtime simulator against a raw websockets client: handshake, session.update validation, server
VAD on a fixture utterance, the GA response sequence, cancel / truncate errors, faults.

Every server event the simulator sends in these tests is validated against the openai package's GA
models (tests/openai_schema.py) when the ``sim`` fixture tears down.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from simkit import (
    AUTH,
    KEY,
    TRANSCRIPTION_DELTA,
    Client,
    check_server_events,
    silence_24k,
    upsample_8k_to_24k,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.sim.realtime_server import Fault, RealtimeSimulator
from service.sim.script import ReplyScript, load_clip, pcm16_to_ulaw

pytestmark = pytest.mark.timeout(60)

RESPONSE_TYPES = [  # the GA order of one audio response, deltas left out
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "conversation.item.done",
    "response.output_item.done",
    "response.done",
    "rate_limits.updated",
]
DELTAS = ("response.output_audio.delta", "response.output_audio_transcript.delta")


@pytest.fixture
async def sim() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(seed=7, speed=20.0, first_delta_delay_ms=10) as simulator:
        yield simulator
        check_server_events(simulator)


async def open_client(sim: RealtimeSimulator, query: str = "?model=gpt-realtime", **headers: str) -> Client:
    ws = await connect(sim.url + query, additional_headers=headers or AUTH, proxy=None)
    return Client(ws)


@pytest.fixture
async def client(sim: RealtimeSimulator) -> AsyncIterator[Client]:
    c = await open_client(sim)
    assert (await c.recv())["type"] == "session.created"
    yield c
    await c.ws.close()


async def update(client: Client, session: dict[str, Any]) -> dict[str, Any]:
    await client.send({"type": "session.update", "session": {"type": "realtime", **session}})
    return await client.recv()


async def test_session_created_is_the_ga_default_session(sim: RealtimeSimulator) -> None:
    c = await open_client(sim)
    event = await c.recv()
    session = event["session"]
    assert event["type"] == "session.created" and event["event_id"].startswith("event_")
    assert session["id"].startswith("sess_") and session["type"] == "realtime"
    assert session["model"] == "gpt-realtime"
    assert abs(session["expires_at"] - (time.time() + 3600)) < 60
    pcm = {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["format"] == pcm == session["audio"]["output"]["format"]
    vad = session["audio"]["input"]["turn_detection"]
    assert vad["type"] == "server_vad" and vad["threshold"] == 0.5 and vad["prefix_padding_ms"] == 300
    assert vad["create_response"] is True and vad["interrupt_response"] is True
    await c.ws.close()


@pytest.mark.parametrize(
    ("query", "headers", "code", "close_code"),
    [
        ("?model=gpt-realtime", {"Authorization": "Bearer sk-wrong-key-123456"}, "invalid_api_key", 3000),
        ("?model=gpt-realtime", {"X-Other": "1"}, None, 3000),
        ("?model=gpt-realtime", {**AUTH, "OpenAI-Beta": "realtime=v1"}, "beta_api_shape_disabled", 4000),
        ("", AUTH, "missing_model", 4000),
        ("?model=gpt-nope", AUTH, "invalid_model", 4000),
    ],
)
async def test_connection_errors_are_an_error_event_then_a_close(
    sim: RealtimeSimulator, query: str, headers: dict[str, str], code: str | None, close_code: int
) -> None:
    c = await open_client(sim, query, **headers)
    event = await c.recv()
    assert event["type"] == "error" and event["error"]["code"] == code
    assert event["error"]["type"] == "invalid_request_error" and event["error"]["event_id"] is None
    with pytest.raises(ConnectionClosed):
        await c.recv()
    assert c.ws.close_code == close_code
    expected_reason = "invalid_request_error" + (f".{code}" if code else "")
    assert c.ws.close_reason == expected_reason


async def test_azure_api_key_header_and_path_are_accepted(sim: RealtimeSimulator) -> None:
    url = sim.url.replace("/v1/realtime", "/openai/v1/realtime") + "?model=gpt-realtime"
    async with connect(url, additional_headers={"api-key": KEY}, proxy=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"


async def test_unknown_path_and_handshake_rejection_mode() -> None:
    async with RealtimeSimulator(reject_in_handshake=True) as strict:
        with pytest.raises(InvalidStatus) as wrong_path:
            await connect(strict.url.replace("/v1/realtime", "/v1/other") + "?model=gpt-realtime", proxy=None)
        assert wrong_path.value.response.status_code == 404
        with pytest.raises(InvalidStatus) as bad_key:
            await connect(strict.url + "?model=gpt-realtime", additional_headers={"api-key": "x"}, proxy=None)
        assert bad_key.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as no_model:
            await connect(strict.url, additional_headers=AUTH, proxy=None)
        assert no_model.value.response.status_code == 400


@pytest.mark.parametrize(
    ("session", "code", "param", "message"),
    [
        ({"instructions": "hi"}, "missing_required_parameter", "session.type",
         "Missing required parameter: 'session.type'."),
        ({"type": "realtime", "temperature": 0.8}, "unknown_parameter", "session.temperature",
         "Unknown parameter: 'session.temperature'."),
        ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
         "integer_below_min_value", "session.audio.input.format.rate",
         "Invalid 'session.audio.input.format.rate': integer below minimum value. "
         "Expected a value >= 24000, but got 16000 instead."),
        ({"type": "realtime", "audio": {"output": {"format": {"type": "pcm16"}}}},
         "invalid_value", "session.audio.output.format.type",
         "Invalid value: 'pcm16'. Supported values are: 'audio/pcm', 'audio/pcmu', and 'audio/pcma'."),
        ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}},
         "decimal_above_max_value", "session.audio.input.turn_detection.threshold", None),
        ({"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "wibble"}}}}, "invalid_value",
         "session.audio.input.noise_reduction.type",
         "Invalid value: 'wibble'. Supported values are: 'near_field' and 'far_field'."),
        ({"type": "realtime", "input_audio_format": "g711_ulaw"}, "unknown_parameter",
         "session.input_audio_format", None),
        ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad",
                                                                     "eagerness": "low"}}}},
         "unknown_parameter", "session.audio.input.turn_detection.eagerness", None),
    ],
)  # fmt: skip
async def test_session_update_is_validated_like_ga(
    client: Client, session: dict[str, Any], code: str, param: str, message: str | None
) -> None:
    await client.send({"type": "session.update", "event_id": "evt_1", "session": session})
    error = (await client.recv())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_1")
    if message is not None:
        assert error["message"] == message
    # the whole update was discarded: the session is unchanged
    updated = await update(client, {})
    assert updated["type"] == "session.updated"
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert updated["session"]["audio"]["input"]["turn_detection"]["threshold"] == 0.5


async def test_session_update_merges_and_returns_the_full_session(client: Client) -> None:
    vad = {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200, "silence_duration_ms": 400}
    first = await update(client, {"instructions": "Be brief.", "audio": {"input": {"turn_detection": vad}}})
    second = await update(client, {"audio": {"output": {"voice": "marin"}}})
    session = second["session"]
    assert session["instructions"] == "Be brief." and session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["turn_detection"] == first["session"]["audio"]["input"]["turn_detection"]
    assert session["audio"]["input"]["turn_detection"]["create_response"] is True  # default filled in
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    third = await update(client, {"audio": {"input": {"turn_detection": None}}})
    assert third["session"]["audio"]["input"]["turn_detection"] is None
    assert "event_id" in third and third["session"]["id"] == session["id"]


async def test_server_vad_turn_then_response_in_ga_order(sim: RealtimeSimulator, client: Client) -> None:
    await update(client, {"audio": {"input": {
        "transcription": {"model": "gpt-4o-mini-transcribe"},
        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                           "silence_duration_ms": 500}}}})  # fmt: skip
    question = load_clip("caller_question")
    await client.append(silence_24k(600) + upsample_8k_to_24k(question.pcm) + silence_24k(1500))
    events = await client.until("rate_limits.updated")
    types = [e["type"] for e in events if e["type"] not in DELTAS]
    deltas = types.count(TRANSCRIPTION_DELTA)
    assert deltas > 1 and types == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        *[TRANSCRIPTION_DELTA] * deltas,
        "conversation.item.input_audio_transcription.completed",
        *RESPONSE_TYPES,
    ]
    started, stopped, committed = events[0], events[1], events[2]
    assert abs(started["audio_start_ms"] - (600 - 300)) <= 20  # speech onset minus prefix padding
    assert question.duration_ms + 600 - 400 < stopped["audio_end_ms"] <= question.duration_ms + 600 + 500
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert committed["previous_item_id"] is None
    transcription = next(e for e in events if e["type"].endswith("transcription.completed"))
    assert transcription["transcript"] == question.text
    pieces = [e for e in events if e["type"] == TRANSCRIPTION_DELTA]
    assert "".join(e["delta"] for e in pieces) == question.text
    assert {(e["item_id"], e["content_index"]) for e in pieces} == {(committed["item_id"], 0)}

    reply = load_clip("reply_short")  # turn 1 of the default script
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == DELTAS[0])
    assert audio == reply.pcm
    chunk_ms = [len(base64.b64decode(e["delta"])) // 48 for e in events if e["type"] == DELTAS[0]]
    assert all(40 <= ms <= 200 for ms in chunk_ms[:-1]) and len(set(chunk_ms)) > 1
    transcript = "".join(e["delta"] for e in events if e["type"] == DELTAS[1])
    assert transcript == reply.text
    done = next(e for e in events if e["type"] == "response.done")["response"]
    assert done["status"] == "completed" and done["status_details"] is None
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": reply.text}]
    usage = done["usage"]
    assert usage["output_token_details"]["audio_tokens"] == round(reply.duration_ms * 20 / 1000)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    conn = sim.connections[0]
    assert conn.generated_ms == {done["output"][0]["id"]: reply.duration_ms}
    assert conn.responses[0].trigger == "vad" and conn.anomalies == []


async def test_vad_threshold_is_honoured(client: Client) -> None:
    await update(client, {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.5}}}})
    quiet = (np.frombuffer(upsample_8k_to_24k(load_clip("caller_question").pcm), "<i2") // 100).astype("<i2")
    await client.append(quiet.tobytes() + silence_24k(800))  # about -45 dBFS: below -35 dBFS
    await client.send({"type": "input_audio_buffer.clear"})
    assert (await client.recv())["type"] == "input_audio_buffer.cleared"
    await update(client, {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.1}}}})
    await client.append(quiet.tobytes())  # above -55 dBFS
    assert (await client.recv())["type"] == "input_audio_buffer.speech_started"


async def test_manual_turns_commit_needs_100_ms(sim: RealtimeSimulator, client: Client) -> None:
    await update(client, {"audio": {"input": {"turn_detection": None}}})
    await client.append(silence_24k(50))
    await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_c"})
    error = (await client.recv())["error"]
    assert error == {
        "type": "invalid_request_error", "code": "input_audio_buffer_commit_empty", "param": None,
        "event_id": "evt_c",
        "message": "Error committing input audio buffer: buffer too small. "
        "Expected at least 100ms of audio, but buffer only has 50.00ms of audio.",
    }  # fmt: skip
    await client.append(upsample_8k_to_24k(load_clip("caller_question").pcm))  # no VAD events
    await client.send({"type": "input_audio_buffer.commit"})
    assert [e["type"] for e in await client.until("conversation.item.done")] == [
        "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
    ]  # fmt: skip
    await client.send({"type": "response.create"})
    events = await client.until("rate_limits.updated")
    assert sim.connections[0].responses[0].clip == "reply_short"
    assert [e["type"] for e in events if e["type"] not in DELTAS] == RESPONSE_TYPES


async def test_one_response_at_a_time_and_the_greeting_comes_first(
    sim: RealtimeSimulator, client: Client
) -> None:
    await client.send({"type": "response.create", "response": {"instructions": "Say exactly 'hi'."}})
    created = await client.recv()
    await client.send({"type": "response.create", "event_id": "evt_2"})
    events = await client.until("error")
    error = events[-1]["error"]
    assert error["code"] == "conversation_already_has_active_response" and error["event_id"] == "evt_2"
    assert error["message"] == (
        f"Conversation already has an active response in progress: {created['response']['id']}. "
        "Wait until the response is finished before creating a new one."
    )
    await client.until("response.done")
    record = sim.connections[0].responses[0]
    assert (record.clip, record.instructions, record.trigger) == (
        "reply_greeting",
        "Say exactly 'hi'.",
        "client",
    )


def message(role: str, part: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


async def replay(client: Client, turns: list[tuple[str, str]]) -> list[str]:
    """Create text messages (role, text) in order, as a client replays context on a new socket;
    check each gets conversation.item.added then .done in GA shape; return the item ids."""
    ids: list[str] = []
    for i, (role, text) in enumerate(turns):
        part = "input_text" if role == "user" else "output_text"
        await client.send({"type": "conversation.item.create", "event_id": f"evt_{i}",
                           "item": message(role, part, text)})  # fmt: skip
        added, done = await client.recv(), await client.recv()
        assert (added["type"], done["type"]) == ("conversation.item.added", "conversation.item.done")
        previous = ids[-1] if ids else None
        assert added["previous_item_id"] == done["previous_item_id"] == previous
        assert added["item"] == done["item"]
        item = done["item"]
        assert item["id"].startswith("item_") and item["id"] not in ids
        assert (item["type"], item["role"], item["status"], item["object"]) == (
            "message", role, "completed", "realtime.item",
        )  # fmt: skip
        assert item["content"] == [{"type": part, "text": text}]
        ids.append(item["id"])
    return ids


async def test_context_replay_then_the_reply_for_turn_3(sim: RealtimeSimulator, client: Client) -> None:
    question, followup = load_clip("caller_question"), load_clip("caller_followup")
    ids = await replay(client, [
        ("user", question.text), ("assistant", load_clip("reply_short").text),
        ("user", followup.text), ("assistant", load_clip("reply_long").text),
    ])  # fmt: skip
    conn = sim.connections[0]
    assert conn.conversation.user_turns == 2 and conn.conversation.order == ids
    # the caller's next turn is the third: the response plays the script's reply for turn 3
    await update(client, {"audio": {"input": {"turn_detection": None}}})
    await client.append(upsample_8k_to_24k(load_clip("caller_interrupt").pcm))
    await client.send({"type": "input_audio_buffer.commit"})
    committed = (await client.until("conversation.item.done"))[0]
    assert committed["type"] == "input_audio_buffer.committed" and committed["previous_item_id"] == ids[-1]
    await client.send({"type": "response.create"})
    events = await client.until("rate_limits.updated")
    reply = load_clip("reply_followup")
    assert conn.responses[0].clip == reply.name
    assert b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == DELTAS[0]) == reply.pcm
    done = next(e for e in events if e["type"] == "response.done")["response"]
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": reply.text}]
    assert len(conn.conversation.order) == 6
    usage = done["usage"]["input_token_details"]
    assert usage["text_tokens"] > 0 and usage["audio_tokens"] > 0  # the replayed text is input too


async def test_context_replay_then_the_cut_turn_is_answered_again(
    sim: RealtimeSimulator, client: Client
) -> None:
    await replay(client, [("user", "What time are you open?"), ("assistant", "We open at nine."),
                          ("user", "And on the weekend?")])  # fmt: skip
    await client.send({"type": "response.create"})
    assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"
    assert sim.connections[0].responses[0].clip == "reply_long"  # the reply for turn 2


@pytest.mark.parametrize(
    ("item", "code", "param"),
    [
        (message("assistant", "input_text", "hi"), "invalid_value", "item.content[0].type"),
        (message("assistant", "text", "hi"), "invalid_value", "item.content[0].type"),  # beta shape
        (message("user", "output_text", "hi"), "invalid_value", "item.content[0].type"),
        (message("system", "output_text", "hi"), "invalid_value", "item.content[0].type"),
        ({"type": "message", "role": "user", "content": [{"text": "hi"}]}, "missing_required_parameter",
         "item.content[0].type"),
        ({"type": "message", "role": "user", "content": [{"type": "input_text", "txt": "hi"}]},
         "unknown_parameter", "item.content[0].txt"),
        ({"type": "message", "role": "user", "content": [{"type": "input_text", "text": 1}]}, "invalid_type",
         "item.content[0].text"),
        ({"type": "message", "role": "user"}, "missing_required_parameter", "item.content"),
        ({"type": "message", "role": "developer", "content": []}, "invalid_value", "item.role"),
        ({"type": "message", "role": "user", "content": "hi"}, "invalid_type", "item.content"),
    ],
)  # fmt: skip
async def test_malformed_items_are_refused(
    sim: RealtimeSimulator, client: Client, item: dict[str, Any], code: str, param: str
) -> None:
    await client.send({"type": "conversation.item.create", "event_id": "evt_bad", "item": item})
    error = (await client.recv())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_bad")
    if code == "invalid_value" and param.endswith(".type"):
        assert error["message"].startswith(
            f"Invalid value: '{item['content'][0]['type']}'. Supported values are:"
        )
    assert sim.connections[0].conversation.order == [] and sim.connections[0].conversation.user_turns == 0


async def test_cancel_errors_then_cancels_the_active_response(sim: RealtimeSimulator, client: Client) -> None:
    await client.send({"type": "response.cancel"})
    error = (await client.recv())["error"]
    assert error["code"] == "response_cancel_not_active"
    assert error["message"] == "Cancellation failed: no active response found"
    sim.speed = 0.5  # slow enough to still be generating
    await client.send({"type": "response.create"})
    await client.until(DELTAS[0])
    await client.send({"type": "response.cancel"})
    events = await client.until("rate_limits.updated")
    done = next(e for e in events if e["type"] == "response.done")["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    generated = sim.connections[0].generated_ms[done["output"][0]["id"]]
    assert 0 < generated < load_clip("reply_greeting").duration_ms
    audio_done = [e["type"] for e in events].index("response.output_audio.done")
    assert not any(e["type"] in DELTAS for e in events[audio_done:])


async def test_truncate_errors_are_exact(sim: RealtimeSimulator, client: Client) -> None:
    await client.send({"type": "response.create"})
    events = await client.until("rate_limits.updated")
    item_id = next(e for e in events if e["type"] == "response.output_item.added")["item"]["id"]
    generated = load_clip("reply_greeting").duration_ms

    async def truncate(target: str, end_ms: int) -> dict[str, Any]:
        await client.send({"type": "conversation.item.truncate", "item_id": target, "content_index": 0,
                           "audio_end_ms": end_ms})  # fmt: skip
        return await client.recv()

    missing = await truncate("item_nope", 10)
    assert missing["error"]["code"] == "item_truncate_invalid_item_id"
    over = (await truncate(item_id, generated + 500))["error"]
    assert (over["type"], over["code"], over["param"]) == ("invalid_request_error", "invalid_value", None)
    assert over["message"] == f"Audio content of {generated}ms is already shorter than {generated + 500}ms"
    assert (await truncate(item_id, 1000)) | {"event_id": "x"} == {
        "type": "conversation.item.truncated", "event_id": "x", "item_id": item_id, "content_index": 0,
        "audio_end_ms": 1000,
    }  # fmt: skip
    again = (await truncate(item_id, 1500))["error"]
    assert again["message"] == "Audio content of 1000ms is already shorter than 1500ms"
    await update(client, {"audio": {"input": {"turn_detection": None}}})
    await client.append(silence_24k(200))
    await client.send({"type": "input_audio_buffer.commit"})
    user_item = (await client.until("conversation.item.done"))[0]["item_id"]
    user = (await truncate(user_item, 0))["error"]
    assert (user["code"], user["message"]) == (
        "unsupported_content_type",
        "Only model output audio messages can be truncated",
    )
    await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0})
    assert (await client.recv())["error"]["message"] == "Missing required parameter: 'audio_end_ms'."
    conn = sim.connections[0]
    assert [(t.item_id, t.audio_end_ms, t.generated_ms) for t in conn.truncations] == [
        (item_id, 1000, generated)
    ]


async def test_speech_interrupts_an_active_response(sim: RealtimeSimulator, client: Client) -> None:
    sim.speed = 0.5
    await client.send({"type": "response.create"})
    await client.until(DELTAS[0])
    await client.append(silence_24k(100) + upsample_8k_to_24k(load_clip("caller_interrupt").pcm[:8000]))
    events = await client.until("response.done")
    started = next(i for i, e in enumerate(events) if e["type"] == "input_audio_buffer.speech_started")
    assert started < len(events) - 1
    assert events[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert sim.connections[0].responses[0].status == "cancelled"


async def test_bad_input_gets_errors_and_the_session_goes_on(sim: RealtimeSimulator, client: Client) -> None:
    await client.ws.send(b"\x00\x01")
    assert (await client.recv())["error"]["code"] == "invalid_event"
    for not_json in ("not json", "[" * 100_000):
        await client.ws.send(not_json)
        assert (await client.recv())["error"]["code"] == "invalid_json"
    await client.send({"type": "response.audio.delta"})
    error = (await client.recv())["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "type")
    assert error["message"].startswith("Invalid value: 'response.audio.delta'. Supported values are: ")
    await client.send({"type": "output_audio_buffer.clear"})  # WebRTC/SIP only
    assert (await client.recv())["error"]["code"] == "invalid_value"
    await client.send({"audio": "AAAA"})
    assert (await client.recv())["error"]["code"] == "missing_required_parameter"
    await client.send({"type": "input_audio_buffer.append", "audio": "***"})
    assert (await client.recv())["error"]["param"] == "audio"
    await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()})
    await client.send({"type": "response.create"})
    assert (await client.until("response.done"))[-1]["response"]["status"] == "completed"
    assert sim.connections[0].anomalies == ["odd-length PCM16 append (3 bytes)"]


async def test_g711_formats_in_and_out(client: Client) -> None:
    ulaw = {"type": "audio/pcmu"}
    await update(client, {"audio": {"input": {"format": ulaw}, "output": {"format": ulaw}}})
    question = load_clip("caller_question")
    speech = pcm16_to_ulaw(b"\x00\x00" * 8 * 400 + question.pcm + b"\x00\x00" * 8 * 1200)
    await client.append(speech, frame_bytes=160)
    events = await client.until("rate_limits.updated")
    assert events[0]["type"] == "input_audio_buffer.speech_started"
    assert abs(events[0]["audio_start_ms"] - 100) <= 20
    audio = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == DELTAS[0])
    assert abs(len(audio) // 8 - load_clip("reply_short").duration_ms) <= 1


async def test_close_after_ms_fault() -> None:
    async with RealtimeSimulator(fault=Fault(close_after_ms=100, close_code=1011)) as faulty:
        c = await open_client(faulty)
        with pytest.raises(ConnectionClosed):
            while True:
                await c.recv()
        assert c.ws.close_code == 1011
        conn = await faulty.wait_for_connection(0)
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert conn.close_code == 1011


async def test_close_on_the_kth_response_fault() -> None:
    fault = Fault(close_on_response=2, close_code=1001, close_reason="going away")
    script = ReplyScript(greeting=load_clip("reply_short"), replies=(load_clip("reply_long"),))
    async with RealtimeSimulator(script, fault=fault, speed=2.0, first_delta_delay_ms=0) as faulty:
        c = await open_client(faulty)
        await c.until("session.created")
        await c.send({"type": "response.create"})
        await c.until("rate_limits.updated", timeout_s=10)
        await c.send({"type": "response.create"})
        with pytest.raises(ConnectionClosed):
            await c.until("response.done")
        assert (c.ws.close_code, c.ws.close_reason) == (1001, "going away")
        created = [i for i, e in enumerate(c.events) if e["type"] == "response.created"]
        second = [e["type"] for e in c.events[created[1] :]]
        assert DELTAS[0] in second and "response.done" not in second
