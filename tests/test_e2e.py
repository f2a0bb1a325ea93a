"""End to end over real sockets on 127.0.0.1: hypercorn + Dialtone, the Realtime simulator, the Twilio
caller simulator. These are the slowest tests (a few seconds each): the caller speaks in stream time,
4x faster than real time, except where playback timing is what is being checked."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from openai_schema import check_client_event
from websockets.asyncio.client import connect

from service.sim.caller import CallRecord, place_call
from service.sim.realtime_server import RealtimeSimulator, SimConnection
from service.sim.script import AfterAgentSilent, AfterAgentStarted, HangUp, ReplyScript, Say, load_clip
from service.sim.stack import API_KEY, DEFAULT_AGENTS_FILE, LocalStack, start_message
from service.web.after_stream import APOLOGY

pytestmark = pytest.mark.timeout(90)

CALL_SID = "CA" + "5" * 32  # of the calls placed by hand: one stream token each
QUESTION = load_clip("caller_question")
FOLLOWUP = load_clip("caller_followup")
INTERRUPT = load_clip("caller_interrupt")


async def call(stack: LocalStack, to: str = "+15551239999", **kwargs: Any) -> CallRecord:
    kwargs.setdefault("speed", 4.0)
    return await place_call(stack.http_base, **stack.call_kwargs(to=to, **kwargs))


async def closed(conn: SimConnection) -> None:
    await asyncio.wait_for(conn.closed.wait(), 10)


def appended_bytes(conn: SimConnection) -> int:
    return sum(
        len(base64.b64decode(e["audio"]))
        for e in conn.client_events
        if e["type"] == "input_audio_buffer.append"
    )


def sent_types(conn: SimConnection) -> list[str]:
    return [e["type"] for e in conn.client_events if e["type"] != "input_audio_buffer.append"]


def assert_clean(record: CallRecord, conn: SimConnection) -> None:
    assert record.protocol_errors == []
    assert conn.anomalies == []
    errors = [e for e in conn.server_events if e["type"] == "error"]
    assert errors == []
    for event in conn.client_events:  # every event we send is a GA client event, no unknown keys
        check_client_event(event)


async def test_greeting_then_question_and_answer() -> None:
    async with LocalStack() as stack:
        record = await call(stack, script=[Say(QUESTION, AfterAgentSilent(400))])
        conn = stack.sim.connections[0]
        await closed(conn)
    assert record.end_reason == "caller_hangup"
    assert_clean(record, conn)
    assert sent_types(conn) == ["session.update", "response.create"]
    update = conn.client_events[0]["session"]
    assert update["type"] == "realtime"
    assert update["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert update["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert update["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert update["audio"]["input"]["transcription"] is not None
    # the caller heard the greeting and the answer in full (whole frames, padded at the end)
    expected_ms = sum(r.audio_ms for r in conn.responses)
    assert len(conn.responses) == 2
    assert expected_ms <= record.agent_audio_ms <= expected_ms + 2 * 20
    # every millisecond the caller sent reached the model, three samples for each one; the quiet parts
    # (no sample above QUIET_LEVEL, while the VAD does not hear the caller) in appends of 100 ms
    caller_bytes = sum(len(chunk) for _, chunk in record.spoken)
    assert appended_bytes(conn) == caller_bytes * 6
    appends = [e for e in conn.client_events if e["type"] == "input_audio_buffer.append"]
    assert len(appends) < len(record.spoken) * 0.6


@pytest.mark.parametrize("lag_ms", [0, 150])
async def test_barge_in_clears_and_truncates_to_what_was_heard(lag_ms: int) -> None:
    replies = (load_clip("reply_long"), load_clip("reply_short"))
    sim = RealtimeSimulator(api_key=API_KEY, script=ReplyScript(greeting=None, replies=replies))
    async with LocalStack(sim=sim) as stack:
        record = await call(
            stack,
            to="+15551230002",  # no greeting: the caller speaks first
            speed=1.0,
            script=[
                Say(QUESTION, AfterAgentSilent(timeout_ms=300)),
                Say(INTERRUPT, AfterAgentStarted(1500)),
                HangUp(AfterAgentStarted(200)),
            ],
            end_silence_ms=300,
            playback_lag_ms=lag_ms,  # the caller's playback starts this late: marks echo as it plays
        )
        conn = stack.sim.connections[0]
        await closed(conn)
    assert_clean(record, conn)
    assert len(record.clears) == 1
    assert len(conn.truncations) == 1
    cut = conn.truncations[0]
    heard_ms = record.clears[0].played_ms
    assert abs(cut.audio_end_ms - heard_ms) <= 20, (cut, record.clears[0])
    assert cut.audio_end_ms <= cut.generated_ms
    assert "truncate" in " ".join(sent_types(conn))


async def test_caller_hangs_up_while_the_agent_speaks() -> None:
    async with LocalStack() as stack:
        record = await call(
            stack, script=[Say(QUESTION, AfterAgentSilent(300)), HangUp(AfterAgentStarted(600))]
        )
        conn = stack.sim.connections[0]
        await closed(conn)
    assert record.end_reason == "caller_hangup"
    assert_clean(record, conn)
    assert conn.responses[-1].audio_ms > record.agent_audio_ms - 3912  # the answer was cut short


async def test_each_number_gets_its_own_agent() -> None:
    async with LocalStack() as stack:
        await call(stack, to="+15551230001", script=[HangUp(AfterAgentSilent(200, timeout_ms=500))])
        await call(stack, to="+15551230002", script=[HangUp(AfterAgentSilent(200, timeout_ms=500))])
        first, second = stack.sim.connections[0], stack.sim.connections[1]
        await closed(second)
    a, b = first.client_events[0]["session"], second.client_events[0]["session"]
    assert "Trattoria Sole" in a["instructions"] and a["audio"]["output"]["voice"] == "cedar"
    assert "Brightwire" in b["instructions"] and b["audio"]["output"]["voice"] == "sage"
    assert "response.create" in sent_types(first)  # the default greeting is inherited
    assert "response.create" not in sent_types(second)  # greeting = "" there


async def test_agents_file_edits_apply_to_the_next_call(tmp_path: Path) -> None:
    agents = tmp_path / "agents.toml"
    shutil.copy(DEFAULT_AGENTS_FILE, agents)
    async with LocalStack(agents_file=agents) as stack:
        await call(stack, to="+15551230001", script=[HangUp(AfterAgentSilent(200, timeout_ms=500))])
        agents.write_text(agents.read_text().replace("Trattoria Sole", "Osteria Luna"))
        await call(stack, to="+15551230001", script=[HangUp(AfterAgentSilent(200, timeout_ms=500))])
        agents.write_text("[numbers.broken\n")  # invalid: the last good version stays in use
        await call(stack, to="+15551230001", script=[HangUp(AfterAgentSilent(200, timeout_ms=500))])
        sessions = [c.client_events[0]["session"]["instructions"] for c in stack.sim.connections]
    assert "Trattoria Sole" in sessions[0]
    assert "Osteria Luna" in sessions[1] and "Osteria Luna" in sessions[2]


async def test_forged_webhook_and_forged_or_tokenless_streams_are_refused() -> None:
    async with LocalStack() as stack:
        forged = await call(stack, webhook_signature="forged")
        assert forged.webhook_status == 403 and forged.stream_url is None
        unsigned = await call(stack, stream_signature="missing")
        assert unsigned.ws_status == 403
        bad_sig = await call(stack, stream_signature="forged")
        assert bad_sig.ws_status == 403
        no_token = await call(stack, parameter_overrides={"token": None}, script=[HangUp(AfterAgentSilent())])
        assert no_token.close_code == 1008
        wrong_token = await call(
            stack, parameter_overrides={"token": "123.abc"}, script=[HangUp(AfterAgentSilent())]
        )
        assert wrong_token.close_code == 1008
        # no audio ever reached the model for the refused streams
        assert all(appended_bytes(c) == 0 for c in stack.sim.connections)


async def test_bad_twilio_input_is_skipped_and_the_call_goes_on() -> None:
    async with LocalStack() as stack:
        params = await stack.voice_webhook(CALL_SID)
        sid = "MZ" + "7" * 32
        frame = base64.b64encode(b"\xff" * 160).decode()

        def media(ts: int, payload: str = frame) -> str:
            return json.dumps(
                {
                    "event": "media",
                    "sequenceNumber": str(ts),
                    "streamSid": sid,
                    "media": {
                        "track": "inbound",
                        "chunk": str(ts),
                        "timestamp": str(ts * 20),
                        "payload": payload,
                    },
                }
            )

        async with connect(stack.media_url, additional_headers=stack.stream_headers()) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(media(0))  # media before start
            await ws.send(start_message(sid, CALL_SID, params))
            await ws.send(media(0))
            for junk in (
                "{not json",
                '{"event":"surprise"}',
                media(1, "%%%notbase64"),
                media(2, base64.b64encode(b"\xff" * 161).decode()),
                media(3, base64.b64encode(b"\xff" * 40_000).decode()),
                "[]",
                "x" * 100_000,
            ):
                await ws.send(junk)
            for ts in range(4, 30):
                await ws.send(media(ts))
            await asyncio.sleep(0.5)
            await ws.send(
                json.dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": "99",
                        "streamSid": sid,
                        "stop": {"accountSid": "AC", "callSid": CALL_SID},
                    }
                )
            )
            await asyncio.wait_for(ws.wait_closed(), 5)
        conn = stack.sim.connections[0]
        await closed(conn)
    # the 27 good frames arrived, and the 3 bad ones' 60 ms were filled with silence: 30 frames in all
    assert appended_bytes(conn) == 30 * 160 * 6
    assert sent_types(conn)[0] == "session.update"


async def test_twilio_socket_dropped_without_stop_ends_the_call_and_nothing_leaks() -> None:
    async with LocalStack() as stack:
        await call(stack, to="+15551230002", script=[HangUp(AfterAgentSilent(200, timeout_ms=300))])
        await closed(stack.sim.connections[0])
        await asyncio.sleep(0.3)
        baseline = len(asyncio.all_tasks())
        params = await stack.voice_webhook(CALL_SID)
        sid = "MZ" + "8" * 32
        ws = await connect(stack.media_url, additional_headers=stack.stream_headers())
        await ws.send(start_message(sid, CALL_SID, params))
        conn = await stack.sim.wait_for_connection(1)
        ws.transport.abort()  # the TCP connection drops: no stop, no close frame
        await closed(conn)
        await asyncio.sleep(0.5)
        assert len(asyncio.all_tasks()) <= baseline


async def test_call_log_lines_carry_the_call_sid_and_payloads_only_when_asked() -> None:
    from service.logs import CallIdFilter

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.addFilter(CallIdFilter())
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    keep = Keep()
    service_log = logging.getLogger("service")
    old_level = service_log.level
    service_log.addHandler(keep)
    service_log.setLevel(logging.DEBUG)
    try:
        async with LocalStack(env={"LOG_PAYLOADS": "true"}) as stack:
            record = await call(
                stack, to="+15551230002", script=[HangUp(AfterAgentSilent(200, timeout_ms=300))]
            )
            await closed(stack.sim.connections[0])
    finally:
        service_log.removeHandler(keep)
        service_log.setLevel(old_level)
    summary = next(r for r in keep.records if getattr(r, "summary", None))
    assert summary.call_id == record.call_sid  # type: ignore[attr-defined]
    payload_lines = [
        r.getMessage()
        for r in keep.records
        if r.name == "service.runtime.bridge" and r.levelno == logging.DEBUG
    ]
    assert any(line.startswith("< twilio {") for line in payload_lines)
    assert any(line.startswith("> realtime#1 {") for line in payload_lines)
    assert all(len(line) < 260 for line in payload_lines)


@pytest.mark.parametrize(
    "env",
    [
        {"OPENAI_API_KEY": "sk-wrong-key-123"},
        {"OPENAI_REALTIME_URL": "ws://127.0.0.1:9/v1", "MODEL_RECONNECT_GIVE_UP_S": "1.5"},
    ],
)
async def test_a_model_that_refuses_or_cannot_be_reached_gets_the_caller_an_apology(
    env: dict[str, str],
) -> None:
    async with LocalStack(env=env) as stack:
        record = await call(
            stack, script=[Say(QUESTION, AfterAgentSilent(timeout_ms=300))], max_duration_ms=15_000
        )
    assert record.end_reason == "server_closed"
    # Twilio asks <Connect action> what to do: the apology, then the hang-up
    assert record.action is not None and record.action.status == 200
    assert [v.name for v in record.action_verbs] == ["Say", "Hangup"]
    assert record.action_verbs[0].text == APOLOGY
