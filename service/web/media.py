"""The media-stream websocket route: check the upgrade, then run one call through the bridge.

upgrade ── signature ok? ──no──> 403 before accept
   │yes
accept ──> Bridge(Call(...)).run()      (the model socket opens at once, in parallel with ``start``)
                 │
           ``start``: the per-call token must match ``start.callSid`` and the agent, once,
           unexpired; otherwise the socket closes with 1008 before any audio reaches the model.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

from quart import Response, websocket
from websockets.asyncio.client import connect

from service.core.audio import Transcoder
from service.core.call import Call
from service.core.inputs import StartAuthorized, StartRejected
from service.runtime.bridge import Authorizer, Bridge, RealtimeSocket, SocketClosed
from service.runtime.recorder import Recorder
from service.web.security import TokenCheck, check_stream_upgrade
from service.wire import twilio

if TYPE_CHECKING:
    from service.web.app import AppState

log = logging.getLogger(__name__)

MAX_MODEL_MESSAGE_BYTES = 16 * 1024 * 1024
"""An audio delta is tens of kB; the API allows events up to 15 MiB."""


class QuartTwilioSocket:
    """Adapts Quart's accepted websocket to :class:`service.runtime.bridge.TwilioSocket`."""

    async def receive(self) -> str | bytes:
        return await websocket.receive()

    async def send(self, data: str) -> None:
        try:
            await websocket.send(data)
        except ConnectionError as exc:
            raise SocketClosed from exc

    async def close(self, code: int, reason: str = "") -> None:
        await websocket.close(code, reason)


def authorizer(state: AppState) -> Authorizer:
    """The ``start`` check: token bound to CallSid and agent, single use; the agent must still exist."""

    def authorize(start: twilio.Start) -> StartAuthorized | StartRejected:
        params = start.custom_parameters
        key, token = params.get("agent", ""), params.get("token", "")
        if not token:
            return StartRejected("no stream token")
        verdict = state.seen_tokens.admit(
            state.settings.stream_token_secret, token, start.call_sid, key, state.clock()
        )
        if verdict is not TokenCheck.OK:
            return StartRejected(f"stream token {verdict.value}")
        agent = state.agents.by_key(key)
        if agent is None:
            return StartRejected(f"agent {key!r} no longer configured")
        return StartAuthorized(agent)

    return authorize


async def media_stream(state: AppState) -> Response | None:
    settings = state.settings
    check = check_stream_upgrade(settings, websocket.headers, websocket.query_string)
    if not check.allowed:
        log.warning("media stream upgrade rejected: signature %s", check.value)
        return Response("Forbidden\n", status=403, mimetype="text/plain")
    await websocket.accept()

    async def open_realtime(model: str) -> RealtimeSocket:
        return await connect(
            settings.realtime_connect_url(model),
            additional_headers=settings.realtime_auth_headers,
            max_size=MAX_MODEL_MESSAGE_BYTES,
            compression=None,  # base64 audio barely deflates; compressing it costs CPU on every frame
            open_timeout=None,  # the bridge times the whole connect
        )

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
    bridge = Bridge(
        call,
        QuartTwilioSocket(),
        open_realtime,
        authorizer(state),
        recorder=recorder,
        connect_timeout_s=settings.model_connect_timeout_s,
        log_payloads=settings.log_payloads,
    )
    await bridge.run()
    return None
