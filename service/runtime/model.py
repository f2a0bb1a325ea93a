"""The model socket: a WebSocket client to the Realtime API on a plain asyncio connection.

:func:`open_model` connects (TCP, TLS for ``wss://``), performs the WebSocket handshake with the given
headers and no compression (base64 audio barely deflates; compressing it costs CPU on every frame), and
then hands every message to ``on_message`` as it arrives, in the event loop's callback: no task, no
queue. The end of the socket is reported once through ``on_close``. A refused handshake raises
:class:`HandshakeRefused` with the HTTP status; a connection that cannot be made raises ``OSError``;
the caller bounds the whole with a timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import cast

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.uri import parse_uri

from service.runtime.wsock import OnClose, OnMessage, WebSocket

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""An audio delta is tens of kB; the API allows events up to 15 MiB."""


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _ModelProtocol(asyncio.Protocol):
    def __init__(
        self, url: str, headers: Mapping[str, str], on_message: OnMessage, on_close: OnClose
    ) -> None:
        self._uri = parse_uri(url)
        self._headers = headers
        self._on_message = on_message
        self._on_close = on_close
        self.ws: WebSocket | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        protocol = ClientProtocol(self._uri, extensions=None, max_size=MAX_MESSAGE_BYTES)
        request = protocol.connect()
        for name, value in self._headers.items():
            request.headers[name] = value
        protocol.send_request(request)
        self.ws = WebSocket(protocol, transport, self._on_message, self._on_close)
        self.ws.flush()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        if self.handshake.done():
            ws.receive(data)
            return
        protocol = ws.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        if not events:
            return
        response, frames = events[0], events[1:]
        if not isinstance(response, Response) or protocol.handshake_exc is not None:
            status = response.status_code if isinstance(response, Response) else 0
            self.handshake.set_exception(HandshakeRefused(status))
            ws.abort()
            return
        self.handshake.set_result(None)
        ws.handle(frames)  # frames that came with the handshake response

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("connection lost during the handshake"))
            return
        if self.ws is not None:
            self.ws.connection_lost()


class ModelSocket:
    """An open model socket: send text, close."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    def send_text(self, text: str) -> None:
        self._ws.send_text(text)

    def send_texts(self, texts: list[str]) -> None:
        self._ws.send_texts(texts)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._ws.close(code, reason)


async def open_model(
    url: str, headers: Mapping[str, str], on_message: OnMessage, on_close: OnClose
) -> ModelSocket:
    """Connect and complete the handshake; afterwards every message goes to ``on_message``."""
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context() if uri.secure else None
    transport, protocol = await loop.create_connection(
        lambda: _ModelProtocol(url, headers, on_message, on_close),
        uri.host,
        uri.port,
        ssl=context,
        server_hostname=uri.host if uri.secure else None,
    )
    try:
        await protocol.handshake
    except BaseException:
        transport.abort()
        raise
    assert protocol.ws is not None
    return ModelSocket(protocol.ws)
