"""Inputs that once hurt a call: JSON nested thousands deep, media timestamps that are not decimal, and a
text frame that is not UTF-8 (the last one end to end, over real sockets on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from service.wire import twilio

if TYPE_CHECKING:
    from service.sim.stack import LocalStack

SID = "MZ" + "a" * 32
CAP = twilio.MAX_MESSAGE_CHARS
AUDIO = b"\xff" * 160


def media_msg(payload: bytes = AUDIO, **fields: object) -> str:
    media: dict[str, object] = {
        "track": "inbound",
        "chunk": "3",
        "timestamp": "60",
        "payload": base64.b64encode(payload).decode(),
    }
    media.update(fields)
    return json.dumps({"event": "media", "sequenceNumber": "4", "streamSid": SID, "media": media})


# --- (1) nesting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[" * 2_000,
        "[" * 50_000,
        "[" * CAP,
        "[" * (CAP // 2) + "]" * (CAP // 2),  # well-formed, at the cap
        '{"a":' * 2_000,
        '{"a":' * (CAP // 5),
        '{"a":' * 5_000 + "1" + "}" * 5_000,  # well-formed
        '{"event":"media","streamSid":"MZ","media":{"x":' + "[" * 3_000 + "]" * 3_000 + "}}",
    ],
    ids=[
        "array-2k",
        "array-50k",
        "array-at-cap",
        "closed-array-at-cap",
        "object-2k",
        "object-at-cap",
        "closed-object",
        "inside-media",
    ],
)
def test_json_nested_thousands_deep_is_invalid_not_an_exception(text: str) -> None:
    assert len(text) <= CAP
    assert twilio.parse(text) == twilio.Invalid("JSON nested too deeply")


def test_deep_json_over_the_cap_is_refused_by_size() -> None:
    ev = twilio.parse("[" * (CAP + 1))
    assert isinstance(ev, twilio.Invalid) and "exceeds" in ev.reason


def test_moderate_nesting_in_an_unused_field_does_not_cost_the_frame() -> None:
    deep = json.loads("[" * 100 + "]" * 100)
    ev = twilio.parse(media_msg(extra=deep))
    assert isinstance(ev, twilio.Media) and ev.payload == AUDIO and ev.timestamp_ms == 60


# --- (2) timestamps ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "timestamp",
    [
        "-20",
        "abc",
        "",
        "1.5",
        " 60",
        "60 ",
        "+60",
        "0x3c",
        "1e3",
        "²",
        "٣",
        "6" * 13,
        "0" * 13,
        -20,
        -1,
        10**12,
        10**30,
        1.5,
        60.0,
        True,
        None,
        [60],
        {"ms": 60},
    ],
)
def test_a_bad_timestamp_keeps_the_audio(timestamp: object) -> None:
    ev = twilio.parse(media_msg(timestamp=timestamp))
    assert isinstance(ev, twilio.Media)
    assert ev.timestamp_ms is None
    assert ev.payload == AUDIO and ev.chunk == 3 and ev.stream_sid == SID


def test_a_missing_timestamp_keeps_the_audio() -> None:
    text = json.dumps(
        {
            "event": "media",
            "streamSid": SID,
            "media": {"chunk": "1", "payload": base64.b64encode(AUDIO).decode()},
        }
    )
    assert twilio.parse(text) == twilio.Media(SID, "inbound", 1, None, AUDIO)


@pytest.mark.parametrize(
    ("timestamp", "ms"),
    [
        ("60", 60),
        ("0", 0),
        ("000060", 60),
        (60, 60),
        ("999999999999", 999_999_999_999),
        (999_999_999_999, 999_999_999_999),
    ],
)
def test_a_good_timestamp_is_that_integer_however_far_in_the_future(timestamp: object, ms: int) -> None:
    ev = twilio.parse(media_msg(timestamp=timestamp))
    assert isinstance(ev, twilio.Media) and ev.timestamp_ms == ms


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("!!notbase64", "base64"),
        (base64.b64encode(b"\xff" * 161).decode(), "odd number"),
        (base64.b64encode(b"\xff" * 20_000).decode(), "limit"),
        (160, "base64 string"),
    ],
)
def test_a_bad_payload_is_still_invalid_whatever_the_timestamp(payload: object, reason: str) -> None:
    for timestamp in ("60", "-20"):
        text = json.dumps(
            {
                "event": "media",
                "streamSid": SID,
                "media": {"chunk": "1", "timestamp": timestamp, "payload": payload},
            }
        )
        ev = twilio.parse(text)
        assert isinstance(ev, twilio.Invalid) and reason in ev.reason


@pytest.mark.parametrize("chunk", ["²", "٣", "-1", "x", 10**13])
def test_a_bad_chunk_is_invalid_and_never_raises(chunk: object) -> None:
    # "²".isdigit() is True but int("²") raises: this used to escape parse() as a ValueError.
    assert twilio.parse(media_msg(chunk=chunk)) == twilio.Invalid("media.chunk must be a decimal string")


counters = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=16),
    st.text(alphabet="0123456789-+ .²٣", max_size=16),
)  # fmt: skip


@given(chunk=counters, timestamp=counters)
def test_media_counters_never_raise_and_never_cost_the_audio_for_the_timestamp(
    chunk: object, timestamp: object
) -> None:
    ev = twilio.parse(media_msg(chunk=chunk, timestamp=timestamp))
    if isinstance(ev, twilio.Media):
        assert ev.payload == AUDIO
        assert ev.timestamp_ms is None or 0 <= ev.timestamp_ms < 10**twilio.MAX_COUNTER_DIGITS
    else:
        assert ev == twilio.Invalid("media.chunk must be a decimal string")
    with_good_chunk = twilio.parse(media_msg(chunk="3", timestamp=timestamp))
    assert isinstance(with_good_chunk, twilio.Media) and with_good_chunk.payload == AUDIO


# --- (3) a text frame that is not UTF-8, end to end ------------------------------------------------------


def healthz(stack: LocalStack) -> int:
    with urllib.request.urlopen(stack.http_base + "/healthz", timeout=5) as response:
        status: int = response.status
        return status


@pytest.mark.timeout(30)
async def test_a_text_frame_that_is_not_utf8_is_answered_with_close_1007() -> None:
    # here, so the parser tests above need only service.wire
    from service.sim.stack import LocalStack, start_message

    call_sid = "CA" + "8" * 32
    async with LocalStack() as stack:
        params = await stack.voice_webhook(call_sid)
        async with connect(stack.media_url, additional_headers=stack.stream_headers()) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(start_message(SID, call_sid, params))
            conn = await stack.sim.wait_for_connection(0)  # the model socket is open: a call in progress
            for ts in range(5):
                await ws.send(media_msg(timestamp=str(ts * 20)))
            # text=True sends these bytes as a Text frame as they are: websockets does not check them.
            await ws.send(b'{"event":"media","streamSid":"\xff\xfe\xc0"}', text=True)
            await asyncio.wait_for(ws.wait_closed(), 5)
        # The server's close frame carried 1007 (without it the client reports 1006 and rcvd is None).
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 1007
        assert ws.close_code == 1007
        # the call ended: the model socket was closed, and the server goes on serving
        await asyncio.wait_for(conn.closed.wait(), 10)
        assert await asyncio.to_thread(healthz, stack) == 200


