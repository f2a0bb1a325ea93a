"""What Dialtone adds to an agent's tool call, and how soon a call hangs up once its goodbye was heard.

    .venv/bin/python -m bench.tools [--calls 20] [--delays 0 200] [--json out.json]     # about 1 minute

Everything runs in this one process, on one event loop (uvloop when installed, as ``python -m
service.serve`` runs; ``--asyncio`` for asyncio's own): the real server
(:class:`service.sim.stack.LocalStack`: hypercorn on 127.0.0.1, a temporary database), the Realtime
simulator, the Twilio caller simulator and the local tool server (a real aiohttp server that checks
every signature). The calls go to +15551230011 (``fixtures/agents_tools.toml``: check_availability,
book, end_call), one after the other, the caller at 4x real time. On each call the model's greeting
response starts a chain of ``--tools`` HTTP tool calls (check_availability, book, check_availability...),
each made once the previous one's output has come; the last response says a goodbye (``reply_short``,
2.2 s of audio) and calls ``end_call``. The caller says nothing: it plays the agent's audio and echoes
its marks, as Twilio does.

1. Tool round trip, per HTTP tool call (``time.monotonic()`` in this process):

   - round trip: the simulator sending ``response.function_call_arguments.done`` -> the simulator
     receiving the ``conversation.item.create`` of its ``function_call_output``;
   - tool server: its request handler entered -> returned (signature and replay checks, the
     ``Behaviour`` delay, the answer built); aiohttp's own parsing and writing fall outside it;
   - overhead = round trip - tool server. It holds Dialtone's work, both websockets, the HTTP client and
     server stacks, and the simulator's own work on the same loop: the events that close the response
     (Dialtone acts on a function call once ``response.done`` has come), and the live call's media (a
     frame each 5 ms of wall time, both ways);
   - bare POST: for scale, in the same run, between calls, this process POSTs the same signed request
     to the same tool server with the same delay (one aiohttp session, connections reused, as Dialtone's
     ToolRunner); ratio = round trip p50 / bare POST p50;
   - end_call: the same round trip for ``end_call``, which Dialtone answers itself (no HTTP).

2. Goodbye heard -> hang-up TwiML, per call, from the caller's stream clock (``loop.time()``, 1 ms steps
   under uvloop) turned into wall ms: the end of the goodbye's playback -> the ``<Connect action>``
   answer (``<Hangup/>``) read. Pieces: playback end -> its mark echoed (the caller simulator's playout
   timer) -> stream closed (Dialtone closes it; the caller simulator sees the close) -> action requested
   (the caller simulator's end of stream) -> TwiML read (the action route, over HTTP from a worker
   thread, as the caller simulator makes every request).

Garbage collector pauses stall the one loop: each sample records the pause time inside its window
(``gc_ms``); the summary gives the spread over all samples, and the max over the samples with less than
1 ms of pause inside (those "hit by a GC pause" are the others). A call that goes wrong (a protocol
error, a simulator anomaly or error, a tool call without output, an action that is not ``<Hangup/>``, a
Dialtone warning) is listed under problems. The run stops after ``--cap-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from service.serve import run
from service.sim.caller import CallRecord, place_call
from service.sim.realtime_server import RealtimeSimulator, SimConnection
from service.sim.script import AfterAgentSilent, FunctionCall, HangUp, Reply, ReplyScript, load_clip
from service.sim.stack import API_KEY, CALLER_NUMBER, TOOLS_SECRET, LocalStack, agents_with_tools
from service.sim.tools import Behaviour, ToolServer, signed_headers

BOOKINGS = "+15551230011"
SPEED = 4.0  # the caller's stream time runs 4x faster than the wall clock (as in tests/test_e2e_tools.py)
TABLE = '{"date": "2026-12-24", "party_size": 4}'
BOOKING = '{"date": "2026-12-24", "time": "19:00", "party_size": 4, "name": "Ada"}'
monotonic = time.monotonic
Sample = dict[str, Any]
TOOL_KEYS = (
    "round_trip_ms",
    "server_ms",
    "overhead_ms",
    "before_post_ms",
    "after_answer_ms",
    "response_done_ms",
)


class TimedToolServer(ToolServer):
    """The tool server, its handler timed: ``spans[call_id] = (entered, returned)``, monotonic seconds."""

    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self.spans: dict[str, tuple[float, float]] = {}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        entered = monotonic()
        response = await super()._handle(request)
        returned = monotonic()
        body = json.loads(await request.read())  # read already: aiohttp keeps the bytes
        self.spans[str(body.get("call_id"))] = (entered, returned)
        return response


class GcPauses:
    """The garbage collector's pauses: (start, monotonic s; generation; ms)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = monotonic()
        else:
            self.pauses.append((self._start, int(info["generation"]), ms(self._start, monotonic())))

    def within(self, start: float, end: float) -> float:
        """ms of pauses inside [start, end]."""
        return sum(max(0.0, min(end, at + p / 1000) - max(start, at)) * 1000 for at, _, p in self.pauses)


