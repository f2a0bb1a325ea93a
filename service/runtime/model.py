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
import os
import random
import ssl
import struct
from collections.abc import Mapping
from typing import cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from service.runtime.wsock import OnClose, OnMessage, WebSocket

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""An audio delta is tens of kB; the API allows events up to 15 MiB."""


try:
    from websockets.speedups import apply_mask  # C, as websockets itself uses when it is built
except ImportError:  # pragma: no cover - a build without the extension
    from websockets.utils import apply_mask

_MASK_KEYS = random.Random(os.urandom(16))


class _ClientProtocol(ClientProtocol):
    """``websockets``' client protocol, with a cheaper masking key for text frames (a fast path that
    bends the obvious way: read this before changing it).

    RFC 6455 §5.3 asks for unpredictable masking keys so that a hostile script in a browser cannot choose
    the bytes that intermediaries see (cache poisoning). This client sends only messages our own code
    builds, so keys from a PRNG seeded from the OS serve the same purpose; ``websockets`` instead asks
    the OS for 4 bytes per frame (a ``getrandom`` system call), which was about 5 % of a call's CPU.
    Control frames, and frames when an extension is negotiated (never: compression is off), keep the
    library's own path.
    """

    def send_frame(self, frame: Frame) -> None:
        if frame.opcode is not Opcode.TEXT or self.extensions:
            super().send_frame(frame)
            return
        data = frame.data
        length = len(data)
        head1 = (0x80 if frame.fin else 0) | Opcode.TEXT
        if length < 126:
            header = struct.pack("!BB", head1, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", head1, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", head1, 0x80 | 127, length)
        key = _MASK_KEYS.getrandbits(32).to_bytes(4, "big")
        self.writes.append(header + key + apply_mask(data, key))


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
        protocol = _ClientProtocol(self._uri, extensions=None, max_size=MAX_MESSAGE_BYTES)
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
