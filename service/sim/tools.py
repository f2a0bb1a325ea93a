"""A small real HTTP tool server on 127.0.0.1, for the tests and the demo: a restaurant's bookings API
that checks every request's signature exactly as Dialtone signs its tool calls.

The signing scheme (what an agent's HTTP tool receives)::

    POST <tool url>
    Content-Type: application/json
    X-Dialtone-Timestamp: 1767225600                 (unix seconds, a decimal string)
    X-Dialtone-Signature: <hex HMAC-SHA256(secret, timestamp + "." + raw body)>

    {"call_sid": "CA…", "call_id": "call_…", "agent": "…", "from": "+1…", "to": "+1…",
     "tool": "check_availability", "arguments": {"date": "2026-12-24", "party_size": 4}}

``call_id`` is the model's id of this function call, unique per call: a tool that changes something (a
booking) can use it to recognise a request it has already handled.

:func:`verify_signature` is the check a tool server should make; it is written to be copied as is (it
needs only the standard library). The server here refuses, before reading the body as JSON: a request
without the two headers, a timestamp that is not a decimal string or is more than ``window_s``
(300 s) from its clock, and a bad signature with 401; a (timestamp, signature) pair it has already
accepted (a replay) with 409. Then a body that is not a JSON object with ``call_sid``, ``agent``,
``from``, ``to`` (strings), ``tool`` (a string) and ``arguments`` (an object, or a string holding a
JSON object) gets 400. Every request is recorded (:class:`ToolRequest`: headers, raw body, verdict,
status).

Routes (POST; the ``arguments`` are the tool's):

- ``/availability`` ``{date: "YYYY-MM-DD", party_size: 1..20}`` -> ``{"date", "party_size",
  "available": ["18:00", …]}`` (fewer times for bigger parties, none above 8, booked ones removed).
- ``/book`` ``{date, time, party_size, name?}`` -> ``{"booked": true, "booking_id": "BK-1001", …}``,
  or ``{"booked": false, "reason": …, "available": […]}`` when the time is not free.
- ``/echo`` (and any path under ``/echo/``, so that each can be given its own behaviour) ->
  ``{"arguments"}``.

Invalid arguments get 422 ``{"error": …}``; an unknown path 404. Per path, a test can make the
server misbehave (:class:`Behaviour`): answer late (``delay_ms``), fail with a status, answer a body
that is not JSON, answer an oversized body (e.g. 20 KB), or close the connection without answering.

Run standalone: ``python -m service.sim.tools --port 8790 --secret s3cret``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from service.sim.lifecycle import Served

logger = logging.getLogger(__name__)

Json = dict[str, Any]
TIMESTAMP_HEADER = "X-Dialtone-Timestamp"
SIGNATURE_HEADER = "X-Dialtone-Signature"
WINDOW_S = 300
BODY_KEYS = ("call_sid", "agent", "from", "to", "tool", "arguments")
TIMES = ("18:00", "18:30", "19:00", "19:30", "20:30", "21:00")
Verdict = Literal[
    "accepted", "missing_headers", "bad_timestamp", "stale", "bad_signature", "replayed", "bad_body",
    "bad_method", "not_found",
]  # fmt: skip


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """``hex(HMAC-SHA256(secret, timestamp + "." + body))``: the ``X-Dialtone-Signature`` value."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes, timestamp: str, body: bytes, signature: str, now: float, window_s: float = 300
) -> bool:
    """Whether a Dialtone tool call is authentic and fresh. Copy this into a tool server::

        import hashlib, hmac

        def verify_signature(secret, timestamp, body, signature, now, window_s=300):
            if not (timestamp.isascii() and timestamp.isdigit()):
                return False
            if abs(now - int(timestamp)) > window_s:
                return False
            key = secret.encode() if isinstance(secret, str) else secret
            expected = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            return hmac.compare_digest(expected.encode(), signature.strip().lower().encode())

    ``timestamp`` and ``signature`` are the ``X-Dialtone-Timestamp`` and ``X-Dialtone-Signature``
    headers, ``body`` the raw request body (bytes, before any JSON parsing), ``now`` the server's
    unix time. The comparison is constant-time. To refuse replays as well, remember the accepted
    (timestamp, signature) pairs for ``window_s`` and refuse one seen before.
    """
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if abs(now - int(timestamp)) > window_s:
        return False
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode())