class Warnings(logging.Handler):
    """Dialtone's warnings and errors (each is a problem)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def chain(tools: int) -> Reply:
    """``tools`` HTTP tool calls, then a goodbye and end_call in one response."""
    goodbye, unheard = load_clip("reply_short"), load_clip("reply_followup")
    reply: Reply = FunctionCall("end_call", '{"reason": "booked"}', then=unheard, preamble=goodbye)
    for n in reversed(range(tools)):
        name, arguments = ("check_availability", TABLE) if n % 2 == 0 else ("book", BOOKING)
        reply = FunctionCall(name, arguments, then=reply)
    return reply


def ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 3)


def tool_samples(conn: SimConnection, tools: TimedToolServer, problems: list[str]) -> list[Sample]:
    """One sample per function call of the call (HTTP tools and end_call)."""
    sent = list(zip(conn.server_events, conn.server_event_times, strict=True))
    received = list(zip(conn.client_events, conn.client_event_times, strict=True))
    samples = []
    for call in conn.function_calls:
        done = next((t for e, t in sent if e["type"] == "response.function_call_arguments.done"
                     and e["call_id"] == call.call_id), None)  # fmt: skip
        response_done = next((t for e, t in sent if e["type"] == "response.done"
                              and e["response"]["id"] == call.response_id), None)  # fmt: skip
        output = next((t for e, t in received if e["type"] == "conversation.item.create"
                       and e["item"].get("call_id") == call.call_id), None)  # fmt: skip
        if done is None or output is None or response_done is None:
            problems.append(f"{call.name} {call.call_id}: no function_call_output")
            continue
        sample: Sample = {"tool": call.name, "window": (done, output), "round_trip_ms": ms(done, output),
                          "response_done_ms": ms(done, response_done)}  # fmt: skip
        span = tools.spans.get(call.call_id)
        if span is not None:
            entered, returned = span
            server_ms = ms(entered, returned)
            sample |= {"server_ms": server_ms, "overhead_ms": sample["round_trip_ms"] - server_ms,
                       "before_post_ms": ms(done, entered),
                       "after_answer_ms": ms(returned, output)}  # fmt: skip
        elif call.name != "end_call":
            problems.append(f"{call.name} {call.call_id}: the tool server saw no request")
        samples.append(sample)
    return samples


def goodbye_sample(record: CallRecord, returned: float, problems: list[str]) -> Sample | None:
    """Goodbye heard -> <Hangup/> read, in wall ms, with its pieces. ``returned``: when the call returned."""
    action = record.action
    if action is None or action.answered_ms is None or [v.name for v in action.verbs] != ["Hangup"]:
        problems.append(f"call {record.call_sid}: no <Hangup/> from the action URL ({record.end_reason})")
        return None
    echoed = [m for m in record.marks if not m.flushed]
    if not record.heard or not echoed:
        problems.append(f"call {record.call_sid}: no goodbye heard")
        return None
    played_end = record.heard_runs[-1][1]
    pieces = {
        "heard_to_hangup_ms": action.answered_ms - played_end,
        "played_to_mark_ms": echoed[-1].stream_ms - played_end,
        "mark_to_closed_ms": record.duration_ms - echoed[-1].stream_ms,
        "closed_to_requested_ms": action.requested_ms - record.duration_ms,
        "requested_to_twiml_ms": action.answered_ms - action.requested_ms,
    }
    wall = {name: round(stream_ms / record.speed, 3) for name, stream_ms in pieces.items()}
    return {"window": (returned - wall["heard_to_hangup_ms"] / 1000 - 0.002, returned), **wall}


def check_call(record: CallRecord, conn: SimConnection, problems: list[str]) -> None:
    where = f"call {record.call_sid}"
    problems += [f"{where}: {e}" for e in record.protocol_errors]
    problems += [f"{where}: simulator anomaly: {a}" for a in conn.anomalies]
    problems += [f"{where}: simulator error {e['error']}" for e in conn.server_events if e["type"] == "error"]
    if record.end_reason != "server_closed":
        problems.append(f"{where}: ended {record.end_reason!r}, not by Dialtone")


async def bare_post(session: aiohttp.ClientSession, tools: TimedToolServer, n: int) -> Sample:
    """One signed POST to /availability from here, made as Dialtone's ToolRunner makes it."""
    call_id = f"bench_{n}"
    fields = {"call_sid": "CA" + "0" * 32, "call_id": call_id, "agent": BOOKINGS, "from": CALLER_NUMBER,
              "to": BOOKINGS, "tool": "check_availability", "arguments": json.loads(TABLE)}  # fmt: skip
    started = monotonic()
    body = json.dumps(fields, separators=(",", ":")).encode()
    headers = signed_headers(TOOLS_SECRET, body, time.time())
    async with session.post(tools.url("/availability"), data=body, headers=headers) as reply:
        json.loads((await reply.content.read()).decode())
        status = reply.status
    finished = monotonic()
    round_trip_ms, server_ms = ms(started, finished), ms(*tools.spans[call_id])
    return {"status": status, "window": (started, finished), "round_trip_ms": round_trip_ms,
            "server_ms": server_ms, "overhead_ms": round_trip_ms - server_ms}  # fmt: skip


