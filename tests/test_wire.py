"""Parse and serialize of both peers' messages, with the wire facts of shared/reference."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.wire import realtime, twilio

SID = "MZ" + "a" * 32


def media_msg(payload: bytes = b"\xff" * 160, **overrides: object) -> str:
    media = {
        "track": "inbound",
        "chunk": "3",
        "timestamp": "60",
        "payload": base64.b64encode(payload).decode(),
    }
    media.update(overrides)  # type: ignore[arg-type]
    return json.dumps({"event": "media", "sequenceNumber": "4", "streamSid": SID, "media": media})


def test_twilio_start_is_parsed_with_its_parameters() -> None:
    text = json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": SID,
            "start": {
                "streamSid": SID,
                "accountSid": "AC1",
                "callSid": "CA1",
                "tracks": ["inbound"],
                "customParameters": {"agent": "default", "token": "t"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )
    ev = twilio.parse(text)
    assert isinstance(ev, twilio.Start)
    assert ev.call_sid == "CA1" and ev.custom_parameters == {"agent": "default", "token": "t"}
    assert ev.media_format == twilio.MediaFormat("audio/x-mulaw", 8000, 1)


def test_twilio_media_counters_are_strings_on_the_wire() -> None:
    ev = twilio.parse(media_msg())
    assert ev == twilio.Media(SID, "inbound", 3, 60, b"\xff" * 160)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1,2]", "not a JSON object"),
        ('{"no":"event"}', "no event field"),
        (media_msg(payload=b""), ""),
        (
            json.dumps(
                {
                    "event": "media",
                    "streamSid": SID,
                    "media": {"chunk": "1", "timestamp": "0", "payload": "!!notbase64"},
                }
            ),
            "base64",
        ),
        (media_msg(b"\xff" * 161), "odd number"),
        (media_msg(b"\xff" * 20_000), "limit"),
        (
            json.dumps(
                {"event": "media", "streamSid": SID, "media": {"chunk": "x", "timestamp": "0", "payload": ""}}
            ),
            "chunk",
        ),
        (json.dumps({"event": "mark", "streamSid": SID}), "mark.mark"),
        (json.dumps({"event": "start", "streamSid": SID, "start": {"callSid": "CA"}}), "mediaFormat"),
    ],
)
def test_bad_twilio_messages_become_invalid_events(text: str, reason: str) -> None:
    ev = twilio.parse(text)
    if reason:
        assert isinstance(ev, twilio.Invalid) and reason in ev.reason
    else:
        assert isinstance(ev, twilio.Media) and ev.payload == b""


def test_unknown_twilio_event_is_a_value_not_an_error() -> None:
    assert twilio.parse('{"event":"surprise"}') == twilio.Unknown("surprise")
    assert isinstance(twilio.parse(b"\x00\x01"), twilio.Invalid)


def test_twilio_commands_serialize_to_the_documented_shapes() -> None:
    assert json.loads(twilio.serialize(twilio.SendMedia(SID, b"\x00\x01"))) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": "AAE="},
    }
    assert json.loads(twilio.serialize(twilio.SendMark(SID, "m1"))) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "m1"},
    }
    assert json.loads(twilio.serialize(twilio.SendClear(SID))) == {"event": "clear", "streamSid": SID}


@given(st.text(max_size=300))
def test_twilio_parse_never_raises(text: str) -> None:
    twilio.parse(text)


@given(
    st.dictionaries(
        st.sampled_from(["event", "streamSid", "media", "start", "mark", "stop"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=5),
            st.sampled_from(["media", "start", "mark", "stop", "dtmf", "connected"]),
            st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        ),
    )
)
def test_twilio_parse_never_raises_on_wrong_shapes(msg: dict[str, object]) -> None:
    twilio.parse(json.dumps(msg))


def test_realtime_audio_delta() -> None:
    pcm = b"\x01\x00" * 480
    text = json.dumps(
        {
            "type": "response.output_audio.delta",
            "event_id": "e",
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(pcm).decode(),
        }
    )
    assert realtime.parse(text) == realtime.AudioDelta("r", "i", pcm)


def test_realtime_response_done_with_usage() -> None:
    text = json.dumps(
        {
            "type": "response.done",
            "event_id": "e",
            "response": {
                "id": "r",
                "object": "realtime.response",
                "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "turn_detected"},
                "usage": {
                    "total_tokens": 30,
                    "input_tokens": 20,
                    "output_tokens": 10,
                    "input_token_details": {"text_tokens": 5, "audio_tokens": 15, "cached_tokens": 4},
                    "output_token_details": {"text_tokens": 2, "audio_tokens": 8},
                },
            },
        }
    )
    ev = realtime.parse(text)
    assert ev == realtime.ResponseDone(
        "r", "cancelled", "turn_detected", realtime.Usage(20, 10, 5, 15, 4, 2, 8)
    )


def test_realtime_error_and_unknown_and_invalid() -> None:
    err = realtime.parse(
        json.dumps(
            {
                "type": "error",
                "event_id": "e",
                "error": {
                    "type": "invalid_request_error",
                    "code": "response_cancel_not_active",
                    "message": "m",
                    "param": None,
                    "event_id": "evt_3",
                },
            }
        )
    )
    assert err == realtime.Error(
        "invalid_request_error", "response_cancel_not_active", "m", None, "evt_3", realtime.ErrorKind.BENIGN
    )
    assert realtime.parse('{"type":"output_audio_buffer.started"}') == realtime.Unknown(
        "output_audio_buffer.started"
    )
    assert isinstance(realtime.parse("nope"), realtime.Invalid)
    odd = json.dumps(
        {"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": "AAE="[:3]}
    )
    assert isinstance(realtime.parse(odd), realtime.Invalid)


def test_realtime_session_updated_reports_formats() -> None:
    text = json.dumps(
        {
            "type": "session.updated",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcm", "rate": 24000}},
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
                },
            },
        }
    )
    assert realtime.parse(text) == realtime.SessionUpdated("audio/pcm", "audio/pcm", 24000, 24000)


def test_realtime_commands_serialize_to_ga_events() -> None:
    assert json.loads(realtime.serialize(realtime.TruncateItem("item_1", 1234), "evt_1")) == {
        "event_id": "evt_1",
        "type": "conversation.item.truncate",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 1234,
    }
    assert json.loads(realtime.serialize(realtime.CancelResponse())) == {"type": "response.cancel"}
    assert json.loads(realtime.serialize(realtime.CreateResponse("Say hi"))) == {
        "type": "response.create",
        "response": {"instructions": "Say hi"},
    }
    assert json.loads(realtime.serialize(realtime.AppendAudio(b"\x00\x00"))) == {
        "type": "input_audio_buffer.append",
        "audio": "AAA=",
    }


@given(st.text(max_size=300))
def test_realtime_parse_never_raises(text: str) -> None:
    realtime.parse(text)


def test_every_client_event_we_can_send_is_a_valid_ga_event() -> None:
    from openai_schema import check_client_event

    from service.core.agent import Agent, TurnDetection
    from service.core.conversation import Turn
    from service.core.session import context_items, session_for

    agents = [
        Agent(key="default", instructions="x"),
        Agent(key="a", instructions="y", voice="voice_custom123", noise_reduction=None,
              turn_detection=TurnDetection(idle_timeout_ms=8000, interrupt_response=False)),
    ]  # fmt: skip
    commands: list[realtime.Command] = [realtime.UpdateSession(session_for(a)) for a in agents]
    commands += [
        realtime.AppendAudio(b"\x00\x01" * 480),
        realtime.CreateResponse(),
        realtime.CreateResponse("Say hello"),
        realtime.CancelResponse(),
        realtime.CancelResponse("resp_1"),
        realtime.TruncateItem("item_1", 1200),
    ]
    turns = [Turn("caller", "u", 0.0, text="Hello?"), Turn("agent", "a", 0.0, text="Hi, how can I help?")]
    commands += [realtime.CreateItem(item) for item in context_items(turns, 1000)]
    for command in commands:
        for event_id in (None, "evt_7"):
            check_client_event(json.loads(realtime.serialize(command, event_id)))


def test_a_model_message_nested_thousands_deep_is_invalid_not_an_exception() -> None:
    for text in ("[" * 50_000, '{"a":' * 20_000 + "1" + "}" * 20_000):
        event = realtime.parse(text)
        assert isinstance(event, realtime.Invalid) and "nested" in event.reason


def test_rate_limits_keep_the_tokens_limit() -> None:
    limits = [
        {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
        {"name": "tokens", "limit": 40000, "remaining": 35123, "reset_seconds": 7.227},
    ]
    got = realtime.parse(json.dumps({"type": "rate_limits.updated", "event_id": "e", "rate_limits": limits}))
    assert got == realtime.RateLimits(35123, 40000, 7.227)
    no_tokens = json.dumps({"type": "rate_limits.updated", "rate_limits": limits[:1]})
    assert realtime.parse(no_tokens) == realtime.RateLimits(None, None, None)
    assert realtime.parse('{"type":"rate_limits.updated"}') == realtime.Invalid(
        "rate_limits.updated: rate_limits is not a list"
    )
