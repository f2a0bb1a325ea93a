"""The whole local stack in one process: the Realtime simulator and the real Dialtone server (hypercorn).

Used by ``make demo`` and by the end-to-end tests. Everything listens on 127.0.0.1 only::

    async with LocalStack(agents_file=...) as stack:
        record = await place_call(stack.http_base, auth_token=stack.auth_token,
                                  public_base_url=stack.public_base_url, script=[...])
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from service.agents import AgentStore
from service.config import Settings
from service.sim.realtime_server import RealtimeSimulator
from service.web import wsfix
from service.web.app import create_app

AUTH_TOKEN = "local-twilio-auth-token"
API_KEY = "sk-sim-test-key"
PUBLIC_BASE_URL = "https://dialtone.local.test"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
DEFAULT_AGENTS_FILE = FIXTURES / "agents.toml"


class RealtimePeer(Protocol):
    """What the stack needs of the model side: the simulator, or a replay server."""

    @property
    def url(self) -> str: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalStack:
    """Realtime simulator + Dialtone under hypercorn, both on 127.0.0.1, started and stopped together."""

    def __init__(
        self,
        *,
        agents_file: Path = DEFAULT_AGENTS_FILE,
        env: Mapping[str, str] | None = None,
        sim: RealtimeSimulator | None = None,
        model_peer: RealtimePeer | None = None,
    ) -> None:
        self.sim = sim if sim is not None else RealtimeSimulator(api_key=API_KEY)
        self.model_peer: RealtimePeer = model_peer if model_peer is not None else self.sim
        self.agents_file = agents_file
        self._env = dict(env or {})
        self.port = 0
        self.auth_token = AUTH_TOKEN
        self.public_base_url = PUBLIC_BASE_URL
        self.settings: Settings | None = None
        self.app: Quart | None = None
        self._shutdown = asyncio.Event()
        self._server: asyncio.Task[None] | None = None

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.model_peer.start()
        self.port = free_port()
        env = {
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_REALTIME_URL": self.model_peer.url,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "AGENTS_FILE": str(self.agents_file),
            "PORT": str(self.port),
            **self._env,
        }
        self.settings = Settings.from_env(env)
        self.app = create_app(self.settings, agents=AgentStore(self.settings.agents_file))
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1.0
        wsfix.install()  # as service.serve does
        self._server = asyncio.create_task(serve(self.app, config, shutdown_trigger=self._shutdown.wait))
        await self._wait_listening()

    async def _wait_listening(self) -> None:
        for _ in range(200):
            if self._server is not None and self._server.done():
                self._server.result()  # raises what stopped it
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise TimeoutError(f"hypercorn did not listen on 127.0.0.1:{self.port}")

    async def stop(self) -> None:
        self._shutdown.set()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server, 5)
            except TimeoutError:
                self._server.cancel()
        await self.model_peer.stop()

    async def __aenter__(self) -> LocalStack:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def call_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for :func:`service.sim.caller.place_call` against this stack."""
        return {"auth_token": self.auth_token, "public_base_url": self.public_base_url, **overrides}
