"""End to end over real sockets on 127.0.0.1: hostile Twilio input in the middle of a call does not hurt it.

Each test drives the media stream by hand (a signed webhook, then a signed websocket that sends raw
Twilio messages) against the real server and the Realtime simulator, and checks that afterwards

- the model still receives the caller's audio, to the byte, as :mod:`service.core.uplink` says it should
  (6 bytes of 24 kHz PCM16 for each mu-law byte, gap fills included);
- the caller's next question is answered (a VAD-triggered response reaches the caller as media);
- ``stop`` still ends the call normally, and both sockets are closed;
- the server goes on serving: ``/healthz`` answers 200 and a normal second call works;
- the warnings about the bad input stay few.

Frames are sent as fast as the sockets take them, except while waiting for an answer: then a silence
frame goes every 20 ms, as Twilio would send them, so that the server never injects silence of its own
(it does after 0.75 s without media while the caller speaks) and the byte counts stay exact.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from test_e2e import CALL_SID, QUESTION, appended_bytes, call, closed
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from service.core.uplink import MAX_GAP_FILL_MS
from service.sim.realtime_server import SimConnection
from service.sim.script import AfterAgentSilent, Say, pcm16_to_ulaw
from service.sim.stack import LocalStack, start_message
from service.wire.twilio import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, MAX_MESSAGE_CHARS

pytestmark = pytest.mark.timeout(60)

SILENCE = b"\xff" * FRAME_BYTES
PCM_PER_MULAW = 6  # 8 kHz mu-law -> 24 kHz PCM16: three samples of two bytes for each byte
FRAME_PCM = FRAME_BYTES * PCM_PER_MULAW
NO_GREETING = "+15551230002"  # fixtures/agents.toml: greeting = "", so the model speaks only when asked

EXACT = {"QUIET_BATCH_MS": "0"}
"""Every frame appended as it comes (these tests count appends against frames sent; quiet batching has
tests of its own)."""


def question_frames() -> list[bytes]:
    """The caller's question (8 kHz clip) as whole 20 ms mu-law frames, the last one padded with silence."""
    assert QUESTION.rate_hz == 8_000
    ulaw = pcm16_to_ulaw(QUESTION.pcm)
    ulaw += SILENCE[: -len(ulaw) % FRAME_BYTES]
    return [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]


