"""The media-stream WebSocket: check the upgrade, then run one call through the bridge.

upgrade ── signature ok? ──no──> 403 before the handshake completes
   │yes
101 ──> Bridge(Call(...)).start()      (the model socket opens at once, in parallel with ``start``)
             │
        ``start``: the per-call token must match ``start.callSid`` and the agent, once,
        unexpired; otherwise the socket closes with 1008 before any audio reaches the model.

The stream is served on the lean path of :mod:`service.runtime.server` (not through Quart): a
:class:`MediaConnection` takes the TCP connection from its first bytes, and every message then goes
from the transport through the WebSocket protocol to the call in the same callback.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from websockets.http11 import Request
from websockets.server import ServerProtocol

from service.core.audio import Transcoder
from service.core.call import Call
from service.core.commands import CallTool, EndCall
from service.core.inputs import StartAuthorized, StartRejected, ToolResult
from service.core.placeholders import from_parameters, token_subject
from service.outbound import agent_for_stream, is_bound, outbound_subject
from service.runtime.bridge import Authorizer, Bridge, TextSocket
from service.runtime.model import open_model
from service.runtime.recorder import Recorder
from service.runtime.tools import ToolRunner
from service.runtime.wsock import OnClose, OnMessage, WebSocket
from service.web.security import TokenCheck, check_stream_token, check_stream_upgrade, token_expiry_s
from service.wire import realtime, twilio

if TYPE_CHECKING:
    from service.web.app import AppState

log = logging.getLogger(__name__)

MAX_TWILIO_MESSAGE_BYTES = 1024 * 1024
"""A Twilio message is about 300 bytes; twilio.parse refuses anything over 64 KiB anyway."""


def authorizer(state: AppState) -> Authorizer:
    """The ``start`` check: token bound to CallSid and agent, unexpired, single use (across the
    workers: the claim goes through the database); the agent must still exist.

    An outbound call's token is bound to its nonce instead, and to its variables; one placed through
    the API must also carry the CallSid Twilio returned for it (:mod:`service.outbound`). The agent is
    then filled with the call's variables and offered the ``voicemail`` tool.
    """

    def authorize(start: twilio.Start) -> StartRejected | Awaitable[StartAuthorized | StartRejected]:
        params = start.custom_parameters
        key, token, nonce = params.get("agent", ""), params.get("token", ""), params.get("nonce", "")
        if not token:
            return StartRejected("no stream token")
        subject = outbound_subject(nonce) if nonce else start.call_sid
        values = from_parameters(params)
        now_s = state.clock()
        secret = state.settings.stream_token_secret
        verdict = check_stream_token(secret, token, subject, token_subject(key, values), now_s)
        if verdict is not TokenCheck.OK:
            return StartRejected(f"stream token {verdict.value}")
        return claim(start, key, subject, values, token_expiry_s(token) or 0, now_s)

    async def claim(
        start: twilio.Start, key: str, subject: str, values: dict[str, str], expiry_s: int, now_s: float
    ) -> StartAuthorized | StartRejected:
        if not await state.ops.claim_token(subject, expiry_s, now_s):
            return StartRejected(f"stream token {TokenCheck.REUSED.value}")
        outbound = subject != start.call_sid
        if outbound and is_bound(subject):
            placed = await state.ops.take_decision(subject)
            if placed is None or placed.get("call_sid") != start.call_sid:
                return StartRejected("outbound stream token not bound to this CallSid")
        agent = state.agents.by_key(key)
        if agent is None:
            return StartRejected(f"agent {key!r} no longer configured")
        filled = agent_for_stream(agent, values, outbound=outbound)
        if isinstance(filled, str):
            return StartRejected(filled)
        state.ops.capacity.started(start.call_sid)
        if outbound:
            state.ops.capacity.started(subject)
            state.ops.watch_machine_verdict(start.call_sid)
        return StartAuthorized(filled)

    return authorize


class MediaEndpoint:
    """Makes a :class:`MediaConnection` for each media-stream connection; keeps the live bridges."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.bridges: set[Bridge] = state.ops.bridges
        secret = state.settings.tools_signing_secret
        self.tools = ToolRunner(secret) if secret is not None else None

    async def run_tool(self, call: CallTool) -> ToolResult:
        if self.tools is None:  # the agents file gained tools after start-up
            log.error("tool %s not run: TOOLS_SIGNING_SECRET is not set", call.tool.name)
            return ToolResult(call.call_id, '{"error": "the tool is not available"}', "error", 0)
        return await self.tools.run(call)

    def call_ended(self, call: Call, end: EndCall | None, token_genuine: bool) -> None:
        """What the call's ``<Connect action>`` is to answer (before its stream closes), its record,
        metrics and webhook."""
        self.state.ops.call_ended(call, end, token_genuine, time.time(), time.monotonic())

    def rate_limits(self, limits: realtime.RateLimits) -> None:
        self.state.ops.capacity.rate_limits(limits.tokens_remaining, limits.reset_s, time.monotonic())

    async def close(self) -> None:
        if self.tools is not None:
            await self.tools.close()

    def connection(self, transport: asyncio.Transport) -> MediaConnection:
        return MediaConnection(self, transport)

    async def open_model(self, model: str, on_message: OnMessage, on_close: OnClose) -> TextSocket:
        settings = self.state.settings
        return await open_model(
            settings.realtime_connect_url(model), settings.realtime_auth_headers, on_message, on_close
        )

    def new_bridge(self, twilio_socket: TextSocket) -> Bridge:
        settings = self.state.settings
        call = Call(
            transcoder=Transcoder(),
            default_model=settings.openai_realtime_model,
            config=settings.call_config,
            rng=random.Random(),
        )
        recorder = None
        if settings.record_calls_dir:
            recorder = Recorder.in_directory(
                settings.record_calls_dir, time.monotonic(), settings.openai_realtime_model, call.config
            )
        return Bridge(
            call,
            twilio_socket,
            self.open_model,
            authorizer(self.state),
            recorder=recorder,
            connect_timeout_s=settings.model_connect_timeout_s,
            log_payloads=settings.log_payloads,
            run_tool=self.run_tool,
            on_end=self.call_ended,
            on_rate_limits=self.rate_limits,
        )


