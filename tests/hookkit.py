"""A real HTTP server on 127.0.0.1 that receives post-call webhooks (shared by the tests that need one)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from aiohttp import web


class WebhookReceiver:
    """Takes ``POST /calls`` and keeps each request's headers and raw body; answers ``statuses`` in turn
    (e.g. ``[503]``: fail the first delivery), then 204."""

    def __init__(self, statuses: Sequence[int] = ()) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 204)

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        """Until ``count`` requests have come (or ``timeout_s``: the caller's asserts then say what did)."""
        for _ in range(int(timeout_s / 0.02)):
            if len(self.received) >= count:
                return
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/calls", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/calls"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
