"""A local stand-in for the OpenAI Realtime API (GA), speaking its WebSocket protocol.

The demo and the end-to-end tests point the service at :class:`RealtimeSimulator` instead of
``wss://api.openai.com/v1/realtime``. It is a strict test double: what the real server rejects, it
rejects with the same ``error`` event (code, message, param), so that the bridge's mistakes show up
in tests. The wire facts come from ``shared/reference/realtime-ga.md`` and from a published live
capture of the GA server (September 2026), whose findings are repeated where they matter:

- The handshake always succeeds (101) on ``/v1/realtime`` (and Azure's ``/openai/v1/realtime``).
  Then, like the real server, a bad or missing key gets ``error`` + close 3000, a missing or
  unsupported ``?model=`` and the retired ``OpenAI-Beta: realtime=v1`` header get ``error`` + close
  4000; the close reason is ``<error.type>.<error.code>``. ``reject_in_handshake=True`` instead
  answers those with HTTP 401/400 before the upgrade (what a proxy in front of the API may do).
- Auth: ``Authorization: Bearer <key>`` or Azure's ``api-key: <key>``.
- ``session.created`` carries the GA default session (server VAD 0.5 / 300 ms / 200 ms).
  ``session.update`` is validated like GA (the whole update is discarded on the first problem) and
  merged; ``session.updated`` carries the full effective session.
- Server VAD is energy based, on 10 ms windows of the appended audio; ``audio_start_ms`` and
  ``audio_end_ms`` count ms of audio appended (the model's input clock). ``semantic_vad`` is
  approximated by server VAD. ``idle_timeout_ms`` is accepted but not simulated.
- There is no model: :class:`~service.sim.script.ReplyScript` chooses the clip each response
  plays and the caller's input transcription. Audio is streamed in chunks of random duration
  (``chunk_ms``) with transcript deltas, ``speed`` times faster than real time, in the GA event
  order. Output modality ``text`` is accepted but the simulator always speaks.
- Input transcription (``audio.input.transcription``): ``...input_audio_transcription.delta``
  events then ``...completed`` after each committed user audio item, the text from the script.
- Context replay: ``conversation.item.create`` of user (``input_text``) and assistant
  (``output_text``) messages; content parts are checked against the role. User messages count as
  user turns for the script.
- The 60 minute session cap is simulated: ``session.created.session.expires_at`` is
  ``floor(accept time + session_limit_s)`` (3600 s in GA); at the limit the socket is closed with
  1001 and the captured reason "Your session hit the maximum duration of 60 minutes." (whatever
  the configured limit), with no warning event; a response in progress is cut by the close. A
  short ``session_limit_s`` tests a rollover in seconds.
- Tools (the script's :class:`~service.sim.script.FunctionCall` and
  :class:`~service.sim.script.McpCall` replies): function calls in the GA event sequence, then the
  scripted follow-up once the client has sent the ``function_call_output`` (its ``call_id`` checked)
  and ``response.create``; MCP tool listings after ``session.update`` and MCP calls inside a
  response, followed by the answer's audio; ``session.tools`` and ``tool_choice`` validated.
  A :class:`~service.sim.script.Preamble` reply is two audio items in one response.
- Not simulated: MCP approvals (``require_approval`` other than "never" is accepted, but no
  ``mcp_approval_request`` is made), ``conversation.item.retrieve`` audio bytes,
  ``...input_audio_transcription.segment`` / ``.failed``, the ``session_expired`` error of the
  older (pre-GA) caps. A few error messages are inferred rather than captured; they are marked as
  such.

Faults (:class:`Fault`, for reconnect tests), each limited to some accepted sockets if wished:
a close with a code and reason or a TCP reset with no close frame, after N ms or at the first audio
delta of the k-th response; an ``error`` event at that point (a fatal code is followed by a close);
and the refusal of the first N connection attempts (HTTP 503, or a TCP reset during the handshake).
Tests can also act at any moment through :meth:`SimConnection.drop` and
:meth:`SimConnection.send_error`.

The simulator is split by concern:

- this module: the server (handshake, authentication, refusals, faults) and the command line;
- :mod:`service.sim.realtime_connection`: one socket (:class:`SimConnection`), its event dispatch;
- :mod:`service.sim.realtime_schema`: client event validation and the GA error wording;
- :mod:`service.sim.realtime_session`: the session object (defaults, updates) and audio formats;
- :mod:`service.sim.vad`: the server VAD (pure: samples in, speech started / stopped out);
- :mod:`service.sim.realtime_conversation`: the items, item operations and token usage (pure);
- :mod:`service.sim.realtime_response`: one response streamed as GA events.

Observability: :attr:`RealtimeSimulator.connections` lists one :class:`SimConnection` per socket
with the client events received, the server events sent, the truncations performed, the responses,
the function calls made (with the output the client sent for each), the MCP calls and listings,
the generated ms per item and ``anomalies`` (things the real server may tolerate but that show a
client bug, e.g. an odd-length PCM16 append, or a scripted call to a tool the session does not
declare), and when and how each socket was accepted and ended (``accepted_at``, ``closed_at``,
``close_code``, ``aborted``, ``ended_by``).
:attr:`RealtimeSimulator.attempts` and :attr:`RealtimeSimulator.refused` count the handshakes.

Run standalone: ``python -m service.sim.realtime_server --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import string
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from service.sim.lifecycle import Served
from service.sim.realtime_connection import FATAL_CLOSE_CODES, MIN_COMMIT_MS, SimConnection, reset_transport
from service.sim.realtime_conversation import (
    AUDIO_TOKENS_IN_PER_S,
    AUDIO_TOKENS_OUT_PER_S,
    RATE_LIMIT_TOKENS,
    Truncation,
)
from service.sim.realtime_response import FunctionCallRecord, McpCallRecord, ResponseRecord
from service.sim.realtime_schema import MODEL_RATE_HZ, SUPPORTED_TYPES, Json, Problem, Validator
from service.sim.realtime_session import (
    DEFAULT_INSTRUCTIONS,
    G711_BYTES_PER_MS,
    PCM_BYTES_PER_MS,
    SESSION_LIFETIME_S,
    SESSION_LIMIT_REASON,
    default_session,
    default_turn_detection,
    encode_output,
    merge_session,
)
from service.sim.script import Clip, ReplyScript
from service.sim.vad import SEMANTIC_SILENCE_MS, VAD_FLOOR_DBFS, VAD_MIN_SPEECH_MS, VAD_SPAN_DB, VAD_WINDOW_MS

# Everything this module defined before it was split stays importable from here.
__all__ = [
    "AUDIO_TOKENS_IN_PER_S",
    "AUDIO_TOKENS_OUT_PER_S",
    "DEFAULT_INSTRUCTIONS",
    "FATAL_CLOSE_CODES",
    "G711_BYTES_PER_MS",
    "KNOWN_MODELS",
    "MIN_COMMIT_MS",
    "MODEL_RATE_HZ",
    "PATHS",
    "PCM_BYTES_PER_MS",
    "RATE_LIMIT_TOKENS",
    "SEMANTIC_SILENCE_MS",
    "SESSION_LIFETIME_S",
    "SESSION_LIMIT_REASON",
    "SUPPORTED_TYPES",
    "VAD_FLOOR_DBFS",
    "VAD_MIN_SPEECH_MS",
    "VAD_SPAN_DB",
    "VAD_WINDOW_MS",
    "Fault",
    "FunctionCallRecord",
    "Json",
    "McpCallRecord",
    "Problem",
    "RealtimeSimulator",
    "ResponseRecord",
    "SimConnection",
    "Truncation",
    "Validator",
    "default_session",
    "default_turn_detection",
    "main",
    "merge_session",
]

logger = logging.getLogger(__name__)

PATHS = ("/v1/realtime", "/openai/v1/realtime")
KNOWN_MODELS = frozenset({
    "gpt-realtime", "gpt-realtime-1.5", "gpt-realtime-2", "gpt-realtime-2.1", "gpt-realtime-2.1-mini",
    "gpt-realtime-2025-08-28", "gpt-realtime-mini", "gpt-realtime-mini-2025-10-06",
    "gpt-realtime-mini-2025-12-15", "gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview",
    "gpt-audio-1.5", "gpt-audio-mini",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection.

    How a socket ends: with a close frame ``close_code`` / ``close_reason``, or (``abort``) with a
    TCP reset and no close frame. When: ``close_after_ms`` after the socket was accepted, and/or
    right after the first audio delta of the ``close_on_response``-th response of the socket
    (1-based). ``error_on_response``: at that same point of the k-th response, send an ``error``
    event (``error_code``, ``error_message``, ``error_type``; the response goes on, but a fatal code
    such as ``invalid_api_key`` is followed by a close as in the handshake checks). The default
    message is the API's generic server error text (inferred for the Realtime API).
    ``connections``: the 0-based indexes of the accepted sockets these faults apply to (None: all).

    ``refuse_connects``: refuse the first N connection attempts (they are not accepted sockets and
    take no index), with ``refuse_with`` ``"http_503"`` (a websockets client raises
    ``InvalidStatus``) or ``"tcp_reset"`` (a reset before any HTTP response).
    """

    close_after_ms: int | None = None
    close_on_response: int | None = None
    close_code: int = 1011
    close_reason: str = "simulated server failure"
    abort: bool = False
    connections: frozenset[int] | None = None
    error_on_response: int | None = None
    error_code: str | None = "server_error"
    error_message: str = "The server had an error while processing your request. Sorry about that!"
    error_type: str = "server_error"
    refuse_connects: int = 0
    refuse_with: Literal["http_503", "tcp_reset"] = "http_503"

    def applies_to(self, index: int) -> bool:
        """Whether the socket faults apply to the ``index``-th accepted socket."""
        return self.connections is None or index in self.connections


