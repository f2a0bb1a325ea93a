"""The Twilio caller simulator against a tiny fake server written here: a raw asyncio HTTP webhook and a
websockets media endpoint that check Twilio's signatures and play a scripted exchange; and, for
``<Connect action>``, an aiohttp app that answers the voice webhook and the action URLs with TwiML.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from service.core.dtmf import tones as dtmf_tones
from service.sim.caller import CallRecord, Playback, place_call
from service.sim.script import (
    AfterAgentSilent,
    AfterAgentStarted,
    At,
    HangUp,
    Press,
    Say,
    load_clip,
    pcm16_to_ulaw,
)

pytestmark = pytest.mark.timeout(60)

TOKEN = "test-twilio-auth-token-0123456789"
PUBLIC = "https://voice.example.test"
STREAM_URL = "wss://voice.example.test/twilio/media"
CONNECT_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="' + STREAM_URL + '">'
    '<Parameter name="agent" value="default"/><Parameter name="token" value="tok123"/></Stream></Connect>'
    "<Say>Sorry, something went wrong.</Say><Hangup/></Response>"
)
SPEED = 4.0
Behaviour = Callable[["FakeServer"], Awaitable[None]]


class FakeServer:
    """Dialtone's two endpoints, faked: the voice webhook and the media socket."""

    def __init__(self, behaviour: Behaviour, twiml: str = CONNECT_TWIML) -> None:
        self.behaviour = behaviour
        self.twiml = twiml
        self.webhooks: list[tuple[dict[str, str], dict[str, str]]] = []
        self.upgrade_headers: list[dict[str, str]] = []
        self.received: list[dict[str, Any]] = []
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # everything but media
        self.media_frames = 0
        self.speech_frames: list[int] = []  # timestamps of frames that are not silence
        self.ws: ServerConnection | None = None
        self.progress = asyncio.Condition()  # notified on every message from the caller
        self._http: asyncio.Server | None = None
        self._wss: Server | None = None
        self.http_base = self.ws_base = ""

    async def __aenter__(self) -> FakeServer:
        self._http = await asyncio.start_server(self._webhook, "127.0.0.1", 0)
        self.http_base = f"http://127.0.0.1:{self._http.sockets[0].getsockname()[1]}"
        self._wss = await serve(self._media, "127.0.0.1", 0, process_request=self._check_upgrade)
        self.ws_base = f"ws://127.0.0.1:{next(iter(self._wss.sockets)).getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._http is not None and self._wss is not None
        self._http.close()
        self._wss.close()
        await self._wss.wait_closed()

    async def _webhook(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        body = (await reader.readexactly(int(headers["Content-Length"]))).decode()
        params = dict(parse_qsl(body))
        self.webhooks.append((headers, params))
        signature = headers.get("X-Twilio-Signature", "")
        if RequestValidator(TOKEN).validate(PUBLIC + "/twilio/voice", params, signature):
            status, content_type, text = "200 OK", "text/xml", self.twiml
        else:
            status, content_type, text = "403 Forbidden", "text/plain", "forbidden"
        data = text.encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        writer.close()

    def _check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        self.upgrade_headers.append(dict(request.headers.raw_items()))
        signature = request.headers.get("X-Twilio-Signature", "")
        if request.path != "/twilio/media" or not RequestValidator(TOKEN).validate(STREAM_URL, {}, signature):
            return connection.respond(403, "forbidden\n")
        return None

    async def _media(self, ws: ServerConnection) -> None:
        self.ws = ws
        reader = asyncio.create_task(self._read(ws))
        try:
            await self.behaviour(self)
        finally:
            await ws.close()
            await reader

    async def _read(self, ws: ServerConnection) -> None:
        async for raw in ws:
            message = json.loads(raw)
            self.received.append(message)
            if message["event"] == "media":
                self.media_frames += 1
                if base64.b64decode(message["media"]["payload"]) != b"\xff" * 160:
                    self.speech_frames.append(int(message["media"]["timestamp"]))
            else:
                await self.events.put(message)
            async with self.progress:
                self.progress.notify_all()

    async def next_event(self, kind: str, timeout_s: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                event = await self.events.get()
                if event["event"] == kind:
                    return event

    async def send(self, message: dict[str, Any] | str) -> None:
        assert self.ws is not None
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def sid(self) -> str:
        start = next(m for m in self.received if m["event"] == "start")
        return str(start["streamSid"])

    async def play(self, audio: bytes, mark_prefix: str | None = "m") -> None:
        """Send ``audio`` as 20 ms media frames, each followed by a mark ``<prefix><i>``."""
        for i in range(0, len(audio), 160):
            payload = base64.b64encode(audio[i : i + 160]).decode()
            await self.send({"event": "media", "streamSid": self.sid(), "media": {"payload": payload}})
            if mark_prefix is not None:
                await self.send(
                    {"event": "mark", "streamSid": self.sid(), "mark": {"name": f"{mark_prefix}{i // 160}"}}
                )

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s), self.progress:
            await self.progress.wait_for(predicate)

    async def wait_media(self, frames: int, timeout_s: float = 10.0) -> None:
        await self.wait_until(lambda: self.media_frames >= frames, timeout_s)


def tone(ms: int) -> bytes:
    t = np.arange(ms * 8) / 8000
    return pcm16_to_ulaw((8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())


@pytest.fixture
def server_factory() -> Callable[..., FakeServer]:
    return FakeServer


async def call(server: FakeServer, **kwargs: Any) -> CallRecord:
    options: dict[str, Any] = {"auth_token": TOKEN, "public_base_url": PUBLIC, "speed": SPEED,
                               "ws_base": server.ws_base, "max_duration_ms": 20_000} | kwargs  # fmt: skip
    return await place_call(server.http_base, **options)


async def close_after(frames: int) -> Behaviour:
    async def behaviour(server: FakeServer) -> None:
        await server.wait_media(frames)
        assert server.ws is not None
        await server.ws.close(1000, "done")

    return behaviour


async def test_webhook_and_stream_are_what_twilio_sends() -> None:
    async with FakeServer(await close_after(10)) as server:
        record = await call(server, to="+15551230001", from_="+15557654321")
    headers, params = server.webhooks[0]
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert re.fullmatch(r"CA[0-9a-f]{32}", params["CallSid"]) and params["CallSid"] == record.call_sid
    assert re.fullmatch(r"AC[0-9a-f]{32}", params["AccountSid"])
    assert params | {"CallSid": "", "AccountSid": ""} == {
        "CallSid": "", "AccountSid": "", "From": "+15557654321", "To": "+15551230001",
        "Caller": "+15557654321", "Called": "+15551230001", "CallStatus": "ringing", "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }  # fmt: skip
    assert "X-Twilio-Signature" in server.upgrade_headers[0]
    connected, start = server.received[0], server.received[1]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start == {
        "event": "start", "sequenceNumber": "1", "streamSid": record.stream_sid,
        "start": {"accountSid": params["AccountSid"], "streamSid": record.stream_sid,
                  "callSid": record.call_sid, "tracks": ["inbound"],
                  "customParameters": {"agent": "default", "token": "tok123"},
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    }  # fmt: skip
    assert re.fullmatch(r"MZ[0-9a-f]{32}", record.stream_sid)
    media = [m for m in server.received if m["event"] == "media"]
    for i, m in enumerate(media):
        assert m["sequenceNumber"] == str(i + 2) and m["streamSid"] == record.stream_sid
        assert m["media"] == {"track": "inbound", "chunk": str(i + 1), "timestamp": str(i * 20),
                              "payload": base64.b64encode(b"\xff" * 160).decode()}  # fmt: skip
    assert record.end_reason == "server_closed" and record.runs_after_connect
    assert (record.close_code, record.close_reason) == (1000, "done")
    assert [v.name for v in record.after_connect] == ["Say", "Hangup"]
    assert record.after_connect[0].text == "Sorry, something went wrong."
    assert record.protocol_errors == []


async def test_forged_or_missing_signatures_are_rejected_by_a_validating_server() -> None:
    async with FakeServer(await close_after(1)) as server:
        forged = await call(server, webhook_signature="forged")
        missing = await call(server, stream_signature="missing")
        wrong_token = await call(server, stream_signature="forged", parameter_overrides={"token": None})
    assert (forged.webhook_status, forged.end_reason) == (403, "webhook_rejected")
    assert (missing.ws_status, missing.end_reason) == (403, "stream_rejected")
    assert "X-Twilio-Signature" not in server.upgrade_headers[0]
    assert wrong_token.ws_status == 403


async def test_parameter_overrides_change_the_start_message() -> None:
    async with FakeServer(await close_after(1)) as server:
        await call(server, parameter_overrides={"token": None, "agent": "other"})
    assert server.received[1]["start"]["customParameters"] == {"agent": "other"}


async def test_twiml_without_connect_ends_the_call() -> None:
    twiml = "<Response><Say>We are closed.</Say><Hangup/></Response>"
    async with FakeServer(await close_after(1), twiml=twiml) as server:
        record = await call(server)
    assert record.end_reason == "no_stream" and record.stream_url is None
    assert [(v.name, v.text) for v in record.before_connect] == [("Say", "We are closed."), ("Hangup", "")]
    assert server.received == []


async def test_marks_echo_when_their_audio_has_played() -> None:
    audio = tone(500)

    async def behaviour(server: FakeServer) -> None:
        await server.wait_media(2)
        await server.send({"event": "mark", "streamSid": server.sid(), "mark": {"name": "idle"}})
        assert (await server.next_event("mark"))["mark"]["name"] == "idle"  # nothing queued: at once
        await server.play(audio)
        for i in range(25):
            assert (await server.next_event("mark"))["mark"]["name"] == f"m{i}"
        await server.wait_media(server.media_frames + 10)

    async with FakeServer(behaviour) as server:
        record = await call(server)
    (start, end), = record.heard_runs  # fmt: skip
    assert end - start == 500 and bytes(record.heard[0][1]) == audio
    played = [m for m in record.marks if m.name.startswith("m")]
    assert [m.name for m in played] == [f"m{i}" for i in range(25)] and not any(m.flushed for m in played)
    for i, mark in enumerate(played):
        due = start + (i + 1) * 20
        assert due - 1e-6 <= mark.stream_ms <= due + 500  # never early; late only by scheduling jitter
    echoed = [m for m in server.received if m["event"] == "mark"]
    assert all(m["streamSid"] == record.stream_sid and m["sequenceNumber"].isdigit() for m in echoed)
    assert record.protocol_errors == []


async def test_clear_drops_the_queue_and_flushes_every_pending_mark() -> None:
    async def behaviour(server: FakeServer) -> None:
        await server.wait_media(2)
        await server.play(tone(2000))
        while (await server.next_event("mark"))["mark"]["name"] != "m10":
            pass
        await server.send({"event": "clear", "streamSid": server.sid()})
        flushed = [(await server.next_event("mark", timeout_s=1))["mark"]["name"] for _ in range(100 - 12)]
        assert flushed[-1] == "m99"
        await server.wait_media(server.media_frames + 5)

    async with FakeServer(behaviour) as server:
        record = await call(server)
    (clear,) = record.clears
    played_marks = [m for m in record.marks if not m.flushed]
    assert 220 <= clear.played_ms <= 220 + 400  # m10 ends at 220 ms of audio; then the clear travels
    assert clear.played_ms >= len(played_marks) * 20 and clear.last_played_mark == played_marks[-1].name
    assert abs(clear.played_ms + clear.discarded_ms - 2000) < 1e-6
    assert abs(record.agent_audio_ms - clear.played_ms) < 1e-6
    flushed = [m for m in record.marks if m.flushed]
    assert len(flushed) + len(played_marks) == 100 and all(m.stream_ms == clear.stream_ms for m in flushed)


async def test_the_caller_speaks_listens_and_hangs_up() -> None:
    question = load_clip("caller_question")

    async def behaviour(server: FakeServer) -> None:
        # answer 200 ms after the caller stops speaking
        await server.wait_until(lambda: bool(server.speech_frames) and
                                server.media_frames * 20 >= server.speech_frames[-1] + 200)  # fmt: skip
        await server.play(tone(400), mark_prefix=None)
        stop = await server.next_event("stop")
        assert stop["stop"]["callSid"] == server.received[1]["start"]["callSid"]

    script = [Say(question, At(200)), HangUp(AfterAgentSilent(300))]
    async with FakeServer(behaviour) as server:
        record = await call(server, script=script)
    assert record.end_reason == "caller_hangup" and not record.runs_after_connect
    assert record.says == [(200, "caller_question")]
    assert server.speech_frames[0] >= 200
    frames = -(-question.duration_ms // 20)
    sent = b"".join(payload for ts, payload in record.spoken if 200 <= ts < 200 + frames * 20)
    assert sent == pcm16_to_ulaw(question.pcm).ljust(frames * 160, b"\xff")
    (_, end), = record.heard_runs  # fmt: skip
    assert record.duration_ms >= end + 300
    stop = server.received[-1]
    assert stop["event"] == "stop" and stop["stop"] == {
        "accountSid": record.account_sid,
        "callSid": record.call_sid,
    }
    assert int(stop["sequenceNumber"]) == len(server.received) - 1


async def test_interrupting_mid_answer(tmp_path: Path) -> None:
    async def behaviour(server: FakeServer) -> None:
        await server.wait_media(10)
        await server.play(tone(3000))
        await server.next_event("stop", timeout_s=20)

    script = [Say(load_clip("caller_interrupt"), AfterAgentStarted(500)), HangUp(At(4_000))]
    async with FakeServer(behaviour) as server:
        record = await call(server, script=script)
    (start, _), = record.heard_runs  # fmt: skip
    said_at = record.says[0][0]
    assert start + 500 <= said_at <= start + 500 + 300  # checked every 20 ms frame, plus jitter
    path = tmp_path / "call.wav"
    record.write_stereo_wav(path)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert len(stereo) >= 4000 * 8
    left, right = np.abs(stereo[:, 0]), np.abs(stereo[:, 1])
    at = round(said_at * 8)
    assert left[:at].max() == 0 and left[at : at + 8000].max() > 1000  # the caller from said_at on
    assert (
        right[: round(start * 8)].max() == 0 and right[round(start * 8) : round(start * 8) + 800].max() > 1000
    )


async def test_protocol_errors_are_recorded_and_the_call_goes_on() -> None:
    async def behaviour(server: FakeServer) -> None:
        await server.wait_media(2)
        sid = server.sid()
        for bad in ["not json", "[" * 100_000, "[1]", json.dumps({"event": "sendDigits", "streamSid": sid})]:
            await server.send(bad)
        await server.send({"event": "media", "streamSid": "MZ" + "0" * 32, "media": {"payload": "/w=="}})
        await server.send({"event": "media", "streamSid": sid, "media": {"payload": "***"}})
        wav_header = base64.b64encode(b"RIFF" + b"\0" * 40).decode()
        await server.send({"event": "media", "streamSid": sid, "media": {"payload": wav_header}})
        await server.send({"event": "mark", "streamSid": sid, "mark": {}})
        assert server.ws is not None
        await server.ws.send(b"\x00")
        await server.play(tone(100), mark_prefix=None)
        await server.wait_media(server.media_frames + 20)

    async with FakeServer(behaviour) as server:
        record = await call(server)
    assert len(record.protocol_errors) == 9, record.protocol_errors
    assert record.agent_audio_ms == 100 and record.end_reason == "server_closed"


async def test_gaps_skip_frames_and_timestamps_jump() -> None:
    async with FakeServer(await close_after(12)) as server:
        await call(server, gaps=[(100, 200)])
    media = [m["media"] for m in server.received if m["event"] == "media"]
    assert [m["timestamp"] for m in media[:7]] == ["0", "20", "40", "60", "80", "200", "220"]
    assert [m["chunk"] for m in media[:7]] == [str(i) for i in range(1, 8)]


async def test_the_call_stops_by_itself() -> None:
    async def behaviour(server: FakeServer) -> None:
        await server.next_event("stop", timeout_s=20)

    async with FakeServer(behaviour) as server:
        record = await call(server, max_duration_ms=600, end_timeout_ms=100_000)
    assert record.end_reason == "max_duration" and 600 <= record.duration_ms < 600 + 2000
    assert server.received[-1]["event"] == "stop"


def test_playback_is_pure_and_exact() -> None:
    heard: list[tuple[float, bytearray]] = []
    playback = Playback(heard)
    assert playback.push_mark("first") is True
    playback.advance(100.0)
    playback.push_audio(b"\x01" * 80, 100.0)  # 10 ms
    assert playback.push_mark("a") is False
    playback.push_audio(b"\x02" * 160, 100.0)
    assert playback.push_mark("b") is False
    assert playback.next_mark_due_ms() == 110.0
    assert playback.advance(109.9) == [] and playback.advance(110.0) == ["a"]
    assert playback.next_mark_due_ms() == 130.0
    assert playback.advance(125.0) == []
    discarded, flushed = playback.clear()
    assert (discarded, flushed, playback.run_played_ms) == (5.0, ["b"], 25.0)
    assert heard == [(100.0, bytearray(b"\x01" * 80 + b"\x02" * 120))]
    playback.advance(200.0)
    playback.push_audio(b"\x03" * 8, 200.0)
    playback.advance(300.0)
    assert heard[-1] == (200.0, bytearray(b"\x03" * 8)) and playback.last_end_ms == 201.0


# --- the keypad both ways ---------------------------------------------------------------------------


async def test_press_sends_one_dtmf_message_per_key() -> None:
    async def behaviour(server: FakeServer) -> None:
        for _ in range(3):
            await server.next_event("dtmf")
        await server.next_event("stop")

    script = [Press("1#0", At(100)), HangUp(AfterAgentSilent(0, timeout_ms=200))]
    async with FakeServer(behaviour) as server:
        record = await call(server, script=script)
    dtmf = [m for m in server.received if m["event"] == "dtmf"]
    assert [m["dtmf"] for m in dtmf] == [{"track": "inbound_track", "digit": d} for d in "1#0"]
    assert all(set(m) == {"event", "sequenceNumber", "streamSid", "dtmf"} for m in dtmf)
    assert all(m["streamSid"] == record.stream_sid for m in dtmf)
    numbers = [int(m["sequenceNumber"]) for m in server.received[1:]]
    assert numbers == list(range(1, len(numbers) + 1))  # one sequence for every message
    assert [key for _, key in record.pressed] == ["1", "#", "0"]
    times = [ms for ms, _ in record.pressed]
    assert times[0] == 100 and all(140 <= b - a <= 160 for a, b in itertools.pairwise(times))
    # the hang-up waited for the last key (the step ends with it), then the 200 ms timeout
    assert record.end_reason == "caller_hangup" and record.duration_ms >= times[-1] + 200
    assert record.protocol_errors == []


def test_press_refuses_keys_twilio_does_not_report() -> None:
    with pytest.raises(ValueError, match="'A'"):
        Press("12A")
    with pytest.raises(ValueError, match="at least one key"):
        Press("")
    assert Press("*#").interval_ms == 150


async def test_dtmf_tones_in_the_agent_audio_are_heard() -> None:
    keys = dtmf_tones("4711#")

    async def behaviour(server: FakeServer) -> None:
        await server.wait_media(5)
        await server.play(tone(300) + b"\xff" * 800 + keys, mark_prefix=None)
        await server.wait_media(server.media_frames + len(keys) // 160 + 60)

    async with FakeServer(behaviour) as server:
        record = await call(server)
    (start, _), = record.heard_runs  # fmt: skip
    assert record.heard_digits == "4711#"
    first = start + 400  # after the 300 ms tone and 100 ms of silence
    assert [key for _, key in record.dtmf_heard] == list("4711#")
    for i, (at, _) in enumerate(record.dtmf_heard):
        assert abs(at - (first + i * 160)) <= 15


# --- <Connect action> --------------------------------------------------------------------------------

ACTION_CONNECT = (
    '<Response><Connect action="/twilio/after-stream" method="POST"><Stream url="' + STREAM_URL + '">'
    '<Parameter name="agent" value="default"/></Stream></Connect><Say>Not reached.</Say></Response>'
)
TRANSFER = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Say voice="alice">Transferring you now.</Say>'
    '<Dial callerId="+15551230001" timeout="20" action="/twilio/dial-done" method="POST">'
    "<Number>+15551239876</Number><Sip>sip:desk@pbx.example.test</Sip></Dial></Response>"
)
DIAL_DONE = "<Response><Say>Sorry, nobody is free.</Say><Hangup/></Response>"
ACTION_FIELDS = {"CallSid", "AccountSid", "From", "To", "CallStatus", "Direction", "ApiVersion"}


class ActionApp:
    """Dialtone's voice webhook and action URLs, faked with aiohttp: checks Twilio's signature over the
    public URL (with its query string) and answers the TwiML given for each path."""

    def __init__(self, voice: str, answers: dict[str, tuple[int, str]]) -> None:
        self.voice = voice
        self.answers = answers
        self.requests: list[tuple[str, str, dict[str, str], bool]] = []  # method, path?query, fields, ok
        self.base = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ActionApp:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        url = PUBLIC + request.path_qs
        if request.method == "POST":
            fields = {k: str(v) for k, v in (await request.post()).items()}
            ok = RequestValidator(TOKEN).validate(url, fields, request.headers.get("X-Twilio-Signature", ""))
        else:
            fields = dict(request.query)
            ok = RequestValidator(TOKEN).validate(url, {}, request.headers.get("X-Twilio-Signature", ""))
        self.requests.append((request.method, request.path_qs, fields, ok))
        if not ok:
            return web.Response(status=403, text="forbidden")
        if request.path == "/twilio/voice":
            return web.Response(text=self.voice, content_type="text/xml")
        status, twiml = self.answers[request.path]
        return web.Response(status=status, text=twiml, content_type="text/xml")


async def call_with_actions(app: ActionApp, server: FakeServer, **kwargs: Any) -> CallRecord:
    return await place_call(app.base, auth_token=TOKEN, public_base_url=PUBLIC, speed=SPEED,
                            ws_base=server.ws_base, max_duration_ms=20_000, **kwargs)  # fmt: skip


async def test_connect_action_after_the_server_ends_the_stream_and_the_dial_outcome() -> None:
    answers = {"/twilio/after-stream": (200, TRANSFER), "/twilio/dial-done": (200, DIAL_DONE)}
    async with ActionApp(ACTION_CONNECT, answers) as app, FakeServer(await close_after(10)) as server:
        record = await call_with_actions(app, server, dial_outcome="no-answer")
    assert record.connect_action == "/twilio/after-stream" and record.connect_method == "POST"
    assert record.end_reason == "server_closed" and not record.runs_after_connect
    (_, voice_path, _, _), (method, path, fields, ok), (_, dial_path, dial_fields, dial_ok) = app.requests
    assert (voice_path, method, path, ok) == ("/twilio/voice", "POST", "/twilio/after-stream", True)
    assert set(fields) == ACTION_FIELDS and fields == {
        "CallSid": record.call_sid, "AccountSid": record.account_sid, "From": "+15557654321",
        "To": "+15551230001", "CallStatus": "in-progress", "Direction": "inbound", "ApiVersion": "2010-04-01",
    }  # fmt: skip
    assert record.action is not None and record.action.url == PUBLIC + "/twilio/after-stream"
    assert record.action.status == 200 and record.action_twiml == TRANSFER
    say, dial = record.action_verbs
    assert (say.name, say.text, say.attributes) == ("Say", "Transferring you now.", {"voice": "alice"})
    assert dial.name == "Dial" and dial.attributes == {
        "callerId": "+15551230001", "timeout": "20", "action": "/twilio/dial-done", "method": "POST",
    }  # fmt: skip
    assert [(c.name, c.text) for c in dial.children] == [
        ("Number", "+15551239876"), ("Sip", "sip:desk@pbx.example.test"),
    ]  # fmt: skip
    assert dial.find("Number") is not None and record.action.verb("Hangup") is None
    # the dial did not get through: Twilio asks the <Dial action> what to do next
    assert (dial_path, dial_ok) == ("/twilio/dial-done", True)
    assert dial_fields["DialCallStatus"] == "no-answer" and dial_fields["CallStatus"] == "in-progress"
    assert dial_fields["DialCallSid"].startswith("CA") and "DialCallDuration" not in dial_fields
    assert record.dial_action is not None and record.dial_action.url == PUBLIC + "/twilio/dial-done"
    assert [v.name for v in record.dial_action.verbs] == ["Say", "Hangup"]
    assert record.whisper is None and record.protocol_errors == []


async def test_an_answered_dial_with_a_whisper_and_a_caller_who_hangs_up() -> None:
    transfer = TRANSFER.replace("<Number>", '<Number url="/twilio/whisper?t=abc">')
    whisper = "<Response><Say>A caller from the booking line.</Say></Response>"
    answers = {"/twilio/after-stream": (200, transfer), "/twilio/dial-done": (200, "<Response/>"),
               "/twilio/whisper": (200, whisper)}  # fmt: skip
    async with ActionApp(ACTION_CONNECT, answers) as app, FakeServer(await close_after(5)) as server:
        answered = await call_with_actions(app, server, dial_outcome="answered", dial_duration_s=7)
    (_, whisper_path, leg, leg_ok), (_, _, dial_fields, _) = app.requests[-2:]
    assert (whisper_path, leg_ok) == ("/twilio/whisper?t=abc", True)
    assert leg == {
        "CallSid": dial_fields["DialCallSid"], "ParentCallSid": answered.call_sid,
        "AccountSid": answered.account_sid, "From": "+15551230001", "To": "+15551239876",
        "CallStatus": "in-progress", "Direction": "outbound-dial", "ApiVersion": "2010-04-01",
    }  # fmt: skip
    assert answered.whisper is not None and [v.text for v in answered.whisper.verbs] == [
        "A caller from the booking line."
    ]
    assert (dial_fields["DialCallStatus"], dial_fields["DialCallDuration"]) == ("completed", "7")
    assert answered.dial_action is not None and answered.dial_action.verbs == []

    async def wait_for_stop(server: FakeServer) -> None:
        await server.next_event("stop")

    answers = {"/twilio/after-stream": (200, "<Response/>")}
    async with ActionApp(ACTION_CONNECT, answers) as app, FakeServer(wait_for_stop) as server:
        hung_up = await call_with_actions(app, server, script=[HangUp(At(200))], dial_outcome="answered")
    assert hung_up.end_reason == "caller_hangup" and not hung_up.runs_after_connect
    assert app.requests[-1][2]["CallStatus"] == "completed"
    assert hung_up.action is not None and hung_up.action.verbs == [] and hung_up.dial_action is None


async def test_an_absolute_get_action_and_a_transfer_to_another_agent() -> None:
    other_agent = (
        '<Response><Connect><Stream url="wss://voice.example.test/twilio/media">'
        '<Parameter name="agent" value="+15551230002"/><Parameter name="token" value="t2"/>'
        "</Stream></Connect></Response>"
    )
    voice = ACTION_CONNECT.replace(
        'action="/twilio/after-stream" method="POST"',
        f'action="{PUBLIC}/twilio/after-stream?leg=1&amp;why=transfer" method="GET"',
    )
    async with (
        ActionApp(voice, {"/twilio/after-stream": (200, other_agent)}) as app,
        FakeServer(await close_after(5)) as server,
    ):
        record = await call_with_actions(app, server, dial_outcome="answered")
    method, path, fields, ok = app.requests[-1]
    assert (method, ok) == ("GET", True) and path.startswith("/twilio/after-stream?leg=1&why=transfer&")
    assert set(fields) == ACTION_FIELDS | {"leg", "why"} and fields["CallStatus"] == "in-progress"
    assert record.action is not None and record.action.method == "GET"
    (connect,) = record.action_verbs
    stream = connect.find("Stream")
    assert connect.name == "Connect" and stream is not None
    assert stream.attributes["url"] == "wss://voice.example.test/twilio/media"
    assert [(p.attributes["name"], p.attributes["value"]) for p in stream.children] == [
        ("agent", "+15551230002"), ("token", "t2"),
    ]  # fmt: skip
    assert record.dial_action is None and record.protocol_errors == []


async def test_action_answers_twilio_would_not_accept_are_protocol_errors() -> None:
    cases = [
        (500, "<Response/>", "<Connect action> answered HTTP 500"),
        (200, "oops", "<Connect action> response is not XML"),
        (200, "<Twiml/>", "<Connect action>: TwiML root is <Twiml>, not <Response>"),
    ]
    for status, twiml, error in cases:
        async with (
            ActionApp(ACTION_CONNECT, {"/twilio/after-stream": (status, twiml)}) as app,
            FakeServer(await close_after(3)) as server,
        ):
            record = await call_with_actions(app, server)
        assert record.protocol_errors == [error]
    async with FakeServer(await close_after(3)) as server:  # no action: the verbs after </Connect> run
        plain = await call(server)
    assert plain.runs_after_connect and plain.action is None and plain.connect_action is None