async def one_call(stack: LocalStack) -> tuple[CallRecord, SimConnection, float]:
    kwargs = stack.call_kwargs(to=BOOKINGS, speed=SPEED, script=[HangUp(AfterAgentSilent(8000))])
    record = await asyncio.wait_for(place_call(stack.http_base, **kwargs), 20)
    returned = monotonic()
    conn = stack.sim.connections[-1]
    await asyncio.wait_for(conn.closed.wait(), 10)
    return record, conn, returned


async def measure(calls: int, delays: Sequence[int], tools_per_call: int) -> dict[str, Any]:
    problems: list[str] = []
    tool_calls: list[Sample] = []
    goodbyes: list[Sample] = []
    bare: list[Sample] = []
    count = itertools.count()
    sim = RealtimeSimulator(api_key=API_KEY, script=ReplyScript(chain(tools_per_call), ()), seed=7)
    tools = TimedToolServer(TOOLS_SECRET)
    with tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp:
        async with tools:
            agents = agents_with_tools(tools.base_url, Path(tmp) / "agents.toml")
            async with LocalStack(sim=sim, agents_file=agents) as stack, aiohttp.ClientSession() as session:
                await one_call(stack)  # warm-up, not counted: first connections, first imports
                await bare_post(session, tools, next(count))
                for delay_ms in delays:
                    for path in ("/availability", "/book"):
                        tools.behave(path, Behaviour(delay_ms=delay_ms))
                    for _ in range(calls):
                        record, conn, returned = await one_call(stack)
                        check_call(record, conn, problems)
                        for sample in tool_samples(conn, tools, problems):
                            tool_calls.append({"delay_ms": delay_ms, **sample})
                        if (goodbye := goodbye_sample(record, returned, problems)) is not None:
                            goodbyes.append({"delay_ms": delay_ms, **goodbye})
                        for _ in range(tools_per_call):
                            sample = await bare_post(session, tools, next(count))
                            bare.append({"delay_ms": delay_ms, **sample})
                        del record, conn
                        sim.connections.clear()  # sampled: free the call's events (and their audio)
                        tools.requests.clear()
    problems += [f"bare POST answered {b['status']}" for b in bare if b["status"] != 200]
    return {"tool_calls": tool_calls, "goodbyes": goodbyes, "bare_posts": bare, "problems": problems}


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(samples: Sequence[Sample], key: str) -> dict[str, float]:
    values = [s[key] for s in samples]
    clean = [s[key] for s in samples if s["gc_ms"] < 1]
    return {"n": len(values), "p50": statistics.median(values), "p95": pct(values, 0.95), "max": max(values),
            "hit_by_gc": len(values) - len(clean), "max_without_gc": max(clean, default=-1.0)}  # fmt: skip


