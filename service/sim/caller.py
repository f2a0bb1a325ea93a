"""A local stand-in for Twilio and a human caller, against a running Dialtone server.

:func:`place_call` does what Twilio does for an inbound call (``shared/reference/twilio.md``):

1. POSTs the signed voice webhook (form fields of an inbound call, ``X-Twilio-Signature`` computed
   by twilio's ``RequestValidator`` over the *public* URL) and parses the TwiML. Without
   ``<Connect><Stream>`` the call ends there (e.g. ``<Say>`` + ``<Hangup/>``).
2. Opens the media WebSocket on the local server at the path of the ``<Stream url>``, signing the
   exact ``wss://`` URL with empty params, and sends ``connected``, ``start`` (the ``<Parameter>``s
   as ``customParameters``) and then one 20 ms ``media`` frame (160 bytes of mu-law) every 20 ms of
   stream time, silence (0xFF) when the caller is not speaking. Stream time runs ``speed`` times
   faster than the wall clock.
3. Plays what the server sends like Twilio: ``media`` payloads queue up and play at 8 bytes per ms
   of stream time; a ``mark`` is echoed when the audio queued before it has played (at once if
   nothing is queued); ``clear`` empties the queue and echoes every pending mark at once.
4. Follows the caller's script (:mod:`service.sim.script`: ``Say`` / ``Press`` / ``HangUp`` with
   triggers), then hangs up (``stop``, then close) once the agent has been quiet, or at
   ``max_duration_ms``. ``Press`` sends one ``dtmf`` message per key (``track`` ``inbound_track``),
   ``interval_ms`` apart. If the server closes the socket first, Twilio would run the verbs after
   ``</Connect>``: the record says so.
5. With ``<Connect action="…" method="POST">``, once the stream is over (the server closed it:
   ``CallStatus=in-progress``; the caller hung up: ``CallStatus=completed``) requests the action URL
   instead, signed like the webhook (the URL resolved against the webhook's public URL), on the
   local server at the same path, and parses the TwiML it returns (:class:`ActionRecord`: verbs with
   their children, e.g. ``<Dial>``'s ``<Number>`` / ``<Sip>``, or ``<Connect><Stream>`` for another
   agent). If that TwiML has a ``<Dial action>`` and ``dial_outcome`` is given, the dial's outcome is
   simulated: its action is requested too, with ``DialCallStatus`` (and ``DialCallSid``,
   ``DialCallDuration`` when answered), and its TwiML recorded. An answered dial whose ``<Number>``
   (or ``<Sip>``, ``<Client>``) has a ``url`` first gets that URL requested on the child leg
   (``Direction=outbound-dial``, ``ParentCallSid``): the whisper played to whoever answered.

The agent's audio as played is searched for DTMF tones (:func:`service.core.dtmf.scan`): the keys
heard, with when they started, are in ``CallRecord.dtmf_heard``.

Everything is recorded in a :class:`CallRecord` (stream ms everywhere), including protocol errors
by the server that real Twilio would not accept (non-JSON, unknown event, wrong ``streamSid``,
payload that is not base64 mu-law): tests assert there are none.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import secrets
import urllib.error
import urllib.request
import wave
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urljoin, urlsplit

import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.core.dtmf import scan
from service.sim.script import (
    AfterAgentSilent,
    AfterAgentStarted,
    At,
    Clip,
    HangUp,
    Press,
    Step,
    Trigger,
    pcm16_to_ulaw,
    ulaw_decode,
)

logger = logging.getLogger(__name__)

Json = dict[str, Any]
FRAME_MS = 20
BYTES_PER_MS = 8
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
SILENCE = b"\xff" * FRAME_BYTES
Signature = Literal["valid", "forged", "missing"]
DialOutcome = Literal["answered", "no-answer", "busy", "failed", "canceled"]
#: ``DialCallStatus`` for each simulated outcome (an answered dial that has ended is ``completed``).
DIAL_CALL_STATUS: dict[str, str] = {
    "answered": "completed", "no-answer": "no-answer", "busy": "busy", "failed": "failed",
    "canceled": "canceled",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verb:
    """A TwiML element: its tag, text, attributes and child elements (``<Dial>``'s ``<Number>``,
    ``<Sip>``, ``<Conference>``; ``<Connect>``'s ``<Stream>`` and its ``<Parameter>`` s)."""

    name: str
    text: str
    attributes: dict[str, str]
    children: tuple[Verb, ...] = ()

    def find(self, name: str) -> Verb | None:
        """The first child named ``name``."""
        return next((child for child in self.children if child.name == name), None)


def _verb(element: ET.Element) -> Verb:
    return Verb(
        element.tag, (element.text or "").strip(), dict(element.attrib), tuple(_verb(c) for c in element)
    )


@dataclass(slots=True)
class ActionRecord:
    """One request Twilio makes to an ``action`` URL (of ``<Connect>`` or ``<Dial>``) and its answer.
    ``url`` is the public URL requested (and signed), ``params`` the form fields sent. ``requested_ms`` /
    ``answered_ms``: stream ms (the call's clock goes on after the stream) when the request was made and
    when its answer had been read (None: no answer)."""

    url: str
    method: str
    params: dict[str, str]
    requested_ms: float = 0.0
    answered_ms: float | None = None
    status: int = 0  # 0: the request failed (connection refused, reset, timeout)
    content_type: str = ""
    twiml: str = ""
    verbs: list[Verb] = field(default_factory=list)

    def verb(self, name: str) -> Verb | None:
        """The first top-level verb named ``name``."""
        return next((v for v in self.verbs if v.name == name), None)


@dataclass(frozen=True, slots=True)
class MarkEcho:
    name: str
    stream_ms: float
    flushed: bool  # echoed because of a clear, so never played


@dataclass(frozen=True, slots=True)
class ClearRecord:
    stream_ms: float
    played_ms: float  # agent audio played in the current playback run (since the buffer was last empty)
    discarded_ms: float  # agent audio still queued, thrown away
    last_played_mark: str | None  # the last mark echoed because its audio had played


@dataclass(slots=True)
class CallRecord:
    """Everything that happened on one simulated call. Times are stream ms (0 = ``start`` sent)."""

    call_sid: str
    account_sid: str
    stream_sid: str
    speed: float
    webhook_status: int = 0
    webhook_content_type: str = ""
    twiml: str = ""
    before_connect: list[Verb] = field(default_factory=list)
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    after_connect: list[Verb] = field(default_factory=list)
    connect_action: str | None = None  # <Connect action>, as written
    connect_method: str = "POST"
    ws_status: int | None = None  # HTTP status when the media socket handshake was rejected
    received: list[tuple[float, Json]] = field(default_factory=list)
    sent: list[tuple[float, Json]] = field(default_factory=list)  # media frames left out (see spoken)
    spoken: list[tuple[int, bytes]] = field(default_factory=list)  # (media timestamp, mu-law) sent
    heard: list[tuple[float, bytearray]] = field(default_factory=list)  # (start, mu-law) played
    says: list[tuple[float, str]] = field(default_factory=list)  # (start, clip name)
    pressed: list[tuple[float, str]] = field(default_factory=list)  # (stream ms, key) sent as dtmf
    dtmf_heard: list[tuple[float, str]] = field(default_factory=list)  # (start, key) in the agent's audio
    marks: list[MarkEcho] = field(default_factory=list)
    clears: list[ClearRecord] = field(default_factory=list)
    protocol_errors: list[str] = field(default_factory=list)
    end_reason: str = ""  # caller_hangup | server_closed | max_duration | webhook_rejected | no_stream | ...
    runs_after_connect: bool = (
        False  # the server closed the stream, no action: Twilio runs the verbs after it
    )
    close_code: int | None = None
    close_reason: str = ""
    duration_ms: float = 0.0
    action: ActionRecord | None = None  # the <Connect action> request, once the stream is over
    dial_action: ActionRecord | None = None  # the <Dial action> request of the simulated dial outcome
    whisper: ActionRecord | None = None  # an answered dial's <Number url> (or <Sip url>) request

    @property
    def heard_digits(self) -> str:
        """The DTMF keys found in the agent's audio as played, in order."""
        return "".join(key for _, key in self.dtmf_heard)

    @property
    def action_twiml(self) -> str:
        """The TwiML the ``<Connect action>`` URL returned ("" if it was not requested)."""
        return self.action.twiml if self.action is not None else ""

    @property
    def action_verbs(self) -> list[Verb]:
        return self.action.verbs if self.action is not None else []

    @property
    def heard_runs(self) -> list[tuple[float, float]]:
        """(start, end) stream ms of each contiguous stretch of agent audio played."""
        return [(start, start + len(data) / BYTES_PER_MS) for start, data in self.heard]

    @property
    def agent_audio_ms(self) -> float:
        return sum(len(data) for _, data in self.heard) / BYTES_PER_MS

    def write_stereo_wav(self, path: Path | str) -> None:
        """8 kHz PCM16 stereo: left = what the caller sent, right = agent audio as heard."""
        ends = [ts + len(data) / BYTES_PER_MS for ts, data in self.spoken]
        ends += [end for _, end in self.heard_runs] + [self.duration_ms]
        frames = math.ceil(max(ends) * BYTES_PER_MS)
        stereo = np.zeros((frames, 2), dtype=np.int16)
        for column, segments in ((0, self.spoken), (1, self.heard)):
            for start, data in segments:
                i = round(start * BYTES_PER_MS)
                stereo[i : i + len(data), column] = ulaw_decode(bytes(data))[: frames - i]
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(8_000)
            w.writeframes(stereo.astype("<i2").tobytes())


class Playback:
    """Twilio's outbound audio buffer on the stream clock (pure: the caller passes ``now_ms``)."""

    def __init__(self, heard: list[tuple[float, bytearray]], lag_ms: float = 0.0) -> None:
        self.lag_ms = lag_ms
        """Audio arriving in an empty buffer starts to play this much later (a jitter buffer, a slow leg)."""
        self._queue: deque[bytes | str] = deque()  # audio chunks and mark names, in arrival order
        self._offset = 0  # bytes of the head chunk already played
        self._cursor_ms = 0.0  # playback has been simulated up to here
        self._heard = heard
        self.run_played_ms = 0.0
        self.last_played_mark: str | None = None
        self.last_end_ms: float | None = None  # when the buffer last ran dry after playing

    @property
    def pending_bytes(self) -> int:
        return sum(len(x) for x in self._queue if isinstance(x, bytes)) - self._offset

    def advance(self, now_ms: float) -> list[str]:
        """Play up to ``now_ms``; return the marks whose audio has now played."""
        marks: list[str] = []
        while self._queue:
            head = self._queue[0]
            if isinstance(head, str):
                self._queue.popleft()
                marks.append(head)
                self.last_played_mark = head
                continue
            count = min(len(head) - self._offset, int((now_ms - self._cursor_ms) * BYTES_PER_MS))
            if count <= 0:
                break
            self._play(head[self._offset : self._offset + count])
            self._offset += count
            if self._offset == len(head):
                self._queue.popleft()
                self._offset = 0
                if self.pending_bytes == 0:
                    self.last_end_ms = self._cursor_ms
        if self.pending_bytes == 0:
            self._cursor_ms = max(self._cursor_ms, now_ms)
        return marks

    def _play(self, data: bytes) -> None:
        if self._heard:
            start, last = self._heard[-1]
            if abs(start + len(last) / BYTES_PER_MS - self._cursor_ms) < 1e-6:
                last.extend(data)
                self._cursor_ms += len(data) / BYTES_PER_MS
                self.run_played_ms += len(data) / BYTES_PER_MS
                return
        self._heard.append((self._cursor_ms, bytearray(data)))
        self._cursor_ms += len(data) / BYTES_PER_MS
        self.run_played_ms += len(data) / BYTES_PER_MS

    def push_audio(self, data: bytes, now_ms: float) -> None:
        if self.pending_bytes == 0:
            self._cursor_ms = max(self._cursor_ms, now_ms + self.lag_ms)
            self.run_played_ms = 0.0
        self._queue.append(data)

    def push_mark(self, name: str) -> bool:
        """Queue a mark; True if it is due at once (nothing left to play)."""
        if self.pending_bytes == 0 and not self._queue:
            self.last_played_mark = name
            return True
        self._queue.append(name)
        return False

    def clear(self) -> tuple[float, list[str]]:
        """Drop everything queued: (ms of audio discarded, marks flushed)."""
        discarded_ms = self.pending_bytes / BYTES_PER_MS
        flushed = [x for x in self._queue if isinstance(x, str)]
        if discarded_ms > 0:
            self.last_end_ms = self._cursor_ms
        self._queue.clear()
        self._offset = 0
        return discarded_ms, flushed

    def next_mark_due_ms(self) -> float | None:
        due = self._cursor_ms - self._offset / BYTES_PER_MS
        for x in self._queue:
            if isinstance(x, str):
                return due
            due += len(x) / BYTES_PER_MS
        return None


def parse_twiml(body: str, record: CallRecord) -> bool:
    """Fill the TwiML part of ``record``; True if there is a ``<Connect><Stream>``."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        record.protocol_errors.append("webhook response is not XML")
        return False
    if root.tag != "Response":
        record.protocol_errors.append(f"TwiML root is <{root.tag}>, not <Response>")
        return False
    verbs = list(root)
    index = next((i for i, v in enumerate(verbs) if v.tag == "Connect"), None)
    if index is None:
        record.before_connect = [_verb(v) for v in verbs]
        return False
    record.before_connect = [_verb(v) for v in verbs[:index]]
    record.after_connect = [_verb(v) for v in verbs[index + 1 :]]
    connect = verbs[index]
    record.connect_action = connect.get("action")
    record.connect_method = connect.get("method", "POST").upper()
    if record.connect_method not in ("GET", "POST"):
        record.protocol_errors.append(f"<Connect method> must be GET or POST, not {record.connect_method!r}")
    stream = connect.find("Stream")
    if stream is None:
        record.protocol_errors.append("<Connect> without <Stream>")
        return False
    url = stream.get("url", "")
    record.stream_url = url
    record.parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    if not url.startswith("wss://"):
        record.protocol_errors.append("31922: <Stream url> must be an absolute wss:// URL")
    if "?" in url:
        record.protocol_errors.append("<Stream url> must not have a query string (use <Parameter>)")
    if stream.get("track", "inbound_track") != "inbound_track":
        record.protocol_errors.append("31941: <Connect><Stream> only supports track inbound_track")
    for name, value in record.parameters.items():
        if len(name) + len(value) >= 500:
            record.protocol_errors.append(f"<Parameter {name}> is 500 characters or more")
    return not record.protocol_errors


def _post_form(url: str, params: Mapping[str, str], headers: Mapping[str, str]) -> tuple[int, str, str]:
    data = urlencode(params).encode()
    return _http("POST", url, {**headers, "Content-Type": "application/x-www-form-urlencoded"}, data)


def _get(url: str, headers: Mapping[str, str]) -> tuple[int, str, str]:
    return _http("GET", url, headers, None)


def _http(method: str, url: str, headers: Mapping[str, str], data: bytes | None) -> tuple[int, str, str]:
    """One request as Twilio makes it (never through a proxy): status, Content-Type, body."""
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("User-Agent", "TwilioProxy/1.1")
    for name, value in headers.items():
        request.add_header(name, value)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            body = response.read().decode("utf-8", errors="replace")
            return int(response.status), response.headers.get("Content-Type", ""), body
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", errors="replace")
        return int(exc.code), exc.headers.get("Content-Type", ""), body


def _local_url(server_http_base: str, public_url: str) -> str:
    """A public URL mapped onto the local server: same path and query (as the webhook is)."""
    parts = urlsplit(public_url)
    return server_http_base.rstrip("/") + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def parse_verbs(body: str, what: str, record: CallRecord) -> list[Verb]:
    """The verbs of a TwiML document (an action URL's answer); problems go to ``protocol_errors``."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        record.protocol_errors.append(f"{what} response is not XML")
        return []
    if root.tag != "Response":
        record.protocol_errors.append(f"{what}: TwiML root is <{root.tag}>, not <Response>")
        return []
    return [_verb(v) for v in root]


async def _request_action(
    record: CallRecord, what: str, *, server_http_base: str, auth_token: str, url: str, method: str,
    params: Mapping[str, str], now_ms: Callable[[], float],
) -> ActionRecord:  # fmt: skip
    """Request an action URL as Twilio does (signed form POST, or GET with the fields in the query)."""
    action = ActionRecord(url, method, dict(params), requested_ms=now_ms())
    try:
        if method == "GET":
            signed_url = url + ("&" if "?" in url else "?") + urlencode(params)
            headers = _sign(auth_token, signed_url, {}, "valid")
            status, content_type, body = await asyncio.to_thread(
                _get, _local_url(server_http_base, signed_url), headers
            )
        else:
            headers = _sign(auth_token, url, params, "valid")
            status, content_type, body = await asyncio.to_thread(
                _post_form, _local_url(server_http_base, url), params, headers
            )
    except OSError as exc:  # urllib.error.URLError included: refused, reset, timed out
        record.protocol_errors.append(f"{what} request failed: {exc}")
        return action
    action.answered_ms = now_ms()
    action.status, action.content_type, action.twiml = status, content_type, body
    logger.debug("< %s %s", what, status)
    if status != 200:
        record.protocol_errors.append(f"{what} answered HTTP {status}")
        return action
    if "xml" not in content_type:
        record.protocol_errors.append(f"{what} answered {content_type!r}, not XML")
    action.verbs = parse_verbs(body, what, record)
    return action


async def _follow_actions(
    record: CallRecord, *, server_http_base: str, auth_token: str, webhook_url: str, to: str, from_: str,
    dial_outcome: DialOutcome | None, dial_duration_s: int, now_ms: Callable[[], float],
    direction: str = "inbound",
) -> None:  # fmt: skip
    """After the stream: the ``<Connect action>`` request, then the simulated ``<Dial action>`` one."""
    assert record.connect_action is not None
    status = "in-progress" if record.end_reason == "server_closed" else "completed"
    params = {
        "CallSid": record.call_sid, "AccountSid": record.account_sid, "From": from_, "To": to,
        "CallStatus": status, "Direction": direction, "ApiVersion": "2010-04-01",
    }  # fmt: skip
    url = urljoin(webhook_url, record.connect_action)
    common = {"server_http_base": server_http_base, "auth_token": auth_token}
    record.action = await _request_action(
        record, "<Connect action>", url=url, method=record.connect_method, params=params, now_ms=now_ms,
        **common,
    )  # fmt: skip
    dial = record.action.verb("Dial")
    if dial_outcome is None or status != "in-progress" or dial is None or "action" not in dial.attributes:
        return
    dial_sid = "CA" + secrets.token_hex(16)
    target = next((c for c in dial.children if c.name in ("Number", "Sip", "Client")), None)
    if dial_outcome == "answered" and target is not None and "url" in target.attributes:
        # the callee answered: Twilio fetches the TwiML to play them first (a whisper), on the child leg
        leg = {
            "CallSid": dial_sid, "ParentCallSid": record.call_sid, "AccountSid": record.account_sid,
            "From": dial.attributes.get("callerId", from_), "To": target.text, "CallStatus": "in-progress",
            "Direction": "outbound-dial", "ApiVersion": "2010-04-01",
        }  # fmt: skip
        record.whisper = await _request_action(
            record, f"<{target.name} url>", url=urljoin(url, target.attributes["url"]),
            method=target.attributes.get("method", "POST").upper(), params=leg, now_ms=now_ms, **common,
        )  # fmt: skip
    dial_params = params | {"DialCallStatus": DIAL_CALL_STATUS[dial_outcome], "DialCallSid": dial_sid}
    if dial_outcome == "answered":
        dial_params["DialCallDuration"] = str(dial_duration_s)
    record.dial_action = await _request_action(
        record, "<Dial action>", url=urljoin(url, dial.attributes["action"]),
        method=dial.attributes.get("method", "POST").upper(), params=dial_params, now_ms=now_ms, **common,
    )  # fmt: skip


def _sign(auth_token: str, url: str, params: Mapping[str, str], mode: Signature) -> dict[str, str]:
    if mode == "missing":
        return {}
    token = auth_token if mode == "valid" else "forged-" + auth_token
    return {"X-Twilio-Signature": str(RequestValidator(token).compute_signature(url, dict(params)))}


@dataclass(eq=False)
class StreamControl:
    """The stream seen and steered from outside (the REST simulator: answering-machine timing, a hang-up
    through the API). ``now_ms`` is the stream clock once ``started`` is set."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    hang_up: asyncio.Event = field(default_factory=asyncio.Event)
    now_ms: Callable[[], float] | None = None
    speed: float = 1.0

    async def until_stream_ms(self, stream_ms: float) -> None:
        """Until the stream has started and its clock has reached ``stream_ms``."""
        await self.started.wait()
        assert self.now_ms is not None
        delay_s = (stream_ms - self.now_ms()) / self.speed / 1000
        if delay_s > 0:
            await asyncio.sleep(delay_s)


class _Call:
    """Runs the media stream of one call (the script, the frame clock, playback)."""

    def __init__(self, ws: ClientConnection, record: CallRecord, steps: list[Step], *, gaps: Sequence[
        tuple[int, int]], max_duration_ms: int, playback_lag_ms: float = 0.0,
        control: StreamControl | None = None) -> None:  # fmt: skip
        self._ws = ws
        self._control = control
        self._record = record
        self._steps = steps
        self._gaps = gaps
        self._max_duration_ms = max_duration_ms
        self._playback = Playback(record.heard, playback_lag_ms)
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._sequence = 0
        self._outgoing: deque[bytes] = deque()  # caller speech, one frame per entry
        self._keys: deque[tuple[float, str]] = deque()  # keys to press: (due stream ms, key)
        self._ref_ms = 0.0  # the end of the previous step: triggers count from here
        self._changed = asyncio.Event()
        self._server_closed = asyncio.Event()

    def now_ms(self) -> float:
        return (self._loop.time() - self._t0) * 1000 * self._record.speed

    async def _send(self, message: Json) -> None:
        if message["event"] != "media":
            self._record.sent.append((self.now_ms(), message))
        await self._ws.send(json.dumps(message))

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    async def run(self) -> None:
        record = self._record
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self._t0 = self._loop.time()
        await self._send({
            "event": "start", "sequenceNumber": self._next_sequence(), "streamSid": record.stream_sid,
            "start": {
                "accountSid": record.account_sid, "streamSid": record.stream_sid, "callSid": record.call_sid,
                "tracks": ["inbound"], "customParameters": dict(record.parameters),
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        })  # fmt: skip
        if self._control is not None:
            self._control.now_ms, self._control.speed = self.now_ms, record.speed
            self._control.started.set()
        tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._playout())]
        try:
            await self._media_loop()
        except ConnectionClosed:  # the server closed the socket while a frame was being sent
            record.end_reason = record.end_reason or "server_closed"
            record.runs_after_connect = record.end_reason == "server_closed"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            now = self.now_ms()
            self._playback.advance(now)
            record.duration_ms = now
            record.dtmf_heard = [
                (start + tone.start_ms, tone.digit)
                for start, data in record.heard
                for tone in scan(bytes(data))
            ]
            if self._ws.close_code is None:
                await self._ws.close()
            if record.close_code is None:
                record.close_code = self._ws.close_code
                record.close_reason = self._ws.close_reason or ""

    async def _media_loop(self) -> None:
        record = self._record
        frame = 0
        while True:
            due_ms = frame * FRAME_MS
            delay_s = (due_ms - self.now_ms()) / record.speed / 1000
            if delay_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._server_closed.wait(), delay_s)
            if self._server_closed.is_set():
                record.end_reason = "server_closed"
                record.runs_after_connect = True
                return
            if due_ms >= self._max_duration_ms:
                record.end_reason = "max_duration"
                await self._hang_up()
                return
            if self._control is not None and self._control.hang_up.is_set():
                record.end_reason = "ended_by_api"  # the call was ended through Twilio's REST API
                await self._hang_up()
                return
            now = self.now_ms()
            for name in self._playback.advance(now):
                await self._echo(name, now, flushed=False)
            if self._run_script(due_ms):
                record.end_reason = "caller_hangup"
                await self._hang_up()
                return
            while self._keys and self._keys[0][0] <= due_ms:
                _, key = self._keys.popleft()
                await self._press(key, due_ms)
                if not self._keys:
                    self._ref_ms = due_ms  # the last key: the step is over
            payload = self._outgoing.popleft() if self._outgoing else SILENCE
            if not self._outgoing and payload is not SILENCE:
                self._ref_ms = due_ms + FRAME_MS  # the caller finished speaking
            if not any(start <= due_ms < end for start, end in self._gaps):
                record.spoken.append((due_ms, payload))
                await self._send({
                    "event": "media", "sequenceNumber": self._next_sequence(), "streamSid": record.stream_sid,
                    "media": {"track": "inbound", "chunk": str(len(record.spoken)), "timestamp": str(due_ms),
                              "payload": base64.b64encode(payload).decode("ascii")},
                })  # fmt: skip
            frame += 1

    async def _hang_up(self) -> None:
        record = self._record
        stop = {"accountSid": record.account_sid, "callSid": record.call_sid}
        await self._send({"event": "stop", "sequenceNumber": self._next_sequence(),
                          "streamSid": record.stream_sid, "stop": stop})  # fmt: skip
        await self._ws.close()

    # --- the caller's script -------------------------------------------------------------------

    def _run_script(self, now_ms: float) -> bool:
        """Start the steps whose trigger fired; True when the caller hangs up."""
        while (
            self._steps
            and not self._outgoing
            and not self._keys
            and self._fired(self._steps[0].after, now_ms)
        ):
            step = self._steps.pop(0)
            if isinstance(step, HangUp):
                return True
            if isinstance(step, Press):
                self._keys.extend((now_ms + i * step.interval_ms, key) for i, key in enumerate(step.digits))
                logger.debug("= caller presses %d keys at %.0f ms", len(step.digits), now_ms)
            else:
                self._say(step.clip, now_ms)
        return False

    async def _press(self, key: str, now_ms: float) -> None:
        record = self._record
        record.pressed.append((now_ms, key))
        dtmf = {"track": "inbound_track", "digit": key}
        await self._send({"event": "dtmf", "sequenceNumber": self._next_sequence(),
                          "streamSid": record.stream_sid, "dtmf": dtmf})  # fmt: skip

    def _say(self, clip: Clip, now_ms: float) -> None:
        samples = np.frombuffer(clip.pcm, dtype="<i2")
        if clip.rate_hz != 8_000:
            positions = np.arange(len(samples) * 8_000 // clip.rate_hz) * (clip.rate_hz / 8_000)
            samples = np.interp(positions, np.arange(len(samples)), samples).astype(np.int16)
        ulaw = pcm16_to_ulaw(samples.astype("<i2").tobytes())
        ulaw += SILENCE[: -len(ulaw) % FRAME_BYTES]
        self._outgoing.extend(ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES))
        self._record.says.append((now_ms, clip.name))
        logger.debug("= caller says %s at %.0f ms", clip.name, now_ms)

    def _fired(self, trigger: Trigger, now_ms: float) -> bool:
        if isinstance(trigger, At):
            return now_ms >= trigger.stream_ms
        if trigger.timeout_ms is not None and now_ms - self._ref_ms >= trigger.timeout_ms:
            return True
        played = [
            (max(start, self._ref_ms), end) for start, end in self._record.heard_runs if end > self._ref_ms
        ]
        if not played:
            return False
        if isinstance(trigger, AfterAgentStarted):
            return now_ms >= played[0][0] + trigger.delay_ms
        assert isinstance(trigger, AfterAgentSilent)
        last_end = self._playback.last_end_ms
        idle = self._playback.pending_bytes == 0 and last_end is not None
        return idle and last_end is not None and now_ms - last_end >= trigger.silence_ms

    # --- what the server sends -----------------------------------------------------------------

    async def _receive(self) -> None:
        try:
            async for raw in self._ws:
                await self._on_message(raw, self.now_ms())
        except ConnectionClosed:
            pass
        self._record.close_code = self._ws.close_code
        self._record.close_reason = self._ws.close_reason or ""
        self._server_closed.set()

    def _error(self, text: str) -> None:
        logger.debug("! protocol error: %s", text)
        self._record.protocol_errors.append(text)

    async def _on_message(self, raw: str | bytes, now_ms: float) -> None:
        if isinstance(raw, bytes):
            self._error("binary frame (Media Streams messages are JSON text)")
            return
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):
            self._error("message is not JSON")
            return
        if not isinstance(message, dict):
            self._error("message is not a JSON object")
            return
        self._record.received.append((now_ms, message))
        event = message.get("event")
        if event not in ("media", "mark", "clear"):
            self._error(f"unknown event {event!r}")
            return
        if message.get("streamSid") != self._record.stream_sid:
            self._error(f"{event} with a streamSid that is not this stream's")
            return
        for name in self._playback.advance(now_ms):
            await self._echo(name, now_ms, flushed=False)
        if event == "media":
            self._on_media(message, now_ms)
        elif event == "mark":
            mark = message.get("mark")
            mark_name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(mark_name, str) or not mark_name:
                self._error("mark without mark.name")
            elif self._playback.push_mark(mark_name):
                await self._echo(mark_name, now_ms, flushed=False)
        else:
            played_ms = self._playback.run_played_ms if self._playback.pending_bytes else 0.0
            discarded_ms, flushed = self._playback.clear()
            self._record.clears.append(
                ClearRecord(now_ms, played_ms, discarded_ms, self._playback.last_played_mark)
            )
            for name in flushed:
                await self._echo(name, now_ms, flushed=True)
        self._changed.set()

    def _on_media(self, message: Json, now_ms: float) -> None:
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            self._error("media without media.payload")
            return
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._error("media payload is not base64")
            return
        if not data:
            self._error("media with an empty payload")
        elif data[:4] == b"RIFF":
            self._error("media payload starts with a WAV header (raw mu-law expected)")
        else:
            self._playback.push_audio(data, now_ms)

    async def _echo(self, name: str, now_ms: float, *, flushed: bool) -> None:
        self._record.marks.append(MarkEcho(name, now_ms, flushed))
        await self._send({"event": "mark", "sequenceNumber": self._next_sequence(),
                          "streamSid": self._record.stream_sid, "mark": {"name": name}})  # fmt: skip

    async def _playout(self) -> None:
        """Echo each mark when the audio before it has played."""
        while True:
            now = self.now_ms()
            for name in self._playback.advance(now):
                await self._echo(name, now, flushed=False)
            due = self._playback.next_mark_due_ms()
            self._changed.clear()
            timeout_s = None if due is None else max(due - now, 0.0) / self._record.speed / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)


async def place_call(
    server_http_base: str,
    *,
    auth_token: str,
    public_base_url: str,
    script: Sequence[Step] = (),
    to: str = "+15551230001",
    from_: str = "+15557654321",
    account_sid: str | None = None,
    speed: float = 1.0,
    ws_base: str | None = None,
    voice_path: str = "/twilio/voice",
    webhook_signature: Signature = "valid",
    stream_signature: Signature = "valid",
    parameter_overrides: Mapping[str, str | None] | None = None,
    gaps: Sequence[tuple[int, int]] = (),
    end_silence_ms: int = 1500,
    end_timeout_ms: int = 10_000,
    max_duration_ms: int = 60_000,
    playback_lag_ms: float = 0.0,
    dial_outcome: DialOutcome | None = None,
    dial_duration_s: int = 42,
) -> CallRecord:
    """Place one inbound call against ``server_http_base`` (e.g. ``http://127.0.0.1:8080``).

    ``public_base_url`` is the server's ``PUBLIC_BASE_URL``: the webhook is signed for
    ``public_base_url + voice_path``. The media socket goes to ``ws_base`` (default: the server's
    base with a ``ws`` scheme) plus the path of the ``<Stream url>``. ``webhook_signature`` /
    ``stream_signature`` forge or omit the signatures; ``parameter_overrides`` replaces (str) or
    drops (None) ``<Parameter>`` values before ``start``. ``gaps``: stream-ms windows in which no
    media frame is sent (their timestamps are skipped). After the script, the caller hangs up once
    the agent has been silent ``end_silence_ms`` (or ``end_timeout_ms`` after the last step if the
    agent says nothing); ``max_duration_ms`` of stream time is a hard cap. ``playback_lag_ms``: agent
    audio that arrives while nothing plays starts that much later (marks echo as it plays).

    With ``<Connect action>``, the action URL is requested once the stream is over (see the module
    docstring); ``dial_outcome`` (None: no dial is simulated) is the outcome of a ``<Dial action>``
    in its answer, ``dial_duration_s`` the ``DialCallDuration`` of an answered one.
    """
    record = CallRecord(
        call_sid="CA" + secrets.token_hex(16),
        account_sid=account_sid or "AC" + secrets.token_hex(16),
        stream_sid="MZ" + secrets.token_hex(16),
        speed=speed,
    )
    params = {
        "AccountSid": record.account_sid, "ApiVersion": "2010-04-01", "CallSid": record.call_sid,
        "CallStatus": "ringing", "Called": to, "Caller": from_, "Direction": "inbound", "From": from_,
        "To": to,
    }  # fmt: skip
    public_url = public_base_url.rstrip("/") + voice_path
    headers = _sign(auth_token, public_url, params, webhook_signature)
    status, content_type, body = await asyncio.to_thread(
        _post_form, server_http_base.rstrip("/") + voice_path, params, headers
    )
    record.webhook_status, record.webhook_content_type, record.twiml = status, content_type, body
    logger.debug("< webhook %s", status)
    if status != 200:
        record.end_reason = "webhook_rejected"
        return record
    if "xml" not in content_type:
        record.protocol_errors.append(f"webhook answered {content_type!r}, not XML")
    return await run_twiml(
        record, body, server_http_base=server_http_base, auth_token=auth_token, public_url=public_url, to=to,
        from_=from_, script=script, ws_base=ws_base, stream_signature=stream_signature,
        parameter_overrides=parameter_overrides, gaps=gaps, end_silence_ms=end_silence_ms,
        end_timeout_ms=end_timeout_ms, max_duration_ms=max_duration_ms, playback_lag_ms=playback_lag_ms,
        dial_outcome=dial_outcome, dial_duration_s=dial_duration_s,
    )  # fmt: skip


async def run_twiml(
    record: CallRecord, twiml: str, *, server_http_base: str, auth_token: str, public_url: str, to: str,
    from_: str, script: Sequence[Step] = (), direction: str = "inbound", ws_base: str | None = None,
    stream_signature: Signature = "valid", parameter_overrides: Mapping[str, str | None] | None = None,
    gaps: Sequence[tuple[int, int]] = (), end_silence_ms: int = 1500, end_timeout_ms: int = 10_000,
    max_duration_ms: int = 60_000, playback_lag_ms: float = 0.0, dial_outcome: DialOutcome | None = None,
    dial_duration_s: int = 42, control: StreamControl | None = None,
) -> CallRecord:  # fmt: skip
    """Run a call's TwiML as Twilio does once the call is up: its ``<Connect><Stream>`` with the caller's
    ``script``, then the ``<Connect action>`` (see :func:`place_call`). ``public_url`` is the URL the TwiML
    came from (relative action URLs resolve against it); an outbound call's TwiML came inline, with
    ``direction`` ``outbound-api``. ``control`` lets the caller follow the stream clock and end it."""
    record.twiml = twiml
    if not parse_twiml(twiml, record) or record.stream_url is None:
        record.end_reason = "no_stream"
        return record
    for name, value in (parameter_overrides or {}).items():
        if value is None:
            record.parameters.pop(name, None)
        else:
            record.parameters[name] = value
    base = ws_base or "ws" + server_http_base.rstrip("/").removeprefix("http")
    ws_headers = _sign(auth_token, record.stream_url, {}, stream_signature)
    try:
        ws = await connect(
            base + urlsplit(record.stream_url).path, additional_headers=ws_headers, proxy=None,
            user_agent_header="Twilio.TmeWs/1.0", open_timeout=10,
        )  # fmt: skip
    except InvalidStatus as exc:
        record.ws_status = exc.response.status_code
        record.end_reason = "stream_rejected"
        return record
    steps: list[Step] = list(script)
    if not steps or not isinstance(steps[-1], HangUp):
        steps.append(HangUp(AfterAgentSilent(end_silence_ms, timeout_ms=end_timeout_ms)))
    call = _Call(
        ws, record, steps, gaps=gaps, max_duration_ms=max_duration_ms, playback_lag_ms=playback_lag_ms,
        control=control,
    )  # fmt: skip
    await call.run()
    logger.debug("= call %s ended: %s", record.call_sid, record.end_reason)
    if record.connect_action is not None:
        record.runs_after_connect = False  # Twilio requests the action instead of the verbs after </Connect>
        await _follow_actions(
            record, server_http_base=server_http_base, auth_token=auth_token, webhook_url=public_url, to=to,
            from_=from_, dial_outcome=dial_outcome, dial_duration_s=dial_duration_s, now_ms=call.now_ms,
            direction=direction,
        )  # fmt: skip
    return record
