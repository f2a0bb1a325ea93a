"""Replay a call recording over real sockets: both peers played back against a running Dialtone server.

:mod:`service.replay` checks the call logic alone, in virtual time. This checks the whole service (hypercorn,
the Quart route, the bridge, both websockets) with the same golden: a Twilio client and a Realtime server
send the recording's inbound messages at their recorded offsets, in the recorded order, and what the
service sends on each socket is compared with the recording.

The agent's HTTP tools are played by :class:`ReplayToolServer` (the service's agents file must point
the tools at it): each request the service makes is compared with the recorded tool call (tool,
arguments, the model's ``call_id``) and held until the recording's result line, then answered so that
the service's tool client makes the recorded result of it (the recorded body for ``ok``, the status
for ``http_<status>``, a page for ``not_json``, an oversized body for ``too_large``; nothing for
``timeout``: the service gives up by itself). ``refused`` and ``error`` cannot be replayed.

Two things differ from the recorded call by necessity and are handled here:

- the stream token is single-use and expires, so the signed voice webhook is posted again for the
  recorded CallSid and the fresh token replaces the recorded one in ``start``;
- real time passes between messages, so values derived from time (the truncation point interpolated
  within the playing frame) are compared within one 20 ms frame.

Lockstep: before sending an inbound message, every outbound message recorded before it must have
arrived; this keeps the service's view of the two sockets in the recorded order.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from service.replay import Recording, ReplayResult, compare, tool_text
from service.sim.lifecycle import Served
from service.sim.stack import MEDIA_PATH, inbound_call_form, post_voice_webhook, stream_signature
from service.sim.tools import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

FRAME_MS = 20
STEP_TIMEOUT_S = 5.0
SESSION_LIFETIME_S = 3600


class ReplayRealtimeServer:
    """A websockets server on 127.0.0.1 that hands each accepted connection to the replay driver.

    The handshake of each connection is held until the driver reaches the recording's ``open`` line
    for it (:meth:`admit`), so the service learns that its model socket opened at the recorded point:
    what it does with the caller's audio meanwhile (hold it, or drop it while reconnecting) does not
    depend on how fast the loopback is.
    """

    def __init__(self) -> None:
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self._server: Server | None = None
        self._done = asyncio.Event()
        self._admissions: asyncio.Queue[None] = asyncio.Queue()
        self._attempted = asyncio.Event()
        self.attempts = 0
        self.port = 0

    def admit(self) -> None:
        """Let the next connection's handshake complete."""
        self._admissions.put_nowait(None)

    async def _hold(self, connection: ServerConnection, request: Request) -> None:
        self.attempts += 1
        self._attempted.set()
        await self._admissions.get()

    async def next_attempt(self, seen: int) -> None:
        """Until the service has tried to connect more than ``seen`` times."""
        while self.attempts <= seen:
            self._attempted.clear()
            await self._attempted.wait()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    async def start(self) -> None:
        self._server = await serve(self._handler, "127.0.0.1", 0, max_size=None, process_request=self._hold)
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        self._done.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handler(self, ws: ServerConnection) -> None:
        await self.connections.put(ws)
        await self._done.wait()  # the driver owns the socket until the server stops


@dataclass(slots=True)
class _HeldRequest:
    body: dict[str, Any]
    answer: asyncio.Future[web.Response | None] = field(default_factory=asyncio.Future)