def signed_headers(secret: str | bytes, body: bytes, now: float) -> dict[str, str]:
    """The headers Dialtone sends with ``body`` at unix time ``now`` (for tests and the demo)."""
    timestamp = str(int(now))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the server answers (valid, signed) requests to one path. ``delay_ms``: wait first.
    ``close``: close the connection without answering. ``status``: answer that status with
    ``{"error": …}``. ``non_json``: answer an HTML page (status 200, or ``status``). ``oversized_bytes``:
    answer valid JSON of about that many bytes. ``body``: answer this JSON instead of the route's."""

    delay_ms: int = 0
    close: bool = False
    status: int | None = None
    non_json: bool = False
    oversized_bytes: int | None = None
    body: Json | None = None


@dataclass(slots=True)
class ToolRequest:
    """One request as received, and what the server made of it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = field(repr=False)
    received_at: float
    verdict: Verdict = "accepted"
    status: int = 0  # 0: no answer (the connection was closed)
    json: Json | None = None  # the body, once it has been read as a JSON object
    arguments: Json | None = None  # the tool's arguments, as an object
    arguments_as_string: bool = False  # ``arguments`` came as a JSON string
    response: bytes = field(default=b"", repr=False)
    done: bool = False  # answered, or dropped
    client_gone: bool = False  # the client closed the connection before the (delayed) answer was due

    def header(self, name: str) -> str | None:
        """A request header, whatever the case of its name."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


