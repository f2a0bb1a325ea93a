"""A lean load generator for ``bench.compare``: Twilio callers and a fake OpenAI Realtime GA server.

Both sides run on one asyncio event loop in the benchmark process, so they share one clock
(``time.monotonic``, which is also ``loop.time()``) and one table of calls:

- :class:`Call` is one call: its script (when the caller speaks), the send time of each of its 20 ms
  frames, the time the fake model received each frame's audio, and the send / receive times of the
  model's audio deltas.
- :class:`Ticker` sends the media frames of all calls from one task, on each call's own 20 ms
  schedule (calls are spread over five 4 ms phases so that their frames do not all leave in one burst),
  and echoes the marks whose audio would have finished playing.
- :func:`place_call` does what Twilio does to start a stream: the voice webhook (signed when the
  server checks signatures), the websocket (signed upgrade), ``connected`` and ``start``.
- :class:`FakeRealtime` is the model: it accepts any key and model, answers ``session.update`` with
  the effective session, counts appended audio, and drives the turns from the call's script (no VAD):
  ``speech_started`` once the caller's utterance has been appended for 100 ms, ``speech_stopped`` /
  ``committed`` 500 ms (the default ``silence_duration_ms``) after it ended, then a response of
  ``REPLY_S`` of audio in ``DELTA_MS`` deltas streamed ``speed`` times faster than real time.

Nothing here decodes audio or validates frames: the payloads are pre-encoded once, a media frame is a
format string, an append is counted from the length of its base64 text.

Correlation (nothing is embedded in the audio):

- up: the k-th 20 ms frame the caller sent is the audio that takes the call's appended total past
  ``(k + 1) * frame_bytes`` (960 bytes of 24 kHz PCM16 for Dialtone, 160 of mu-law for a pcmu session);
- down: delta j of a response covers mu-law bytes ``[800 j, 800 (j + 1))`` of that response at the
  caller; the media frame that starts at byte ``800 j`` is the delta's first frame. The response a media
  frame belongs to is the latest one the model has started on that call (responses are ~10 s apart).
- which call a model socket belongs to: calls are set up one at a time (a lock around webhook, upgrade,
  ``start`` and the model socket's arrival), so the next model socket is the one the call being set
  up caused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import random
import time
import xml.etree.ElementTree as ET
from array import array
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from service.sim.realtime_session import default_session, encode_output, merge_session
from service.sim.script import Clip, load_clip, pcm16_to_ulaw

FRAME_S = 0.020
FRAME_MS = 20
MULAW_FRAME_BYTES = 160
DELTA_MS = 100
DELTA_MULAW_BYTES = DELTA_MS * 8  # what one delta becomes at the caller
REPLY_S = 2.3
SPEECH_STARTED_AFTER_FRAMES = 5  # the fake VAD announces speech 100 ms into it
SILENCE_FRAMES = 25  # ... and ends the turn 500 ms after it (server_vad's silence_duration_ms)
PHASES = 5  # calls are spread over 5 phases of 4 ms within the 20 ms frame period
TICK_S = FRAME_S / PHASES
SILENCE_B64 = base64.b64encode(b"\xff" * MULAW_FRAME_BYTES).decode("ascii")
NAN = float("nan")
ACCOUNT_SID = "AC" + "1" * 32
CALLER_NUMBER = "+15557654321"
monotonic = time.monotonic

MEDIA = (
    '{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{chunk}",'
    '"timestamp":"{ts}","payload":"{payload}"}},"streamSid":"{sid}"}}'
)
MARK = '{{"event":"mark","sequenceNumber":"{seq}","streamSid":"{sid}","mark":{{"name":{name}}}}}'
DELTA = (
    '{{"type":"response.output_audio.delta","event_id":"{eid}","response_id":"{rid}","item_id":"{iid}",'
    '"output_index":0,"content_index":0,"delta":"{delta}"}}'
)


def b64_len(text: str) -> int:
    """Bytes encoded by a base64 string (without decoding it)."""
    n = len(text)
    if n == 0:
        return 0
    return n // 4 * 3 - (text[-1] == "=") - (text[-2] == "=")


def _frames_b64(mulaw: bytes) -> list[str]:
    mulaw += b"\xff" * (-len(mulaw) % MULAW_FRAME_BYTES)
    return [
        base64.b64encode(mulaw[i : i + MULAW_FRAME_BYTES]).decode("ascii")
        for i in range(0, len(mulaw), MULAW_FRAME_BYTES)
    ]


class Assets:
    """Audio encoded once: the caller's utterances (mu-law frames) and the model's reply in both formats."""

    def __init__(self, reply_s: float = REPLY_S) -> None:
        question = load_clip("caller_question")  # 1.89 s
        followup = load_clip("caller_followup")  # 2.19 s: cut to 1.6 s
        followup_pcm = followup.pcm[: int(1.6 * followup.rate_hz) * 2]
        self.utterances: list[list[str]] = [
            _frames_b64(pcm16_to_ulaw(question.pcm)),
            _frames_b64(pcm16_to_ulaw(followup_pcm)),
        ]
        reply = load_clip("reply_followup")  # 2.64 s at 24 kHz, cut to reply_s in whole deltas
        deltas = max(1, round(reply_s * 1000 / DELTA_MS))
        pcm = reply.pcm[: deltas * DELTA_MS * 48]
        pcm += b"\x00" * (deltas * DELTA_MS * 48 - len(pcm))
        mulaw = encode_output(Clip("reply", reply.text, reply.rate_hz, pcm), {"type": "audio/pcmu"})
        mulaw = (mulaw + b"\xff" * deltas * DELTA_MULAW_BYTES)[: deltas * DELTA_MULAW_BYTES]
        pcm_step, mu_step = DELTA_MS * 48, DELTA_MULAW_BYTES
        self.reply_pcm = [
            base64.b64encode(pcm[i : i + pcm_step]).decode() for i in range(0, len(pcm), pcm_step)
        ]
        self.reply_mulaw = [
            base64.b64encode(mulaw[i : i + mu_step]).decode() for i in range(0, len(mulaw), mu_step)
        ]
        self.reply_words = reply.text.split() or ["ok"]

    @property
    def reply_ms(self) -> int:
        return len(self.reply_pcm) * DELTA_MS


class Utterance:
    __slots__ = ("clip", "end", "start")

    def __init__(self, start: int, clip: int, frames: int) -> None:
        self.start = start  # frame index
        self.end = start + frames
        self.clip = clip


def make_script(seed: int, index: int, seconds: float, assets: Assets) -> list[Utterance]:
    """Utterances every ~10 s (9-11 s apart), the first 1.5-4 s in, none whose answer would not fit."""
    rng = random.Random(f"{seed}:{index}")
    out: list[Utterance] = []
    t = rng.uniform(1.5, 4.0)
    reply_s = assets.reply_ms / 1000
    while True:
        clip = len(out) % len(assets.utterances)
        frames = len(assets.utterances[clip])
        if t + frames * FRAME_S + SILENCE_FRAMES * FRAME_S + reply_s + 0.5 > seconds:
            return out
        out.append(Utterance(round(t / FRAME_S), clip, frames))
        t += rng.uniform(9.0, 11.0)


class Call:
    """One call, seen from both sides. Filled by the ticker, the caller's receive loop and the fake model."""

    def __init__(self, index: int, seconds: float, script: list[Utterance], assets: Assets) -> None:
        self.index = index
        self.call_sid = "CA" + random.Random(f"call:{index}:{id(self)}").randbytes(16).hex()
        self.stream_sid = "MZ" + self.call_sid[2:]
        self.total = round(seconds / FRAME_S)
        self.script = script
        self.speech: dict[int, str] = {}
        for u in script:
            for j, payload in enumerate(assets.utterances[u.clip]):
                self.speech[u.start + j] = payload
        # model-side triggers, in order of the appended frame count that fires them
        self.triggers: deque[tuple[int, str, Utterance]] = deque()
        for u in script:
            self.triggers.append((u.start + SPEECH_STARTED_AFTER_FRAMES, "started", u))
            self.triggers.append((u.end + SILENCE_FRAMES, "stopped", u))
        self.ws: ClientConnection | None = None
        self.t0 = NAN  # loop time frame 0 is due
        self.k = 0  # next frame to send
        self.seq = 2  # connected (no number), start = 1
        self.send_t = array("d")
        self.lag = array("d")  # how late each frame left, s
        self.recv_t = array("d", [NAN]) * self.total  # when the model had the frame's audio
        self.ended_at = NAN
        self.done_sending = asyncio.Event()
        self.matched = asyncio.Event()
        self.model: ModelConn | None = None
        self.frame_bytes = 0  # per 20 ms in the model session's input format
        self.in_bytes = 0
        self.in_frames = 0
        self.resp_sent: list[array[float]] = []  # per response, the send time of each delta
        self.rx_resp = -1
        self.rx_bytes = 0
        self.down_sent = array("d")  # per delta: sent by the model ...
        self.down_recv = array("d")  # ... and its first media frame received by the caller
        self.down_first = array("b")  # 1 when it was the first delta of its response
        self.media_rx = 0
        self.extra_media = 0  # media past the deltas of its response (Dialtone's end-of-item frame)
        self.misaligned = 0
        self.play_end = 0.0
        self.marks: deque[tuple[float, str]] = deque()
        self.marks_echoed = 0
        self.clears = 0
        self.backpressure = 0
        self.problems: list[str] = []

    def mark_echo(self, name: str) -> str:
        self.seq += 1
        self.marks_echoed += 1
        return MARK.format(seq=self.seq, sid=self.stream_sid, name=json.dumps(name))