class ReplayToolServer(Served):
    """The agent's HTTP tools during a replay, on 127.0.0.1: each (signed) request is held until the
    driver answers it with a recorded result (:meth:`answer`). ``problems`` lists the requests it
    refused (a bad signature, a body that is not a tool call)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.problems: list[str] = []
        self._received: asyncio.Queue[_HeldRequest] = asyncio.Queue()
        self._held: dict[str, _HeldRequest] = {}
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        for held in self._held.values():
            if not held.answer.done():
                held.answer.set_result(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def next_request(self) -> dict[str, Any]:
        """The body of the next request the service made (as JSON)."""
        return (await self._received.get()).body

    def answer(self, call_id: str, outcome: str, output: str) -> None:
        """Answer the request of ``call_id`` so that the service's tool client makes ``(output, outcome)``
        of it (for ``timeout``, never: the client gives up by itself, and the request is dropped when
        the server stops)."""
        held = self._held.get(call_id)
        if held is None or held.answer.done() or outcome == "timeout":
            return
        held.answer.set_result(_reproduce(outcome, output))

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not verify_signature(self.secret, timestamp, raw, signature, time.time()):
            self.problems.append(f"{request.path}: bad signature")
            return web.json_response({"error": "bad signature"}, status=401)
        try:
            body = json.loads(raw)
            call_id = str(body["call_id"])
        except (ValueError, KeyError, TypeError):
            self.problems.append(f"{request.path}: not a tool call")
            return web.json_response({"error": "not a tool call"}, status=400)
        held = self._held[call_id] = _HeldRequest(body)
        self._received.put_nowait(held)
        response = await held.answer
        if response is None:  # never answered (a timeout): the replay is over, drop the connection
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never sent
        return response


def _reproduce(outcome: str, output: str) -> web.Response:
    """A response that the tool client turns into ``(output, outcome)``."""
    if outcome == "ok":
        return web.Response(text=output, content_type="application/json")
    if outcome.startswith("http_") and outcome[5:].isdigit():
        return web.json_response({"error": "replayed failure"}, status=int(outcome[5:]))
    if outcome == "not_json":
        return web.Response(text="<html><body>replayed</body></html>", content_type="text/html")
    if outcome == "too_large":
        return web.json_response({"padding": "x" * (64 * 1024)})
    raise ValueError(f"a tool outcome that cannot be replayed: {outcome}")


def service_env(recording: Recording) -> dict[str, str]:
    """Settings that give the service under replay the recorded call's policies."""
    config = recording.config
    return {
        "TRUNCATE_SLACK_MS": str(config.truncate_slack_ms),
        "MODEL_RECONNECT_GIVE_UP_S": str(config.reconnect.give_up_s),
        "ROLLOVER_MARGIN_S": str(config.rollover.margin_s),
        "CONTEXT_REPLAY_TOKENS": str(config.context_tokens),
    }


def _fresh_start(message: str, parameters: dict[str, str]) -> str:
    start = json.loads(message)
    start["start"]["customParameters"] = {**start["start"].get("customParameters", {}), **parameters}
    return json.dumps(start)


def _shift_expiry(message: str, shift_s: float | None) -> str:
    """``session.created`` with ``expires_at`` moved by ``shift_s``: the session's limit falls as long
    after the replayed socket opened as it did after the recorded one (an hour from now when the
    recording does not say when its socket opened)."""
    if '"session.created"' not in message:
        return message
    event = json.loads(message)
    session = event.get("session", {})
    if isinstance(session.get("expires_at"), int):
        if shift_s is None:
            session["expires_at"] = int(time.time()) + SESSION_LIFETIME_S
        else:
            session["expires_at"] += round(shift_s)
    return json.dumps(event)


async def _recv(ws: ClientConnection | ServerConnection) -> str:
    message = await asyncio.wait_for(ws.recv(), STEP_TIMEOUT_S)
    return message if isinstance(message, str) else message.decode("utf-8", "replace")


