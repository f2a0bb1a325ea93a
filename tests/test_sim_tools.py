"""The local tool server (service.sim.tools) over real HTTP on 127.0.0.1: Dialtone's request signature
(HMAC-SHA256 over timestamp "." raw body), the 5-minute window, replays, the bookings API, and the
misbehaviours a test can ask for."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from service.sim.tools import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Behaviour,
    ToolServer,
    sign,
    signed_headers,
    verify_signature,
)

pytestmark = pytest.mark.timeout(30)

SECRET = "tool-secret-0123456789"
NOW = 1_767_225_600.0  # the server's clock in these tests
TIMEOUT = aiohttp.ClientTimeout(total=5)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def tools(clock: Clock) -> AsyncIterator[ToolServer]:
    async with ToolServer(SECRET, clock=clock) as server:
        yield server


def body_of(arguments: Any, tool: str = "check_availability", **overrides: Any) -> bytes:
    payload = {"call_sid": "CA" + "1" * 32, "agent": "+15551230001", "from": "+15557654321",
               "to": "+15551230001", "tool": tool, "arguments": arguments} | overrides  # fmt: skip
    return json.dumps(payload).encode()


async def post(
    tools: ToolServer, path: str, body: bytes, headers: dict[str, str] | None = None, now: float = NOW
) -> tuple[int, str, bytes]:
    """POST ``body`` signed at ``now`` (or with ``headers`` as given): status, content type, body."""
    sent = signed_headers(SECRET, body, now) if headers is None else headers
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(tools.url(path), data=body, headers=sent) as response,
    ):
        return response.status, response.content_type, await response.read()


def test_verify_signature_is_the_documented_scheme() -> None:
    body = b'{"tool": "x", "arguments": {}}'
    ts = "1767225600"
    good = hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, ts, body) == good == sign(SECRET.encode(), ts, body)
    assert verify_signature(SECRET, ts, body, good, NOW)
    assert verify_signature(SECRET, ts, body, good.upper(), NOW)  # hex in either case
    assert verify_signature(SECRET.encode(), ts, body, good, NOW + 300)  # the window's edges count
    assert verify_signature(SECRET, ts, body, good, NOW - 300)
    assert not verify_signature(SECRET, ts, body, good, NOW + 301)
    assert not verify_signature(SECRET, ts, body, good, NOW - 301)
    assert not verify_signature(SECRET, ts, body, good, NOW + 200, window_s=100)
    assert not verify_signature("other-secret", ts, body, good, NOW)
    assert not verify_signature(SECRET, ts, body + b" ", good, NOW)  # the raw bytes are signed
    assert not verify_signature(SECRET, "1767225601", body, good, NOW)  # and the timestamp
    for bad_ts in ("", "1767225600.0", "+1767225600", "-5", " 1767225600", "١٧٦٧٢٢٥٦٠٠"):
        assert not verify_signature(SECRET, bad_ts, body, sign(SECRET, "0", body), NOW), bad_ts
    for bad_sig in ("", "00", good[:-1], "é" * 64, good + "0"):
        assert not verify_signature(SECRET, ts, body, bad_sig, NOW)


async def test_a_signed_availability_request(tools: ToolServer) -> None:
    body = body_of({"date": "2026-12-24", "party_size": 4})
    status, content_type, answer = await post(tools, "/availability", body)
    assert (status, content_type) == (200, "application/json")
    every = ["18:00", "18:30", "19:00", "19:30", "20:30", "21:00"]
    assert json.loads(answer) == {"date": "2026-12-24", "party_size": 4, "available": every}
    (request,) = tools.requests
    assert (request.method, request.path, request.verdict, request.status) == (
        "POST",
        "/availability",
        "accepted",
        200,
    )
    assert request.body == body and request.response == answer
    assert request.header(TIMESTAMP_HEADER) == "1767225600"
    assert request.header(SIGNATURE_HEADER.lower()) == sign(SECRET, "1767225600", body)
    assert request.json is not None and request.json["call_sid"] == "CA" + "1" * 32
    assert request.arguments == {"date": "2026-12-24", "party_size": 4} and not request.arguments_as_string


async def test_bad_signatures_and_stale_timestamps_are_401(tools: ToolServer, clock: Clock) -> None:
    body = body_of({"date": "2026-12-24", "party_size": 2})
    headers = signed_headers(SECRET, body, NOW)
    cases: list[tuple[dict[str, str], str]] = [
        ({"Content-Type": "application/json"}, "missing_headers"),
        ({k: v for k, v in headers.items() if k != SIGNATURE_HEADER}, "missing_headers"),
        (
            headers | {SIGNATURE_HEADER: sign("wrong-secret", headers[TIMESTAMP_HEADER], body)},
            "bad_signature",
        ),
        (headers | {TIMESTAMP_HEADER: "1767225601"}, "bad_signature"),
        (headers | {TIMESTAMP_HEADER: "soon"}, "bad_timestamp"),
        (signed_headers(SECRET, body, NOW - 301), "stale"),
        (signed_headers(SECRET, body, NOW + 301), "stale"),
    ]
    for sent, verdict in cases:
        status, _, answer = await post(tools, "/availability", body, headers=sent)
        assert status == 401 and "error" in json.loads(answer), verdict
        assert tools.requests[-1].verdict == verdict
    status, _, _ = await post(
        tools, "/availability", body + b" ", headers=headers
    )  # body changed after signing
    assert status == 401 and tools.requests[-1].verdict == "bad_signature"
    clock.now = NOW + 299  # within the window: the same signed request is still fresh
    assert (await post(tools, "/availability", body, headers=headers))[0] == 200


async def test_a_replayed_request_is_409(tools: ToolServer, clock: Clock) -> None:
    body = body_of({"date": "2026-12-24", "party_size": 2})
    headers = signed_headers(SECRET, body, NOW)
    assert (await post(tools, "/availability", body, headers=headers))[0] == 200
    clock.now = NOW + 5
    status, _, _ = await post(tools, "/availability", body, headers=headers)
    assert status == 409 and tools.requests[-1].verdict == "replayed"
    upper = headers | {SIGNATURE_HEADER: headers[SIGNATURE_HEADER].upper()}
    assert (await post(tools, "/availability", body, headers=upper))[
        0
    ] == 409  # the same pair, spelt otherwise
    other = body_of({"date": "2026-12-25", "party_size": 2})  # same second, another body: not a replay
    assert (await post(tools, "/availability", other, now=NOW))[0] == 200
    clock.now = NOW + 301  # once outside the window, the replay is refused as stale
    assert (await post(tools, "/availability", body, headers=headers))[0] == 401


async def test_bodies_that_are_not_a_tool_call_are_400(tools: ToolServer) -> None:
    bad = [
        b"not json",
        b"[1, 2]",
        json.dumps({"tool": "x", "arguments": {}}).encode(),
        body_of({}, call_sid=7),
        body_of([1]),
        body_of("not json either"),
    ]
    for body in bad:
        status, _, answer = await post(tools, "/availability", body)
        assert status == 400 and tools.requests[-1].verdict == "bad_body", body
        assert json.loads(answer)["error"]
    as_string = body_of(json.dumps({"date": "2026-12-24", "party_size": 2}))
    assert (await post(tools, "/availability", as_string))[0] == 200
    assert tools.requests[-1].arguments_as_string and tools.requests[-1].arguments == {
        "date": "2026-12-24", "party_size": 2,
    }  # fmt: skip


async def test_unknown_paths_methods_and_bad_arguments(tools: ToolServer) -> None:
    assert (await post(tools, "/nope", body_of({})))[0] == 404
    assert tools.requests[-1].verdict == "not_found"
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(tools.url("/availability")) as r,
    ):
        assert r.status == 405
    assert tools.requests[-1].verdict == "bad_method"
    for arguments in ({"date": "24/12/2026", "party_size": 2}, {"date": "2026-12-24", "party_size": 0},
                      {"date": "2026-12-24", "party_size": True}, {"party_size": 2}):  # fmt: skip
        status, _, answer = await post(tools, "/availability", body_of(arguments))
        assert status == 422 and json.loads(answer)["error"], arguments
    echo = await post(tools, "/echo", body_of({"a": [1, 2]}, tool="echo"))
    assert json.loads(echo[2]) == {"arguments": {"a": [1, 2]}}


async def test_booking_takes_the_slot(tools: ToolServer) -> None:
    date = {"date": "2026-12-24", "party_size": 6}
    available = json.loads((await post(tools, "/availability", body_of(date)))[2])["available"]
    assert available == ["18:00", "19:00", "20:30"]  # fewer slots for a bigger party
    booked = json.loads(
        (await post(tools, "/book", body_of(date | {"time": "19:00", "name": "Ada"}, "book")))[2]
    )
    assert booked == {"booked": True, "booking_id": "BK-1001", "date": "2026-12-24", "time": "19:00",
                      "party_size": 6, "name": "Ada"}  # fmt: skip
    assert tools.bookings["BK-1001"]["name"] == "Ada"
    again = json.loads((await post(tools, "/book", body_of(date | {"time": "19:00"}, "book")))[2])
    assert again == {"booked": False, "reason": "19:00 is not available", "available": ["18:00", "20:30"]}
    big = json.loads(
        (await post(tools, "/availability", body_of({"date": "2026-12-24", "party_size": 12})))[2]
    )
    assert big["available"] == []


async def test_misbehaviours_per_path(tools: ToolServer) -> None:
    body = body_of({"date": "2026-12-24", "party_size": 2})

    tools.behave("/availability", Behaviour(delay_ms=300))
    started = time.monotonic()
    assert (await post(tools, "/availability", body, now=NOW))[0] == 200
    assert time.monotonic() - started >= 0.3

    tools.behave("/availability", Behaviour(status=503))
    status, _, answer = await post(tools, "/availability", body, now=NOW + 1)
    assert (status, json.loads(answer)) == (503, {"error": "simulated failure"})

    tools.behave("/availability", Behaviour(non_json=True))
    status, content_type, answer = await post(tools, "/availability", body, now=NOW + 2)
    assert (status, content_type) == (200, "text/html")
    with pytest.raises(ValueError):
        json.loads(answer)

    tools.behave("/availability", Behaviour(oversized_bytes=20_000))
    status, _, answer = await post(tools, "/availability", body, now=NOW + 3)
    assert status == 200 and len(answer) > 20_000 and json.loads(answer)["available"]

    tools.behave("/availability", Behaviour(close=True))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(tools, "/availability", body, now=NOW + 4)
    await tools.wait_for_requests(5)
    assert tools.requests[-1].status == 0 and tools.requests[-1].verdict == "accepted"

    tools.behave("/availability", Behaviour(body={"available": []}))
    assert json.loads((await post(tools, "/availability", body, now=NOW + 5))[2]) == {"available": []}
    tools.behave("/availability", None)
    assert json.loads((await post(tools, "/availability", body, now=NOW + 6))[2])["available"]
    assert (await post(tools, "/book", body, now=NOW + 7))[0] == 422  # other paths were never affected


async def test_concurrent_requests_and_waiting_for_them(tools: ToolServer) -> None:
    tools.behave("/echo", Behaviour(delay_ms=200))
    bodies = [body_of({"n": i}, tool="echo") for i in range(5)]
    started = time.monotonic()
    results = await asyncio.gather(*(post(tools, "/echo", b) for b in bodies))
    assert time.monotonic() - started < 1.0  # answered concurrently
    assert sorted(json.loads(r[2])["arguments"]["n"] for r in results) == list(range(5))
    assert len(await tools.wait_for_requests(5)) == 5


def test_the_real_clock_is_the_default() -> None:
    server = ToolServer(SECRET)
    assert abs(server.clock() - time.time()) < 5 and server.window_s == 300