# -- the Twilio side -----------------------------------------------------------------------------------


class Ticker:
    """Sends every active call's due frames each 4 ms tick; echoes marks whose audio has played."""

    def __init__(self) -> None:
        self.active: list[Call] = []
        self.base = monotonic()  # tick n is due at base + n * TICK_S
        self.task: asyncio.Task[None] | None = None
        self.late_ticks = 0

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def add(self, call: Call, phase: int) -> None:
        """Frame 0 of ``call`` is due at the next tick of its phase (its frames then fall on ticks)."""
        n = math.ceil((monotonic() - self.base) / TICK_S)
        n += (phase - n) % PHASES
        call.t0 = self.base + n * TICK_S
        self.active.append(call)

    async def _run(self) -> None:
        self.base = next_t = monotonic()
        while True:
            next_t += TICK_S
            delay = next_t - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:  # far behind: skip ticks, stay on the grid (due frames still go out)
                self.late_ticks += 1
                next_t = self.base + math.floor((monotonic() - self.base) / TICK_S) * TICK_S
            now = monotonic()
            finished = False
            horizon = now + 0.001
            for call in self.active:
                marks = call.marks
                if call.t0 + call.k * FRAME_S <= horizon or (marks and marks[0][0] <= now):
                    await self._tick(call, now)
                if call.k >= call.total:
                    finished = True
            if finished:
                for call in [c for c in self.active if c.k >= c.total]:
                    self.active.remove(call)
                    call.done_sending.set()

    async def _tick(self, call: Call, now: float) -> None:
        ws = call.ws
        if ws is None:
            return
        horizon = now + 0.001
        while call.k < call.total and call.t0 + call.k * FRAME_S <= horizon:
            k = call.k
            call.seq += 1
            msg = MEDIA.format(
                seq=call.seq,
                chunk=k + 1,
                ts=k * FRAME_MS,
                payload=call.speech.get(k, SILENCE_B64),
                sid=call.stream_sid,
            )
            t = monotonic()
            call.send_t.append(t)
            call.lag.append(t - (call.t0 + k * FRAME_S))
            call.k = k + 1
            await _send(call, ws, msg)
        marks = call.marks
        while marks and marks[0][0] <= now:
            await _send(call, ws, call.mark_echo(marks.popleft()[1]))


