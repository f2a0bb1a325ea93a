"""The public port: the media stream on a lean path, everything else to the Quart app under hypercorn.

    front = FrontServer({MEDIA_PATH: endpoint.connection}, upstream=app_socket_path)
    await front.start("0.0.0.0", 8080)

Each TCP connection is read until its first request head is complete. A request for a path in
``routes`` (the media stream's WebSocket) is handed, bytes and transport, to that route's handler: from
then on every message goes from ``data_received`` through the WebSocket protocol to the call, in one
callback (:mod:`service.runtime.bridge`). Any other connection is relayed byte for byte to hypercorn,
which serves the Quart app on a private Unix socket (:func:`serve_app`): webhooks, health, and anything
the app adds. So one port serves both, and the hot path pays for no framework.

Limits: a request head must be complete within :data:`HEAD_TIMEOUT_S` and :data:`MAX_HEAD_BYTES`
(else 408 / 431 and the connection is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, cast

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16 * 1024
_HEAD_END = b"\r\n\r\n"


def _reply(transport: asyncio.Transport, status: bytes) -> None:
    """An empty HTTP response with this status, then close."""
    if not transport.is_closing():
        transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        transport.close()


class Handler(Protocol):
    """What takes over a connection once its first request head has been read."""

    def data_received(self, data: bytes) -> None: ...
    def connection_lost(self) -> None: ...


Route = Callable[[asyncio.Transport], Handler]


class _Relay:
    """A connection relayed to the app's hypercorn, both ways, with flow control."""

    def __init__(self, client: asyncio.Transport, upstream_path: str) -> None:
        self._client = client
        self._upstream: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._task = asyncio.get_running_loop().create_task(self._connect(upstream_path))

    async def _connect(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_unix_connection(lambda: _Upstream(self._client), path)
        except OSError:
            log.error("the app's server is not reachable: closing a client connection")
            _reply(self._client, b"503 Service Unavailable")
            return
        self._upstream = transport
        if self._pending:
            transport.write(b"".join(self._pending))
            self._pending.clear()
        if self._client.is_closing():
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._upstream is None:
            self._pending.append(data)
        else:
            self._upstream.write(data)

    def pause_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.resume_reading()

    def connection_lost(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        else:
            self._task.cancel()


class _Upstream(asyncio.Protocol):
    """hypercorn's side of a relayed connection: its bytes go back to the client."""

    def __init__(self, client: asyncio.Transport) -> None:
        self._client = client
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._client.write(data)

    def pause_writing(self) -> None:
        self._client.pause_reading()

    def resume_writing(self) -> None:
        self._client.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.close()


class _Connection(asyncio.Protocol):
    """One TCP connection to the public port, until its first request head says where it goes."""

    def __init__(self, server: FrontServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._handler: Handler | _Relay | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._transport = transport
        self._server.connections.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HEAD_TIMEOUT_S, self._refuse, b"408 Request Timeout")

    def data_received(self, data: bytes) -> None:
        handler = self._handler
        if handler is not None:
            handler.data_received(data)
            return
        head = self._head
        head += data
        if head.find(_HEAD_END, max(0, len(head) - len(data) - 3)) < 0:
            if len(head) > MAX_HEAD_BYTES:
                self._refuse(b"431 Request Header Fields Too Large")
            return
        if self._timer is not None:
            self._timer.cancel()
        transport = self._transport
        assert transport is not None
        line = bytes(head[: head.find(b"\r\n")]).split(b" ")
        path = line[1].partition(b"?")[0] if len(line) == 3 else b""
        route = self._server.routes.get(path)
        self._handler = route(transport) if route is not None else _Relay(transport, self._server.upstream)
        buffered, self._head = bytes(head), bytearray()
        self._handler.data_received(buffered)

    def _refuse(self, status: bytes) -> None:
        if self._transport is not None:
            _reply(self._transport, status)

    def pause_writing(self) -> None:
        if isinstance(self._handler, _Relay):
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if isinstance(self._handler, _Relay):
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._server.connections.discard(self)
        if self._handler is not None:
            self._handler.connection_lost()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class FrontServer:
    """The listening socket and its connections."""

    def __init__(self, routes: Mapping[str, Route], upstream: str) -> None:
        self.routes = {path.encode(): route for path, route in routes.items()}
        self.upstream = upstream
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_port=reuse_port or None, backlog=1024
        )

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        self.stop_listening()
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()


async def serve_app(
    app: Quart, socket_path: Path, shutdown: asyncio.Event, *, graceful_s: float = 5.0
) -> None:
    """Serve the Quart app with hypercorn on a private Unix socket until ``shutdown`` is set."""
    config = Config()
    config.bind = [f"unix:{socket_path}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = graceful_s
    await serve(app, config, shutdown_trigger=shutdown.wait)


async def wait_for_socket(path: Path, server_task: asyncio.Task[None], timeout_s: float = 10.0) -> None:
    """Until something accepts connections on the Unix socket ``path`` (or its server task fails)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if server_task.done():
                server_task.result()  # raises what stopped it
            try:
                _, writer = await asyncio.open_unix_connection(str(path))
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
