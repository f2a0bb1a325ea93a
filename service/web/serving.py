"""The whole service on one port: the front server (media streams) and hypercorn (the Quart app).

    service = Service(create_app(settings), host="0.0.0.0", port=8080)
    await service.start()
    ...
    await service.stop(drain_timeout_s=60)   # refuse new calls, let live ones finish (60 s at most),
                                             # end the rest politely, stop listening, write the records

Used by :mod:`service.serve` (production), :mod:`service.sim.stack` (the demo and the end-to-end tests)
and the benchmarks, so that all of them run the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from quart import Quart

from service.config import MEDIA_PATH
from service.runtime.server import FrontServer, serve_app, wait_for_socket
from service.web.app import state_of
from service.web.media import MediaEndpoint

APP_SOCKET_NAME = "app.sock"
DRAIN_POLL_S = 0.1
ACTION_GRACE_S = 3.0
"""After ending the calls that outlived the drain: how long Twilio may take to ask for their answers."""
ANALYSIS_GRACE_S = 5.0
"""Then how long the post-call analyses still running may take. Short on purpose: the platform's grace
period covers the drain plus a few seconds (infra/README.md), and a process killed then would lose the
records waiting for their analyses. The analyses of calls ended during the drain have had the drain's
time; those cut short are recorded all the same, with ``analysis.error``."""
log = logging.getLogger(__name__)


class Service:
    """The app under hypercorn on a private Unix socket, and the public port in front of it."""

    def __init__(self, app: Quart, *, host: str, port: int, reuse_port: bool = False) -> None:
        self.app = app
        self.host = host
        self._port = port
        self._reuse_port = reuse_port
        self.media = MediaEndpoint(state_of(app))
        self.ops = state_of(app).ops
        self.drain_cut = asyncio.Event()
        """Set it to end a drain early (a second SIGTERM)."""
        self._dir: Path | None = None
        self._front: FrontServer | None = None
        self._app_stop = asyncio.Event()
        self._app_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._front.port if self._front is not None else self._port

    async def start(self) -> None:
        await self.ops.start()
        self._dir = Path(tempfile.mkdtemp(prefix="dialtone-"))
        app_socket = self._dir / APP_SOCKET_NAME
        self._app_task = asyncio.create_task(serve_app(self.app, app_socket, self._app_stop))
        await wait_for_socket(app_socket, self._app_task)
        self._front = FrontServer({MEDIA_PATH: self.media.connection}, str(app_socket))
        await self._front.start(self.host, self._port, reuse_port=self._reuse_port)

    async def drain(self, timeout_s: float) -> None:
        """Take no new call (the webhook refuses, /readyz says so); let the live ones go on for up to
        ``timeout_s``; end the rest politely (each is told the line closes) and give Twilio a moment to
        fetch their ``<Connect action>`` answers. Last, wait for the post-call analyses still running
        (their records wait for them)."""
        self.ops.capacity.draining = True
        bridges = self.media.bridges
        if bridges and timeout_s > 0:
            log.info("draining: %d live call(s), waiting up to %.0f s", len(bridges), timeout_s)
            await self._wait_until(lambda: not bridges or self.drain_cut.is_set(), timeout_s)
        if bridges:
            log.warning("drain over: ending %d call(s) still live", len(bridges))
            ended = [bridge.call.call_sid for bridge in list(bridges)]
            for bridge in list(bridges):
                bridge.shut_down()
            decisions = self.ops.decisions
            await self._wait_until(lambda: not any(s and decisions.get(s) for s in ended), ACTION_GRACE_S)
        if self.ops.analyses_pending:
            log.info("draining: waiting for %d post-call analyses", self.ops.analyses_pending)
            await self._wait_until(
                lambda: not self.ops.analyses_pending or self.drain_cut.is_set(), ANALYSIS_GRACE_S
            )

    async def _wait_until(self, done: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``done`` until it holds, the drain is cut short or ``timeout_s`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done() and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain_cut.wait(), DRAIN_POLL_S)

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Drain (see :meth:`drain`), stop listening, stop hypercorn, then deliver the webhooks and
        write the records still queued."""
        await self.drain(drain_timeout_s)
        if self._front is not None:
            self._front.stop_listening()
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
        await self.ops.close()