async def _send(call: Call, ws: ClientConnection, msg: str) -> None:
    """Send without letting one slow server socket hold up the other calls."""
    if getattr(ws, "paused", False):
        call.backpressure += 1
        task = asyncio.create_task(ws.send(msg))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return
    with contextlib.suppress(ConnectionClosed):
        await ws.send(msg)


async def receive(call: Call) -> None:
    """The caller's receive loop: media (latency, simulated playback), marks (echoed when played), clear."""
    ws = call.ws
    assert ws is not None
    loads = json.loads
    try:
        async for message in ws:
            now = monotonic()
            try:
                event = loads(message)
                kind = event["event"]
            except (ValueError, KeyError, TypeError):
                call.problems.append(f"caller: bad message {str(message)[:80]!r}")
                continue
            if kind == "media":
                _media(call, event["media"]["payload"], now)
            elif kind == "mark":
                name = event["mark"]["name"]
                if call.play_end <= now and not call.marks:
                    await _send(call, ws, call.mark_echo(name))
                else:
                    call.marks.append((call.play_end, name))
            elif kind == "clear":
                call.clears += 1
                call.play_end = now
                while call.marks:
                    await _send(call, ws, call.mark_echo(call.marks.popleft()[1]))
            else:
                call.problems.append(f"caller: unexpected event {kind!r}")
    except ConnectionClosed:
        pass


