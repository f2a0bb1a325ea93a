"""The whole service on one port: the front server (media streams) and hypercorn (the Quart app).

    service = Service(create_app(settings), host="0.0.0.0", port=8080)
    await service.start()
    ...
    await service.stop()      # stop listening, end the calls still running, stop hypercorn

Used by :mod:`service.serve` (production), :mod:`service.sim.stack` (the demo and the end-to-end tests)
and the benchmarks, so that all of them run the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

from quart import Quart

from service.config import MEDIA_PATH
from service.runtime.server import FrontServer, serve_app, wait_for_socket
from service.web.app import state_of
from service.web.media import MediaEndpoint

APP_SOCKET_NAME = "app.sock"


class Service:
    """The app under hypercorn on a private Unix socket, and the public port in front of it."""

    def __init__(self, app: Quart, *, host: str, port: int, reuse_port: bool = False) -> None:
        self.app = app
        self.host = host
        self._port = port
        self._reuse_port = reuse_port
        self.media = MediaEndpoint(state_of(app))
        self._dir: Path | None = None
        self._front: FrontServer | None = None
        self._app_stop = asyncio.Event()
        self._app_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._front.port if self._front is not None else self._port

    async def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="dialtone-"))
        app_socket = self._dir / APP_SOCKET_NAME
        self._app_task = asyncio.create_task(serve_app(self.app, app_socket, self._app_stop))
        await wait_for_socket(app_socket, self._app_task)
        self._front = FrontServer({MEDIA_PATH: self.media.connection}, str(app_socket))
        await self._front.start(self.host, self._port, reuse_port=self._reuse_port)

    async def stop(self) -> None:
        """Stop listening, end the live calls (their summaries are logged), then stop hypercorn."""
        if self._front is not None:
            self._front.stop_listening()
        for bridge in list(self.media.bridges):
            bridge.hang_up()
        if self._front is not None:
            await self._front.stop()
        await self.media.close()
        self._app_stop.set()
        if self._app_task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._app_task
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