class MediaConnection:
    """One media-stream TCP connection: the upgrade, then the call."""

    def __init__(self, endpoint: MediaEndpoint, transport: asyncio.Transport) -> None:
        self._endpoint = endpoint
        self.bridge: Bridge | None = None
        protocol = ServerProtocol(extensions=None, max_size=MAX_TWILIO_MESSAGE_BYTES)
        self._ws = WebSocket(protocol, transport, self._on_message, self._on_close)
        self._upgraded = False

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            self._ws.receive(data)
            return
        protocol = self._ws.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        if not events:
            self._ws.flush()  # an unusable request is answered by the protocol itself
            return
        request, frames = events[0], events[1:]
        assert isinstance(request, Request)  # the first event of a server protocol is the request
        self._upgraded = True
        self._upgrade(request)
        self._ws.handle(frames)

    def _upgrade(self, request: Request) -> None:
        settings = self._endpoint.state.settings
        protocol = self._ws.protocol
        assert isinstance(protocol, ServerProtocol)
        _, _, query = request.path.partition("?")
        check = check_stream_upgrade(settings, request.headers, query)
        if not check.allowed:
            log.warning("media stream upgrade rejected: signature %s", check.value)
            protocol.send_response(protocol.reject(403, "Forbidden\n"))
            self._ws.flush()
            return
        response = protocol.accept(request)
        protocol.send_response(response)
        self._ws.flush()
        if response.status_code != 101:
            log.warning("media stream upgrade refused: %d", response.status_code)
            return
        self.bridge = bridge = self._endpoint.new_bridge(self._ws)
        self._endpoint.bridges.add(bridge)
        bridge.start()

    def _on_message(self, message: str | bytes) -> None:
        if self.bridge is not None:
            self.bridge.twilio_message(message)

    def _on_close(self, code: int | None, detail: str) -> None:
        bridge = self.bridge
        if bridge is not None:
            bridge.twilio_closed(code, detail)
            self._endpoint.bridges.discard(bridge)

    def connection_lost(self) -> None:
        self._ws.connection_lost()
        if self.bridge is not None:
            self._endpoint.bridges.discard(self.bridge)