def _media(call: Call, payload: str, now: float) -> None:
    n = b64_len(payload)
    call.media_rx += 1
    call.play_end = max(now, call.play_end) + n / 8000
    r = len(call.resp_sent) - 1
    if r < 0:
        call.extra_media += 1
        return
    if r != call.rx_resp:
        call.rx_resp, call.rx_bytes = r, 0
    offset = call.rx_bytes
    call.rx_bytes = offset + n
    j, within = divmod(offset, DELTA_MULAW_BYTES)
    if within == 0:
        sent = call.resp_sent[r]
        if j < len(sent):
            call.down_sent.append(sent[j])
            call.down_recv.append(now)
            call.down_first.append(j == 0)
        else:
            call.extra_media += 1
    elif within + n > DELTA_MULAW_BYTES:
        call.misaligned += 1


async def http_request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 request to 127.0.0.1 (Connection: close), chunked responses decoded."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method == "POST":
            head.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    header, _, content = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        out, rest = b"", content
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        content = out
    return status, content


class Target:
    """How to start a stream on one server: webhook path, signatures, the number called."""

    def __init__(
        self,
        name: str,
        port: int,
        webhook_path: str,
        *,
        auth_token: str | None,
        public_base_url: str | None,
        to: str,
    ) -> None:
        self.name = name
        self.port = port
        self.webhook_path = webhook_path
        self.auth_token = auth_token
        self.public_base_url = public_base_url
        self.to = to

    @property
    def signed(self) -> bool:
        return self.auth_token is not None


