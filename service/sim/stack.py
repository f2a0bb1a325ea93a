"""The whole local stack in one process: the Realtime simulator and the real Dialtone server
(:class:`service.web.serving.Service`, as ``python -m service.serve`` runs it).

Used by ``make demo`` and by the end-to-end tests. Everything listens on 127.0.0.1 only::

    async with LocalStack(agents_file=...) as stack:
        record = await place_call(stack.http_base, auth_token=stack.auth_token,
                                  public_base_url=stack.public_base_url, script=[...])

Agents with HTTP tools (``fixtures/agents_tools.toml``) need a tool server and its URL: run a
:class:`service.sim.tools.ToolServer` and pass ``agents_file=agents_with_tools(tools.base_url, path)``
(the stack sets ``TOOLS_SIGNING_SECRET`` to :data:`TOOLS_SECRET`, the tool server's secret).

A test that drives the media stream by hand, message by message, uses the Twilio side's pieces here
instead (:func:`post_voice_webhook`, :func:`stream_signature`, :func:`start_message`, or the
:class:`LocalStack` methods that wrap them)::

    parameters = await stack.voice_webhook(call_sid)
    async with connect(stack.media_url, additional_headers=stack.stream_headers()) as ws:
        await ws.send(start_message(stream_sid, call_sid, parameters))
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from quart import Quart
from twilio.request_validator import RequestValidator

from service.agents import AgentStore
from service.config import Settings
from service.sim.lifecycle import Served
from service.sim.realtime_server import RealtimeSimulator
from service.web.app import create_app
from service.web.serving import Service

AUTH_TOKEN = "local-twilio-auth-token"
API_KEY = "sk-sim-test-key"
PUBLIC_BASE_URL = "https://dialtone.local.test"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
DEFAULT_AGENTS_FILE = FIXTURES / "agents.toml"
TOOLS_AGENTS_FILE = FIXTURES / "agents_tools.toml"
TOOLS_BASE_AS_WRITTEN = "http://127.0.0.1:8790"
"""The tool server's base URL in ``agents_tools.toml`` (the standalone tool server's default port)."""
TOOLS_SECRET = "local-tools-signing-secret"
ACCOUNT_SID = "AC" + "1" * 32
CALLER_NUMBER = "+15557654321"
VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"


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


def agents_with_tools(tools_base_url: str, path: Path) -> Path:
    """Write ``agents.toml`` followed by ``agents_tools.toml`` to ``path``, the tools' URLs pointing at
    the tool server at ``tools_base_url`` (``http://127.0.0.1:<port>``); return ``path``."""
    tools = TOOLS_AGENTS_FILE.read_text(encoding="utf-8").replace(TOOLS_BASE_AS_WRITTEN, tools_base_url)
    path.write_text(DEFAULT_AGENTS_FILE.read_text(encoding="utf-8") + "\n" + tools, encoding="utf-8")
    return path


def inbound_call_form(
    call_sid: str, *, to: str, from_: str = CALLER_NUMBER, account_sid: str = ACCOUNT_SID
) -> dict[str, str]:
    """The form fields Twilio posts to the voice webhook when a call to ``to`` starts ringing."""
    return {
        "CallSid": call_sid,
        "AccountSid": account_sid,
        "From": from_,
        "To": to,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }


def post_voice_webhook(
    http_base: str, auth_token: str, public_base_url: str, form: Mapping[str, str], *, timeout_s: float = 10.0
) -> dict[str, str]:
    """Post a signed Twilio voice webhook; return the ``<Parameter>``s of the TwiML's stream.

    The request goes to ``http_base`` (the server as it listens, e.g. ``http://127.0.0.1:8080``) and is
    signed, as Twilio signs it, over ``public_base_url`` (the URL the server is configured to be reached
    at). The parameters (the agent, the single-use stream token...) are what the ``start`` message must
    carry as ``customParameters``. Blocking: call it in a thread from async code.
    """
    signature = RequestValidator(auth_token).compute_signature(public_base_url + VOICE_PATH, dict(form))
    request = urllib.request.Request(
        http_base + VOICE_PATH,
        data=urlencode(form).encode(),
        headers={"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    with opener.open(request, timeout=timeout_s) as response:
        root = ET.fromstring(response.read().decode())
    return {p.get("name", ""): p.get("value", "") for p in root.iter("Parameter")}


def stream_signature(auth_token: str, public_base_url: str) -> str:
    """The ``X-Twilio-Signature`` of the media-stream websocket upgrade.

    Twilio signs the stream's public ``wss://`` URL (``public_base_url`` with ``https://`` turned into
    ``wss://``, then :data:`MEDIA_PATH`) with no parameters.
    """
    url = public_base_url.replace("https://", "wss://") + MEDIA_PATH
    return str(RequestValidator(auth_token).compute_signature(url, {}))


def start_message(
    stream_sid: str, call_sid: str, parameters: Mapping[str, str], *, account_sid: str = ACCOUNT_SID
) -> str:
    """Twilio's ``start`` message of an inbound mu-law stream, ``parameters`` as its ``customParameters``."""
    start = {
        "streamSid": stream_sid,
        "accountSid": account_sid,
        "callSid": call_sid,
        "tracks": ["inbound"],
        "customParameters": dict(parameters),
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": start})


class LocalStack(Served):
    """Realtime simulator + Dialtone, both on 127.0.0.1, started and stopped together."""

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
        self.service: Service | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="dialtone-stack-"))
        self.database_url = f"sqlite:///{self._dir / 'dialtone.db'}"
        """Where the service keeps its records (a file of its own, unless ``env`` says otherwise)."""

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def media_url(self) -> str:
        """The media-stream websocket as the server listens (``ws://127.0.0.1:<port>/twilio/media``)."""
        return f"ws://127.0.0.1:{self.port}{MEDIA_PATH}"

    async def start(self) -> None:
        await self.model_peer.start()
        env = {
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_REALTIME_URL": self.model_peer.url,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "AGENTS_FILE": str(self.agents_file),
            "TOOLS_SIGNING_SECRET": TOOLS_SECRET,
            "DATABASE_URL": self.database_url,
            **self._env,
        }
        self.database_url = env["DATABASE_URL"]
        self.settings = Settings.from_env(env)
        self.app = create_app(self.settings, agents=AgentStore(self.settings.agents_file))
        self.service = Service(self.app, host="127.0.0.1", port=0)
        await self.service.start()
        self.port = self.service.port

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        if self.service is not None:
            await self.service.stop(drain_timeout_s=drain_timeout_s)
        await self.model_peer.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def call_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for :func:`service.sim.caller.place_call` against this stack."""
        return {"auth_token": self.auth_token, "public_base_url": self.public_base_url, **overrides}

    async def voice_webhook(self, call_sid: str, *, to: str = "+15551230002") -> dict[str, str]:
        """Post the signed voice webhook of an inbound call ``call_sid`` to ``to`` (by default the fixture
        number without a greeting); return the ``<Parameter>``s of the TwiML's stream.

        See :func:`post_voice_webhook`. The stream token among them can be used once, by a ``start``
        for that same ``call_sid``.
        """
        form = inbound_call_form(call_sid, to=to)
        return await asyncio.to_thread(
            post_voice_webhook, self.http_base, self.auth_token, self.public_base_url, form
        )

    def stream_headers(self) -> dict[str, str]:
        """Headers for opening :attr:`media_url` as Twilio would: the signed upgrade."""
        return {"X-Twilio-Signature": stream_signature(self.auth_token, self.public_base_url)}