def _mask(key: str) -> str:
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 8 else "***"


class RealtimeSimulator(Served):
    """The simulated Realtime server. ``async with RealtimeSimulator() as sim:`` starts it on
    127.0.0.1 with a free port; ``sim.url`` is the ``ws://`` URL (without ``?model=``).

    ``speed``: how much faster than real time audio is streamed (<= 0: no pause at all).
    ``chunk_ms``: the range of audio delta durations. ``first_delta_delay_ms``: wall time between
    ``response.created`` and the first output item. ``models``: accepted ``?model=`` values (None:
    any). ``seed``: makes ids and chunk sizes reproducible. ``session_limit_s``: the session's
    lifetime (GA: 3600 s), after which the server closes the socket with 1001.
    ``mcp_list_failures``: the MCP server labels whose tool listing fails (``mcp_list_tools.failed``).

    ``attempts`` holds the wall time (epoch seconds) of every handshake request, refused or not;
    ``refused`` counts those refused by ``fault.refuse_connects``.
    """

    def __init__(
        self,
        script: ReplyScript | None = None,
        *,
        api_key: str = "sk-sim-test-key",
        speed: float = 5.0,
        chunk_ms: tuple[int, int] = (40, 200),
        first_delta_delay_ms: int = 50,
        models: frozenset[str] | None = KNOWN_MODELS,
        fault: Fault | None = None,
        reject_in_handshake: bool = False,
        seed: int | None = None,
        session_limit_s: float = float(SESSION_LIFETIME_S),
        mcp_list_failures: frozenset[str] = frozenset(),
        tokens_per_minute: int = RATE_LIMIT_TOKENS,
    ) -> None:
        self.script = script if script is not None else ReplyScript.default()
        self.api_key = api_key
        self.speed = speed
        self.chunk_ms = chunk_ms
        self.first_delta_delay_ms = first_delta_delay_ms
        self.models = models
        self.fault = fault if fault is not None else Fault()
        self.reject_in_handshake = reject_in_handshake
        self.session_limit_s = session_limit_s
        self.mcp_list_failures = mcp_list_failures
        self.tokens_per_minute = tokens_per_minute
        """The account's token budget, shared by every session and refilled each minute (as OpenAI's
        rate limits are): ``rate_limits.updated`` reports what is left and when it refills."""
        self._window_start = time.monotonic()
        self._spent = 0
        self.rng = random.Random(seed)
        self.connections: list[SimConnection] = []
        self.attempts: list[float] = []
        self.refused = 0
        self._server: Server | None = None
        self._port = 0
        self._host = "127.0.0.1"
        self._changed = asyncio.Condition()
        self._encoded: dict[tuple[str, str], bytes] = {}

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self._port}{PATHS[0]}"

    def charge(self, tokens: int) -> tuple[int, float]:
        """Spend ``tokens`` of the account's budget: (tokens remaining, seconds until it refills)."""
        now = time.monotonic()
        if now - self._window_start >= 60.0:
            self._window_start, self._spent = now, 0
        self._spent += tokens
        remaining = max(self.tokens_per_minute - self._spent, 0)
        return remaining, round(60.0 - (now - self._window_start), 3)

    def new_id(self, prefix: str) -> str:
        return prefix + "".join(self.rng.choices(string.ascii_letters + string.digits, k=21))

    def encoded(self, clip: Clip, fmt: Json) -> bytes:
        key = (clip.name, str(fmt.get("type")))
        if key not in self._encoded:
            self._encoded[key] = encode_output(clip, fmt)
        return self._encoded[key]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await serve(
            self._handle, host, port, process_request=self._process_request, max_size=32 * 2**20
        )
        self._host = host
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        logger.debug("= realtime simulator on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_for_connection(self, index: int = 0, timeout_s: float = 5.0) -> SimConnection:
        """The ``index``-th connection, once it has been accepted."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.connections) > index)
        return self.connections[index]

    def check_request(self, request: Request) -> tuple[Problem | None, int]:
        """What the GA server says about a connection request: (problem, close code)."""
        headers = request.headers
        key = headers.get("api-key")
        authorization = headers.get("Authorization", "")
        if key is None and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        if not key:
            return Problem(None, "Missing bearer or basic authentication in header"), 3000
        if key != self.api_key:
            message = (
                f"Incorrect API key provided: {_mask(key)}. "
                "You can find your API key at https://platform.openai.com/account/api-keys."
            )
            return Problem("invalid_api_key", message), 3000
        if "realtime=v1" in headers.get("OpenAI-Beta", ""):
            message = "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
            return Problem("beta_api_shape_disabled", message), 4000
        model = parse_qs(urlsplit(request.path).query).get("model", [""])[0]
        if not model:
            message = (
                "You must provide a model parameter, for example "
                "wss://api.openai.com/v1/realtime?model=gpt-realtime-1.5"
            )
            return Problem("missing_model", message), 4000
        if self.models is not None and model not in self.models:
            return Problem("invalid_model", f'Model "{model}" is not supported in realtime mode.'), 4000
        return None, 1000

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.attempts.append(time.time())
        if self.refused < self.fault.refuse_connects:
            self.refused += 1
            logger.debug("= refusing connection attempt %s (%s)", len(self.attempts), self.fault.refuse_with)
            if self.fault.refuse_with == "tcp_reset":
                reset_transport(connection.transport)  # the response below is never sent
            body = {"error": {"type": "server_error", "code": None, "param": None,  # inferred body
                              "message": "The server is overloaded. Please try again later."}}  # fmt: skip
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, json.dumps(body) + "\n")
        if urlsplit(request.path).path not in PATHS:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if self.reject_in_handshake:
            problem, code = self.check_request(request)
            if problem is not None:
                status = HTTPStatus.UNAUTHORIZED if code == 3000 else HTTPStatus.BAD_REQUEST
                body = {"error": {"type": problem.type, "code": problem.code, "message": problem.message,
                                  "param": problem.param}}  # fmt: skip
                return connection.respond(status, json.dumps(body) + "\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        model = parse_qs(urlsplit(ws.request.path).query).get("model", [""])[0]
        conn = SimConnection(self, ws, model, index=len(self.connections))
        self.connections.append(conn)
        async with self._changed:
            self._changed.notify_all()
        problem, close_code = self.check_request(ws.request)
        await conn.run(problem, close_code)


async def _serve(args: argparse.Namespace) -> None:
    sim = RealtimeSimulator(
        api_key=args.api_key, speed=args.speed, seed=args.seed, session_limit_s=args.session_limit_s
    )
    await sim.start(args.host, args.port)
    logger.info("Realtime simulator listening on %s?model=gpt-realtime", sim.url)
    try:
        await asyncio.Future()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the OpenAI Realtime (GA) simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="sk-sim-test-key", help="the key clients must present")
    parser.add_argument("--speed", type=float, default=5.0, help="times faster than real time")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--session-limit-s", type=float, default=float(SESSION_LIFETIME_S),
                        help="close each session (1001) after this many seconds")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