async def place_call(call: Call, target: Target, model: FakeRealtime, phase: int, timeout_s: float) -> None:
    """Webhook, upgrade, ``connected`` + ``start``; returns once the model socket of the call arrived."""
    form = {
        "CallSid": call.call_sid,
        "AccountSid": ACCOUNT_SID,
        "From": CALLER_NUMBER,
        "To": target.to,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if target.signed:
        assert target.auth_token is not None and target.public_base_url is not None
        url = target.public_base_url + target.webhook_path
        headers["X-Twilio-Signature"] = RequestValidator(target.auth_token).compute_signature(url, form)
    async with asyncio.timeout(timeout_s):
        status, body = await http_request(
            target.port, "POST", target.webhook_path, urlencode(form).encode(), headers
        )
        if status != 200:
            raise RuntimeError(f"webhook answered {status}: {body[:200]!r}")
        root = ET.fromstring(body.decode())
        stream = next(root.iter("Stream"), None)
        if stream is None:
            raise RuntimeError(f"no <Stream> in the TwiML: {body[:300]!r}")
        stream_url = stream.get("url", "")
        params = {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}
        parts = urlsplit(stream_url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        ws_headers = {}
        if target.signed:
            ws_headers["X-Twilio-Signature"] = RequestValidator(target.auth_token).compute_signature(
                stream_url, {}
            )
        model.expect(call)
        call.ws = await connect(
            f"ws://127.0.0.1:{target.port}{path}",
            additional_headers=ws_headers,
            compression=None,
            ping_interval=None,
            max_size=2**22,
            open_timeout=timeout_s,
            close_timeout=5,
        )
        await call.ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {
            "streamSid": call.stream_sid,
            "accountSid": ACCOUNT_SID,
            "callSid": call.call_sid,
            "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        await call.ws.send(
            json.dumps(
                {"event": "start", "sequenceNumber": "1", "streamSid": call.stream_sid, "start": start}
            )
        )
        await call.matched.wait()


async def hang_up(call: Call, timeout_s: float = 5.0) -> None:
    """Twilio's ``stop``, then close the socket."""
    ws = call.ws
    call.ended_at = monotonic()
    if ws is None:
        return
    with contextlib.suppress(ConnectionClosed, TimeoutError, OSError):
        async with asyncio.timeout(timeout_s):
            call.seq += 1
            stop = {"accountSid": ACCOUNT_SID, "callSid": call.call_sid}
            await ws.send(
                json.dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": str(call.seq),
                        "streamSid": call.stream_sid,
                        "stop": stop,
                    }
                )
            )
            await ws.close()


# -- the model side -------------------------------------------------------------------------------------