class RawStream:
    """A Twilio media stream driven by hand: whatever ``media.timestamp`` the test asks for.

    Frame ``i`` of the stream carries ``timestamp_of(i * 20 + offset_ms)`` (a decimal string by default);
    a test moves ``offset_ms`` to make the clock jump, or replaces ``timestamp_of``. What the server sends
    back is kept; marks are echoed at once (as if played instantly).
    """

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.sid = "MZ" + "9" * 32
        self.index = 0  # the next frame's place in the stream (a lost frame takes one too)
        self.offset_ms = 0
        self.timestamp_of: Callable[[int], object] = str
        self.frames_sent = 0  # well-formed media frames sent
        self.received: list[dict[str, Any]] = []
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None
        return self._ws

    async def open(self) -> None:
        params = await self.stack.voice_webhook(CALL_SID)
        self._ws = await connect(
            self.stack.media_url, additional_headers=self.stack.stream_headers(), proxy=None, open_timeout=5
        )
        self._reader = asyncio.create_task(self._read())
        await self.send_text(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self.send_text(start_message(self.sid, CALL_SID, params))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                message = json.loads(raw)
                self.received.append(message)
                if message.get("event") == "mark":
                    await self.ws.send(json.dumps({"event": "mark", "streamSid": self.sid,
                                                   "mark": message["mark"]}))  # fmt: skip

    @property
    def agent_frames(self) -> int:
        return sum(1 for m in self.received if m.get("event") == "media")

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    def media_message(self, payload: bytes = SILENCE, **extra: Any) -> dict[str, Any]:
        """The next frame's message (not sent)."""
        ts = self.timestamp_of(self.index * FRAME_MS + self.offset_ms)
        media = {"track": "inbound", "chunk": str(self.index + 1), "timestamp": ts,
                 "payload": base64.b64encode(payload).decode("ascii")}  # fmt: skip
        return {"event": "media", "sequenceNumber": str(self.index + 2), "streamSid": self.sid,
                "media": media, **extra}  # fmt: skip

    async def media(self, payload: bytes = SILENCE, count: int = 1) -> None:
        for _ in range(count):
            await self.send_text(json.dumps(self.media_message(payload)))
            self.index += 1
            self.frames_sent += 1

    async def say(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.media(frame)

    async def silence_until(self, done: Callable[[], bool], timeout_s: float = 15.0) -> None:
        """Send a silence frame every 20 ms (Twilio's pace) until ``done()``."""
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, "timed out waiting"
            await self.media()
            await asyncio.sleep(FRAME_MS / 1000)

    async def hang_up(self) -> None:
        stop = {"accountSid": "AC" + "1" * 32, "callSid": CALL_SID}
        await self.send_text(json.dumps({"event": "stop", "sequenceNumber": str(self.index + 2),
                                         "streamSid": self.sid, "stop": stop}))  # fmt: skip
        await asyncio.wait_for(self.ws.wait_closed(), 5)


async def wait_until(done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def session_ready(conn: SimConnection) -> bool:
    return any(e["type"] == "session.updated" for e in conn.server_events)


def answered(conn: SimConnection, raw: RawStream) -> bool:
    """A response the server VAD started (the caller's turn) is done, and its audio reached the caller."""
    return (
        any(r.trigger == "vad" and r.status == "completed" for r in conn.responses) and raw.agent_frames > 0
    )


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        status: int = response.status
        return status


async def ask_and_hang_up(raw: RawStream, conn: SimConnection) -> None:
    """The caller asks a question after the hostile input; it is answered; the caller hangs up."""
    await raw.say(question_frames())
    await raw.silence_until(lambda: answered(conn, raw))
    await raw.hang_up()
    assert raw.ws.close_code == 1000
    await closed(conn)


async def assert_still_serving(stack: LocalStack) -> None:
    """``/healthz`` answers, and a normal second call (the caller simulator) is answered, byte for byte."""
    assert await asyncio.to_thread(http_status, stack.http_base + "/healthz") == 200
    before = len(stack.sim.connections)
    record = await call(stack, to=NO_GREETING, script=[Say(QUESTION, AfterAgentSilent(timeout_ms=300))])
    conn = stack.sim.connections[before]
    await closed(conn)
    assert record.end_reason == "caller_hangup"
    assert record.protocol_errors == []
    assert [r.trigger for r in conn.responses] == ["vad"] and record.agent_audio_ms > 0
    assert appended_bytes(conn) == sum(len(chunk) for _, chunk in record.spoken) * PCM_PER_MULAW


@contextlib.asynccontextmanager
async def hand_driven_call(stack: LocalStack, caplog: pytest.LogCaptureFixture) -> AsyncIterator[RawStream]:
    """A :class:`RawStream` on ``stack``, opened; closed after the block (which ends the call), and then
    the server must go on serving (:func:`assert_still_serving`) with nothing broken."""
    raw = RawStream(stack)
    try:
        await raw.open()
        yield raw
    finally:
        await raw.close()
    await assert_still_serving(stack)
    assert_nothing_broke(caplog, stack)


def summary_of(caplog: pytest.LogCaptureFixture, call_sid: str = CALL_SID) -> dict[str, Any]:
    summaries: list[dict[str, Any] | None] = [getattr(r, "summary", None) for r in caplog.records]
    found = [s for s in summaries if s is not None and s["call_sid"] == call_sid]
    assert len(found) == 1
    return found[0]


def assert_nothing_broke(caplog: pytest.LogCaptureFixture, stack: LocalStack) -> None:
    """No error or traceback was logged by anyone, and no model socket was left open."""
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]
    assert all(c.closed.is_set() for c in stack.sim.connections)
    assert all(c.anomalies == [] for c in stack.sim.connections)


def warnings_about(caplog: pytest.LogCaptureFixture, word: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("service") and word in r.getMessage()
    ]


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# --- 1. deeply nested JSON ---------------------------------------------------------------------------


async def test_deeply_nested_json_mid_call_is_skipped_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    deep_list = "[" * 30_000
    deep_object = nested(9_000)  # 54 kB, under the 64 KiB cap: refused by the decoder, not by size
    deep_closed_list = "[" * 20_000 + "]" * 20_000
    assert all(len(t) <= MAX_MESSAGE_CHARS for t in (deep_list, deep_object, deep_closed_list))
    async with LocalStack(env=EXACT) as stack, hand_driven_call(stack, caplog) as raw:
        await raw.media(count=50)
        conn = await stack.sim.wait_for_connection(0)
        hostile = 0
        for _ in range(5):
            for text in (deep_list, deep_object, deep_closed_list):
                await raw.send_text(text)
                hostile += 1
            await raw.media(count=10)
        # a real media frame with a deep unused field: the frame is lost (the whole message is
        # invalid), and the next frame's timestamp shows a 20 ms gap, filled with silence
        frame = json.dumps(raw.media_message(SILENCE))
        await raw.send_text(frame[:-1] + ', "extra": ' + nested(5_000) + "}")
        hostile += 1
        raw.index += 1
        await raw.media(count=50)
        await wait_until(lambda: appended_bytes(conn) >= raw.index * FRAME_PCM)
        assert raw.ws.state.name == "OPEN"  # the connection stayed open through all of it
        await ask_and_hang_up(raw, conn)
    # every frame sent reached the model, and the lost frame's 20 ms came back as silence
    assert appended_bytes(conn) == (raw.frames_sent + 1) * FRAME_PCM
    summary = summary_of(caplog)
    assert summary["end_reason"] == "caller hung up"
    assert summary["invalid_twilio"] == hostile
    assert (summary["media_gaps"], summary["filled_ms"], summary["clock_resets"]) == (1, FRAME_MS, 0)
    nested_warnings = warnings_about(caplog, "nested too deeply")
    assert 1 <= len(nested_warnings) <= hostile  # no more than one line per bad message


# --- 2. negative timestamps --------------------------------------------------------------------------


def negative_mix(ms: int) -> object:
    """Alternately a negative decimal string and a negative JSON number."""
    return str(ms) if (ms // FRAME_MS) % 2 else ms


@pytest.mark.parametrize("mixed", [False, True], ids=["all_negative", "negative_then_good_again"])
async def test_negative_timestamps_keep_every_frame_and_warn_a_bounded_number_of_times(
    caplog: pytest.LogCaptureFixture, mixed: bool
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    async with LocalStack(env=EXACT) as stack, hand_driven_call(stack, caplog) as raw:
        conn = await stack.sim.wait_for_connection(0)
        if mixed:
            await raw.media(count=100)  # good timestamps 0 .. 1980
            raw.offset_ms, raw.timestamp_of = -100_000, negative_mix
            await raw.media(count=300)  # all negative: taken as contiguous
            raw.offset_ms, raw.timestamp_of = 0, str
            await raw.media(count=100)  # good again, where the count says they should be: no gap
        else:
            raw.offset_ms = -100_000  # every frame of the call, the question included
            await raw.media(count=500)
        await ask_and_hang_up(raw, conn)
    assert appended_bytes(conn) == raw.frames_sent * FRAME_PCM
    summary = summary_of(caplog)
    assert summary["end_reason"] == "caller hung up"
    assert summary["bad_timestamps"] == (300 if mixed else raw.frames_sent)
    assert (summary["media_gaps"], summary["filled_ms"], summary["clock_resets"]) == (0, 0, 0)
    warnings = warnings_about(caplog, "timestamp")
    assert 1 <= len(warnings) <= 3, warnings


# --- 3. timestamps that jump ---------------------------------------------------------------------------


async def test_a_timestamp_far_ahead_costs_one_bounded_fill(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service")
    jump_to = 1_000_000_000  # ms: 11.6 days into the stream
    async with LocalStack(env=EXACT) as stack, hand_driven_call(stack, caplog) as raw:
        conn = await stack.sim.wait_for_connection(0)
        await raw.media(count=2)  # timestamps 0 and 20
        await wait_until(lambda: session_ready(conn))  # nothing held: the fill goes straight out
        raw.offset_ms = jump_to - raw.index * FRAME_MS
        await raw.media(count=750)  # 1e9, 1e9 + 20, ...: 15 s of stream
        raw.offset_ms = 0  # and back to the first clock: a jump backwards, no fill
        await raw.media(count=50)
        await wait_until(lambda: appended_bytes(conn) >= raw.frames_sent * FRAME_PCM)
        await ask_and_hang_up(raw, conn)
    # The first fill of a call has the whole budget (no wall time is counted before it): exactly
    # MAX_GAP_FILL_MS of silence, once; the frames after the jump are contiguous again.
    fill_bytes = MAX_GAP_FILL_MS * BYTES_PER_MS * PCM_PER_MULAW
    assert fill_bytes == 480_000
    assert appended_bytes(conn) == raw.frames_sent * FRAME_PCM + fill_bytes
    summary = summary_of(caplog)
    assert summary["end_reason"] == "caller hung up"
    assert (summary["media_gaps"], summary["filled_ms"], summary["clock_resets"]) == (1, MAX_GAP_FILL_MS, 2)
    gap_lines = [r.getMessage() for r in caplog.records if "media gap" in r.getMessage()]
    assert gap_lines == [
        f"twilio: {jump_to - 2 * FRAME_MS} ms media gap filled with {MAX_GAP_FILL_MS} ms of silence"
    ]
    assert len(warnings_about(caplog, "went back")) == 1


async def test_timestamps_that_go_backwards_keep_the_audio_and_fill_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    async with LocalStack(env=EXACT) as stack, hand_driven_call(stack, caplog) as raw:
        conn = await stack.sim.wait_for_connection(0)
        raw.offset_ms = 100_000
        await raw.media(count=40)
        for _ in range(10):  # every 40 frames (800 ms) the clock goes back 2 s
            raw.offset_ms -= 2_000
            await raw.media(count=40)
        await ask_and_hang_up(raw, conn)
    assert appended_bytes(conn) == raw.frames_sent * FRAME_PCM
    summary = summary_of(caplog)
    assert summary["end_reason"] == "caller hung up"
    assert (summary["media_gaps"], summary["filled_ms"], summary["clock_resets"]) == (0, 0, 10)
    warnings = warnings_about(caplog, "went back")
    assert 1 <= len(warnings) <= 3, warnings