async def replay_over_sockets(
    recording: Recording,
    realtime_server: ReplayRealtimeServer,
    *,
    http_base: str,
    auth_token: str,
    public_base_url: str,
    tools: ReplayToolServer | None = None,
) -> ReplayResult:
    """Drive a running service (reachable at ``http_base``, using ``realtime_server`` as its model and
    ``tools`` as its agent's HTTP tools) with the recording's inbound messages; return what it sent,
    compared with the recording."""
    start_text = next(
        e.msg for e in recording.entries if e.peer == "twilio" and e.direction == "in" and '"start"' in e.msg
    )
    start = json.loads(start_text)["start"]
    recorded = start.get("customParameters", {})
    form = inbound_call_form(
        start["callSid"],
        account_sid=start.get("accountSid", ""),
        from_=recorded.get("from", "+15550000000"),
        to=recorded.get("to", "+15550000001"),
    )
    parameters = await asyncio.to_thread(post_voice_webhook, http_base, auth_token, public_base_url, form)
    ws_url = http_base.replace("http://", "ws://") + MEDIA_PATH
    signature = stream_signature(auth_token, public_base_url)
    sent: list[tuple[str, str]] = []
    models: dict[int, ServerConnection] = {}
    wall_shift_s: dict[int, float | None] = {}
    t0 = time.monotonic()
    async with connect(ws_url, additional_headers={"X-Twilio-Signature": signature}) as caller:
        opens = [i for i, e in enumerate(recording.entries) if (e.peer, e.event) == ("realtime", "open")]
        last_open = max(opens, default=-1)
        for index, entry in enumerate(recording.entries):
            delay = t0 + entry.t_ms / 1000 - time.monotonic()
            if entry.direction in ("in", "event") and delay > 0:
                await asyncio.sleep(delay)
            try:
                match (entry.peer, entry.direction, entry.event):
                    case ("twilio", "in", _):
                        msg = _fresh_start(entry.msg, parameters) if entry.msg == start_text else entry.msg
                        await caller.send(msg)
                    case ("twilio", "out", _):
                        sent.append(("twilio", await _recv(caller)))
                    case ("realtime", "event", "open"):
                        realtime_server.admit()
                        conn = await asyncio.wait_for(realtime_server.connections.get(), STEP_TIMEOUT_S)
                        models[entry.link] = conn
                        wall = entry.line.get("wall")  # absent from version 1 recordings
                        wall_shift_s[entry.link] = time.time() - float(wall) if wall is not None else None
                    case ("realtime", "in", _) if entry.link in models:
                        msg = _shift_expiry(entry.msg, wall_shift_s[entry.link])
                        await models[entry.link].send(msg)
                    case ("realtime", "out", _) if entry.link in models:
                        sent.append(("realtime", await _recv(models[entry.link])))
                    case ("realtime", "event", "closed") if entry.link in models:
                        code, seen = entry.line.get("code"), realtime_server.attempts
                        if code is None:
                            models[entry.link].transport.abort()
                        else:
                            await models[entry.link].close(int(code), "replayed close")
                        if index < last_open:  # the service reconnects: wait until it has seen the loss
                            await asyncio.wait_for(realtime_server.next_attempt(seen), STEP_TIMEOUT_S)
                    case ("tool", "out", _) if tools is not None:
                        body = await asyncio.wait_for(tools.next_request(), STEP_TIMEOUT_S)
                        arguments: dict[str, Any] = body.get("arguments", {})
                        sent.append(("tool", tool_text(str(body["call_id"]), str(body["tool"]), arguments)))
                    case ("tool", "in", _) if tools is not None:
                        line = entry.line
                        tools.answer(str(line["call_id"]), str(line["outcome"]), str(line["output"]))
                    case ("twilio", "event", "closed"):
                        await caller.close()
                    case _:
                        pass
            except (TimeoutError, ConnectionClosed) as exc:
                result = ReplayResult(sent, recording.outbound())
                result.mismatches = [
                    f"at {entry.t_ms:.0f} ms ({entry.peer} {entry.direction}): {type(exc).__name__}"
                ]
                result.mismatches += compare(result.expected[: len(sent)], sent, timing_tolerance_ms=FRAME_MS)
                return result
    result = ReplayResult(sent, recording.outbound())
    result.mismatches = compare(result.expected, sent, timing_tolerance_ms=FRAME_MS)
    return result