def _usage(input_audio: int, output_audio: int, output_text: int) -> dict[str, Any]:
    return {
        "total_tokens": input_audio + 120 + output_audio + output_text,
        "input_tokens": input_audio + 120,
        "output_tokens": output_audio + output_text,
        "input_token_details": {
            "text_tokens": 120,
            "audio_tokens": input_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


class ModelConn:
    """One model socket: session, appended audio, the turns of its call, one response at a time."""

    def __init__(self, fake: FakeRealtime, ws: ServerConnection, call: Call | None, model: str) -> None:
        self.fake = fake
        self.ws = ws
        self.call = call
        self.ids = itertools.count(1)
        self.session = default_session("sess_" + _hex(ws), model, time.time())
        self.reply: list[str] = fake.assets.reply_pcm
        self.response: asyncio.Task[None] | None = None
        self.response_id: str | None = None
        self.cancel_reason: str | None = None
        self.last_item: str | None = None
        self.speech_item: str | None = None
        self.closed = asyncio.Event()
        self.left_open = False  # still open 5 s after its call ended (set by the benchmark)
        self.responses = 0
        self.client_events: Counter[str] = Counter()
        self.errors_sent: Counter[str] = Counter()
        self.anomalies: list[str] = []

    def eid(self) -> str:
        return f"event_{next(self.ids):x}"

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids):06x}{id(self) & 0xFFFFFF:06x}"

    async def send(self, payload: dict[str, Any]) -> None:
        payload = {"type": payload.pop("type"), "event_id": self.eid(), **payload}
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(payload, separators=(",", ":")))

    async def error(self, code: str, message: str, event_id: str | None) -> None:
        self.errors_sent[code] += 1
        await self.send(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": code,
                    "message": message,
                    "param": None,
                    "event_id": event_id,
                },
            }
        )

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.session})
        call = self.call
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.anomalies.append("binary frame")
                    continue
                head = message[:80]
                if "input_audio_buffer.append" in head and call is not None:
                    start = message.find('"', message.find('"audio"') + 7) + 1
                    end = message.find('"', start)
                    if start <= 0 or end < 0:
                        self.anomalies.append("append without audio")
                        continue
                    self.client_events["input_audio_buffer.append"] += 1
                    await self.appended(call, b64_len(message[start:end]), monotonic())
                else:
                    await self.event(message)
        except ConnectionClosed:
            pass
        finally:
            if self.response is not None:
                self.response.cancel()
            self.closed.set()

    async def appended(self, call: Call, n: int, now: float) -> None:
        if call.frame_bytes == 0:
            self.anomalies.append("audio appended before session.update")
            call.frame_bytes = 960
        call.in_bytes += n
        frames = call.in_bytes // call.frame_bytes
        recv_t = call.recv_t
        for k in range(call.in_frames, min(frames, len(recv_t))):
            recv_t[k] = now
        call.in_frames = frames
        triggers = call.triggers
        while triggers and triggers[0][0] <= frames:
            _, kind, utterance = triggers.popleft()
            if kind == "started":
                await self.speech_started(utterance)
            else:
                await self.speech_stopped(utterance)

    async def speech_started(self, u: Utterance) -> None:
        if self.response is not None and not self.response.done():
            self.cancel_reason = "turn_detected"  # server_vad's interrupt_response
        self.speech_item = self.new_id("item")
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": u.start * FRAME_MS,
                "item_id": self.speech_item,
            }
        )

    async def speech_stopped(self, u: Utterance) -> None:
        item_id = self.speech_item or self.new_id("item")
        self.speech_item = None
        await self.send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": u.end * FRAME_MS,
                "item_id": item_id,
            }
        )
        previous, self.last_item = self.last_item, item_id
        await self.send(
            {"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id}
        )
        item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})
        await self.start_response(input_ms=(u.end - u.start) * FRAME_MS)

    async def start_response(self, input_ms: int = 0) -> None:
        if self.response is not None and not self.response.done():
            await self.error(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress.",
                None,
            )
            return
        self.cancel_reason = None
        self.response_id = self.new_id("resp")
        self.responses += 1
        self.response = asyncio.create_task(self.stream(self.response_id, input_ms))

    def response_object(self, rid: str, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        out_fmt = self.session["audio"]["output"]
        details = (
            None if status in ("in_progress", "completed") else {"type": status, "reason": self.cancel_reason}
        )
        return {
            "object": "realtime.response",
            "id": rid,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": "conv_" + _hex(self.ws),
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": {"format": out_fmt["format"], "voice": out_fmt["voice"]}},
            "usage": usage,
            "metadata": None,
        }

    async def stream(self, rid: str, input_ms: int) -> None:
        """One response: the GA event sequence, deltas paced at ``speed`` x real time."""
        fake, call = self.fake, self.call
        item_id = self.new_id("item")
        ids = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self.send(
            {"type": "response.created", "response": self.response_object(rid, "in_progress", [], None)}
        )
        item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        previous, self.last_item = self.last_item, item_id
        await self.send(
            {"type": "response.output_item.added", "response_id": rid, "output_index": 0, "item": item}
        )
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.send(
            {"type": "response.content_part.added", **ids, "part": {"type": "audio", "transcript": ""}}
        )
        times = array("d")
        if call is not None:
            call.resp_sent.append(times)
        words = fake.assets.reply_words
        interval = DELTA_MS / 1000 / fake.speed
        first = monotonic() + fake.first_delta_s
        sent = 0
        ws = self.ws
        for j, chunk in enumerate(self.reply):
            if self.cancel_reason is not None:
                break
            delay = first + j * interval - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.cancel_reason is not None:
                break
            times.append(monotonic())
            try:
                await ws.send(DELTA.format(eid=self.eid(), rid=rid, iid=item_id, delta=chunk))
            except ConnectionClosed:
                return
            sent += 1
            word = words[j % len(words)] + " "
            await self.send({"type": "response.output_audio_transcript.delta", **ids, "delta": word})
        status = "completed" if self.cancel_reason is None else "cancelled"
        transcript = " ".join(words[j % len(words)] for j in range(sent))
        done_item = {
            **item,
            "status": "completed" if status == "completed" else "incomplete",
            "content": [{"type": "output_audio", "transcript": transcript}],
        }
        await self.send({"type": "response.output_audio.done", **ids})
        await self.send({"type": "response.output_audio_transcript.done", **ids, "transcript": transcript})
        await self.send(
            {"type": "response.content_part.done", **ids, "part": {"type": "audio", "transcript": transcript}}
        )
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": done_item})
        await self.send(
            {"type": "response.output_item.done", "response_id": rid, "output_index": 0, "item": done_item}
        )
        usage = _usage(input_ms // 100, sent * DELTA_MS // 50, sent)
        await self.send(
            {"type": "response.done", "response": self.response_object(rid, status, [done_item], usage)}
        )
        await self.send(
            {
                "type": "rate_limits.updated",
                "rate_limits": [
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": 800000, "remaining": 790000, "reset_seconds": 0.75},
                ],
            }
        )

    async def event(self, message: str) -> None:
        try:
            event = json.loads(message)
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            self.anomalies.append(f"not a client event: {message[:80]!r}")
            return
        self.client_events[kind] += 1
        event_id = event.get("event_id")
        if kind == "input_audio_buffer.append":  # no call: counted only
            return
        if kind == "session.update":
            update = event.get("session")
            if not isinstance(update, dict) or update.get("type") != "realtime":
                await self.error(
                    "missing_required_parameter", "Missing required parameter: 'session.type'.", event_id
                )
                return
            self.session = merge_session(self.session, update)
            audio = self.session["audio"]
            in_kind = audio["input"]["format"].get("type")
            out_kind = audio["output"]["format"].get("type")
            if self.call is not None:
                self.call.frame_bytes = 960 if in_kind == "audio/pcm" else MULAW_FRAME_BYTES
            self.reply = (
                self.fake.assets.reply_pcm if out_kind == "audio/pcm" else self.fake.assets.reply_mulaw
            )
            if out_kind not in ("audio/pcm", "audio/pcmu") or in_kind not in ("audio/pcm", "audio/pcmu"):
                self.anomalies.append(f"formats {in_kind} / {out_kind}: not simulated")
            await self.send({"type": "session.updated", "session": self.session})
        elif kind == "response.create":
            await self.start_response()
        elif kind == "response.cancel":
            if self.response is None or self.response.done():
                await self.error(
                    "response_cancel_not_active", "Cancellation failed: no active response found", event_id
                )
            else:
                self.cancel_reason = "client_cancelled"
        elif kind == "conversation.item.truncate":
            await self.send(
                {
                    "type": "conversation.item.truncated",
                    "item_id": event.get("item_id"),
                    "content_index": event.get("content_index", 0),
                    "audio_end_ms": event.get("audio_end_ms", 0),
                }
            )
        elif kind in ("conversation.item.create", "input_audio_buffer.clear", "input_audio_buffer.commit"):
            self.anomalies.append(f"client event {kind} (not simulated; acknowledged only)")
        else:
            self.anomalies.append(f"unknown client event {kind!r}")


def _hex(obj: object) -> str:
    return f"{id(obj) & 0xFFFFFFFFFFFF:012x}"


class FakeRealtime:
    """The fake Realtime GA server on 127.0.0.1: one :class:`ModelConn` per socket."""

    def __init__(
        self, assets: Assets, *, speed: float = 5.0, first_delta_s: float = 0.0, deflate: bool = False
    ) -> None:
        self.assets = assets
        self.speed = speed
        self.first_delta_s = first_delta_s
        self.deflate = deflate
        self.conns: list[ModelConn] = []
        self.unmatched = 0
        self._waiting: deque[Call] = deque()
        self._server: Server | None = None
        self.port = 0
        self.on_connect: Callable[[ModelConn], None] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    async def start(self) -> None:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            compression="deflate" if self.deflate else None,
            ping_interval=None,
            max_size=2**24,
            close_timeout=2,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    def expect(self, call: Call) -> None:
        self._waiting.append(call)

    def forget(self, call: Call) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(call)

    async def _handler(self, ws: ServerConnection) -> None:
        call = self._waiting.popleft() if self._waiting else None
        request = ws.request
        query = urlsplit(request.path).query if request is not None else ""
        model = dict(part.partition("=")[::2] for part in query.split("&") if part).get(
            "model", "gpt-realtime"
        )
        conn = ModelConn(self, ws, call, model)
        self.conns.append(conn)
        if call is None:
            self.unmatched += 1
        else:
            call.model = conn
            call.matched.set()
        await conn.run()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an unsorted list; NaN when empty."""
    if not values:
        return NAN
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