class ToolServer(Served):
    """The bookings API on 127.0.0.1. ``async with ToolServer("secret") as tools:`` starts it on a free
    port; ``tools.url("/availability")`` is a route's URL. ``clock`` is its notion of now (unix
    seconds), ``window_s`` how far a timestamp may be from it. ``behaviours`` maps a path to a
    :class:`Behaviour` (also :meth:`behave`). ``requests`` lists every request received; ``bookings``
    the bookings made (by id)."""

    def __init__(
        self,
        secret: str | bytes,
        *,
        behaviours: Mapping[str, Behaviour] | None = None,
        clock: Callable[[], float] = time.time,
        window_s: float = WINDOW_S,
    ) -> None:
        self.secret = secret
        self.behaviours: dict[str, Behaviour] = dict(behaviours or {})
        self.clock = clock
        self.window_s = window_s
        self.requests: list[ToolRequest] = []
        self.bookings: dict[str, Json] = {}
        self._seen: dict[tuple[str, str], float] = {}  # accepted (timestamp, signature) -> timestamp
        self._runner: web.AppRunner | None = None
        self._base = ""
        self._changed = asyncio.Condition()
        self._routes: dict[str, Callable[[Json], tuple[int, Json]]] = {
            "/availability": self._availability,
            "/book": self._book,
            "/echo": lambda arguments: (200, {"arguments": arguments}),
        }

    @property
    def base_url(self) -> str:
        return self._base

    def url(self, path: str) -> str:
        return self._base + path

    def behave(self, path: str, behaviour: Behaviour | None) -> None:
        """Set (or, with None, clear) how ``path`` answers."""
        if behaviour is None:
            self.behaviours.pop(path, None)
        else:
            self.behaviours[path] = behaviour

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self._base = f"http://{bound[0]}:{bound[1]}"
        logger.debug("= tool server on %s", self._base)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> list[ToolRequest]:
        """The requests, once at least ``count`` have been answered (or dropped)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: sum(r.done for r in self.requests) >= count)
        return self.requests

    # --- the request ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = ToolRequest(request.method, request.path, dict(request.headers), body, self.clock())
        self.requests.append(record)
        try:
            return await self._answer(request, record)
        finally:
            record.done = True
            async with self._changed:
                self._changed.notify_all()

    def _refuse(self, record: ToolRequest, verdict: Verdict, status: int, error: str) -> web.Response:
        record.verdict, record.status = verdict, status
        logger.debug("< tool %s %s: %s", record.method, record.path, verdict)
        return self._json(record, status, {"error": error})

    def _json(self, record: ToolRequest, status: int, payload: Json) -> web.Response:
        data = json.dumps(payload).encode()
        record.status, record.response = status, data
        return web.Response(status=status, body=data, content_type="application/json")

    async def _answer(self, request: web.Request, record: ToolRequest) -> web.StreamResponse:
        if request.method != "POST":
            return self._refuse(record, "bad_method", 405, "use POST")
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        signature = request.headers.get(SIGNATURE_HEADER)
        if timestamp is None or signature is None:
            return self._refuse(record, "missing_headers", 401, "unsigned request")
        if not (timestamp.isascii() and timestamp.isdigit()):
            return self._refuse(record, "bad_timestamp", 401, "bad timestamp")
        now = self.clock()
        if abs(now - int(timestamp)) > self.window_s:
            return self._refuse(record, "stale", 401, "timestamp outside the window")
        if not verify_signature(self.secret, timestamp, record.body, signature, now, self.window_s):
            return self._refuse(record, "bad_signature", 401, "bad signature")
        self._seen = {k: t for k, t in self._seen.items() if abs(now - t) <= self.window_s}
        key = (timestamp, signature.strip().lower())
        if key in self._seen:
            return self._refuse(record, "replayed", 409, "replayed request")
        self._seen[key] = int(timestamp)
        problem = self._read_body(record)
        if problem is not None:
            return self._refuse(record, "bad_body", 400, problem)
        route = self._routes.get(record.path)
        if route is None and record.path.startswith("/echo/"):
            route = self._routes["/echo"]
        if route is None:
            return self._refuse(record, "not_found", 404, f"no tool at {record.path}")
        behaviour = self.behaviours.get(record.path, Behaviour())
        if behaviour.delay_ms:
            await asyncio.sleep(behaviour.delay_ms / 1000)
            record.client_gone = request.transport is None or request.transport.is_closing()
        if behaviour.close:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never sent: the connection is gone
        if behaviour.non_json:
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            record.status, record.response = behaviour.status or 200, page
            return web.Response(status=record.status, body=page, content_type="text/html")
        if behaviour.status is not None:
            return self._json(record, behaviour.status, {"error": "simulated failure"})
        assert record.arguments is not None
        status, payload = route(record.arguments)
        if behaviour.body is not None:
            payload = behaviour.body
        if behaviour.oversized_bytes is not None:
            payload = {**payload, "padding": "x" * behaviour.oversized_bytes}
        logger.debug("< tool %s: %s", record.path, status)
        return self._json(record, status, payload)

    def _read_body(self, record: ToolRequest) -> str | None:
        """Parse the body into ``record.json`` / ``record.arguments``; the problem, if any."""
        try:
            data = json.loads(record.body)
        except (ValueError, RecursionError):
            return "the body is not JSON"
        if not isinstance(data, dict):
            return "the body is not a JSON object"
        record.json = data
        missing = [key for key in BODY_KEYS if key not in data]
        if missing:
            return f"missing keys: {', '.join(missing)}"
        for key in BODY_KEYS[:5]:
            if not isinstance(data[key], str):
                return f"{key} must be a string"
        arguments = data["arguments"]
        if isinstance(arguments, str):
            record.arguments_as_string = True
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                return "arguments is a string that is not JSON"
        if not isinstance(arguments, dict):
            return "arguments must be a JSON object"
        record.arguments = arguments
        return None

    # --- the bookings API ---------------------------------------------------------------------------

    @staticmethod
    def _date_and_size(arguments: Json) -> tuple[str, int] | str:
        date, size = arguments.get("date"), arguments.get("party_size")
        if not isinstance(date, str):
            return "date must be a string YYYY-MM-DD"
        try:
            dt.date.fromisoformat(date)
        except ValueError:
            return f"{date!r} is not a date YYYY-MM-DD"
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 20:
            return "party_size must be an integer from 1 to 20"
        return date, size

    def _free(self, date: str, size: int) -> list[str]:
        times = TIMES if size <= 4 else TIMES[::2] if size <= 8 else ()
        booked = {b["time"] for b in self.bookings.values() if b["date"] == date}
        return [t for t in times if t not in booked]

    def _availability(self, arguments: Json) -> tuple[int, Json]:
        checked = self._date_and_size(arguments)
        if isinstance(checked, str):
            return 422, {"error": checked}
        date, size = checked
        return 200, {"date": date, "party_size": size, "available": self._free(date, size)}

    def _book(self, arguments: Json) -> tuple[int, Json]:
        checked = self._date_and_size(arguments)
        if isinstance(checked, str):
            return 422, {"error": checked}
        date, size = checked
        at, name = arguments.get("time"), arguments.get("name", "")
        if not isinstance(at, str) or not isinstance(name, str):
            return 422, {"error": "time (HH:MM) and name must be strings"}
        free = self._free(date, size)
        if at not in free:
            return 200, {"booked": False, "reason": f"{at} is not available", "available": free}
        booking_id = f"BK-{1001 + len(self.bookings)}"
        booking = {"booking_id": booking_id, "date": date, "time": at, "party_size": size, "name": name}
        self.bookings[booking_id] = booking
        return 200, {"booked": True, **booking}


async def _serve(args: argparse.Namespace) -> None:
    server = ToolServer(args.secret)
    await server.start(args.host, args.port)
    logger.info("Tool server (bookings API) listening on %s", server.base_url)
    try:
        await asyncio.Future()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the local bookings tool server (signed requests only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--secret", required=True, help="the shared secret of the signatures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