def summarize(result: dict[str, Any], delays: Sequence[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {"per_delay": {}}
    for delay in delays:
        http = [r for r in result["tool_calls"] if r["delay_ms"] == delay and "server_ms" in r]
        bare = [b for b in result["bare_posts"] if b["delay_ms"] == delay]
        if not http or not bare:
            continue
        row: dict[str, Any] = {key: spread(http, key) for key in TOOL_KEYS}
        row["bare_round_trip_ms"] = spread(bare, "round_trip_ms")
        row["bare_overhead_ms"] = spread(bare, "overhead_ms")
        row["ratio_p50"] = round(row["round_trip_ms"]["p50"] / row["bare_round_trip_ms"]["p50"], 3)
        summary["per_delay"][str(delay)] = row
    ends = [r for r in result["tool_calls"] if r["tool"] == "end_call"]
    if ends:
        summary["end_call_round_trip_ms"] = spread(ends, "round_trip_ms")
    if result["goodbyes"]:
        keys = [k for k in result["goodbyes"][0] if k.endswith("_ms") and k not in ("gc_ms", "delay_ms")]
        summary["goodbye"] = {key: spread(result["goodbyes"], key) for key in keys}
    return summary


def fmt(s: dict[str, float], digits: int = 1) -> str:
    return f"{s['p50']:.{digits}f} / {s['p95']:.{digits}f} / {s['max']:.{digits}f}"


def report(summary: dict[str, Any], problems: list[str], header: str) -> None:
    print(header)
    print("tool round trips, ms, p50 / p95 / max:")
    print(
        "| tool delay | calls | round trip | tool server | overhead | bare POST | bare overhead | ratio p50 |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for delay, row in summary["per_delay"].items():
        cells = [delay, row["round_trip_ms"]["n"], fmt(row["round_trip_ms"]), fmt(row["server_ms"], 2),
                 fmt(row["overhead_ms"]), fmt(row["bare_round_trip_ms"]), fmt(row["bare_overhead_ms"]),
                 f"{row['ratio_p50']:.2f}"]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for delay, row in summary["per_delay"].items():
        o, before = row["overhead_ms"], row["before_post_ms"]["p50"]
        print(f"  delay {delay}: overhead p50 = arguments.done -> tool server {before:.1f}"
              f" (of which -> response.done sent {row['response_done_ms']['p50']:.1f})"
              f" + answer -> output received {row['after_answer_ms']['p50']:.1f};"
              f" {o['hit_by_gc']} hit by a GC pause, max without them {o['max_without_gc']:.1f}")  # fmt: skip
    if "end_call_round_trip_ms" in summary:
        e = summary["end_call_round_trip_ms"]
        print(f"  end_call, answered by Dialtone (no HTTP): round trip {fmt(e)}")
    if "goodbye" in summary:
        g = summary["goodbye"]
        total = g["heard_to_hangup_ms"]
        hit, clean_max = total["hit_by_gc"], total["max_without_gc"]
        print(f"goodbye heard -> <Hangup/> read, ms, p50 / p95 / max: {fmt(total)} ({total['n']} calls;"
              f" {hit} hit by a GC pause, max without them {clean_max:.1f})")  # fmt: skip
        print(f"  p50 of each piece: playback end -> mark echoed {g['played_to_mark_ms']['p50']:.1f}"
              f" -> stream closed {g['mark_to_closed_ms']['p50']:.1f}"
              f" -> action requested {g['closed_to_requested_ms']['p50']:.1f}"
              f" -> TwiML read {g['requested_to_twiml_ms']['p50']:.1f}")  # fmt: skip
    gcs = summary["gc_pauses"]
    print(f"GC pauses: {gcs['n']}, longest {gcs['max_ms']:.1f} ms (generation {gcs['max_generation']})")
    print(f"problems: {len(problems)}" + "".join(f"\n  {p}" for p in problems[:10]))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    warnings = Warnings()
    service_log = logging.getLogger("service")
    service_log.setLevel(logging.WARNING)
    service_log.addHandler(warnings)
    service_log.propagate = False
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    started = monotonic()
    try:
        async with asyncio.timeout(args.cap_s):
            result = await measure(args.calls, args.delays, args.tools)
    finally:
        gc.callbacks.remove(pauses)
    elapsed_s = monotonic() - started
    for sample in (*result["tool_calls"], *result["goodbyes"], *result["bare_posts"]):
        start, end = sample.pop("window")
        sample["at_s"], sample["gc_ms"] = round(start - started, 3), round(pauses.within(start, end), 3)
    result["problems"] += warnings.lines
    summary = summarize(result, args.delays)
    longest = max(pauses.pauses, key=lambda p: p[2], default=(0.0, 0, 0.0))
    summary["gc_pauses"] = {"n": len(pauses.pauses), "total_ms": round(sum(p for *_, p in pauses.pauses), 1),
                            "max_ms": longest[2], "max_generation": longest[1]}  # fmt: skip
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    header = (f"{args.calls} calls per tool delay, {args.tools} HTTP tool calls and an end_call each;"
              f" {loop} loop; {elapsed_s:.0f} s")  # fmt: skip
    report(summary, result["problems"], header)
    return {
        "command": "python -m bench.tools " + " ".join(args.argv), "event_loop": loop,
        "machine": f"{platform.machine()}, Linux {platform.release()}, Python {platform.python_version()}",
        "calls_per_delay": args.calls, "tools_per_call": args.tools, "delays_ms": list(args.delays),
        "caller_speed": SPEED, "elapsed_s": round(elapsed_s, 1), "summary": summary, **result,
    }  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20, help="calls per tool delay (default 20)")
    parser.add_argument("--delays", type=int, nargs="+", default=[0, 200], help="tool delays, ms (0 200)")
    parser.add_argument("--tools", type=int, default=3, help="HTTP tool calls per call (default 3)")
    parser.add_argument("--cap-s", type=float, default=110.0, help="stop the run after this long (110 s)")
    parser.add_argument("--json", type=Path, default=None, help="write the samples and the summary here")
    parser.add_argument("--asyncio", action="store_true", help="asyncio's own loop, not uvloop")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    outcome: dict[str, Any] = {}

    async def _main() -> None:
        outcome.update(await main(args))

    if args.asyncio:
        asyncio.run(_main())
    else:
        run(_main())  # uvloop where installed, as python -m service.serve
    if args.json is not None:
        args.json.write_text(json.dumps(outcome, indent=1) + "\n")
        print(f"wrote {args.json}")
