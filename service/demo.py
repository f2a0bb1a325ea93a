"""``make demo``: one whole phone call, locally, with no Twilio or OpenAI account.

Starts the Realtime simulator, the local tool server (:mod:`service.sim.tools`: a restaurant's bookings
API that checks Dialtone's request signatures) and the real Dialtone server (hypercorn, 127.0.0.1), then
the Twilio caller simulator calls Trattoria Sole's booking line (``+15551230011`` in
``fixtures/agents_tools.toml``). The agent greets; the caller asks a question; the model calls
``check_availability``, Dialtone calls the tool server (signed) and hands its answer to the model, and
the agent answers; the caller asks another question and interrupts the long answer (barge-in); the
agent says goodbye and calls ``end_call``: once the goodbye has been heard, Dialtone ends the stream and
answers Twilio's ``<Connect action>`` request with ``<Hangup/>`` (the caller simulator follows it).

The fixture clips stand in for the words (there is no goodbye among them: the greeting is said again).
Prints the call's timeline (what was said and heard, barge-ins, tool calls with their durations, the
hang-up), the service's summary line, and the call's record as the service wrote it to its database
(``DATABASE_URL``, a temporary SQLite file here): the transcript and what the call cost, as the service
priced it. Writes a stereo WAV (caller left, agent right, as heard) and the record's timeline as SVG
(:func:`service.records.picture.write_picture`, as ``python -m service calls show SID --picture``)::

    python -m service.demo [--speed 1.0] [--wav out/demo-call.wav] [--picture out/demo-call.svg]
                           [--record out/calls] [--drop-model-at SECONDS [--drop-abort]]
    python -m service.demo --outbound [--speed 1.0]     (service.demo_outbound: an outbound call)

``--drop-model-at`` drops the model socket in use at that many seconds of stream time (close 1011, or a
TCP reset with ``--drop-abort``): the call goes on on a new session, and the timeline shows the
reconnect, the turns replayed to the new session and whether it was asked to continue its answer.
(The simulator scripts replies by caller turn: a session that takes over during the tool's answer calls
the tool again.)

The printout is :mod:`service.demo_print`. Exit status: 0 when the call went through and ended as
scripted: the tool was called and answered, the model called ``end_call``, the service ended the stream
and ``<Connect action>`` answered ``<Hangup/>``, and the record was written. 1 otherwise, or when
protocol problems were seen (by the caller simulator, or by the Realtime simulator on any of the model
sockets).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from service.demo_print import Drop, StreamClock, record_text, summary_text, timeline
from service.records import Database, RecordsError
from service.records.db import describe_error
from service.records.picture import write_picture
from service.sim.caller import CallRecord, place_call
from service.sim.realtime_server import RealtimeSimulator, SimConnection
from service.sim.script import (
    AfterAgentSilent,
    AfterAgentStarted,
    FunctionCall,
    HangUp,
    ReplyScript,
    Say,
    load_clip,
)
from service.sim.stack import API_KEY, TOOLS_SECRET, LocalStack, agents_with_tools
from service.sim.tools import ToolRequest, ToolServer

CALLED = "+15551230011"  # fixtures/agents_tools.toml: a booking line (check_availability, end_call)
TOOL = "check_availability"
TOOL_PATH = "/availability"  # its route on the tool server
TOOL_ARGUMENTS = '{"date": "2026-12-24", "party_size": 4}'
GOODBYE = '{"reason": "the caller has what they called for"}'
CALLER_CLIPS = ("caller_question", "caller_followup", "caller_interrupt")
BRIDGE_LOGGER = "service.runtime.bridge"  # logs the per-call summary line (extra={"summary": ...})
SUMMARY_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 10.0
HANG_UP_AFTER_MS = 3000
"""The caller's own hang-up, should the agent not end the call: this long after the agent went quiet."""


@dataclass(frozen=True, slots=True)
class Options:
    speed: float
    wav: Path
    picture: Path
    record_dir: Path | None = None
    drop_at_s: float | None = None
    drop_abort: bool = False
    drop_code: int = 1011
    model_script: ReplyScript | None = None  # what the simulated model does (None: ``replies()``)


class _SummaryCatcher(logging.Handler):
    """Keeps the service's per-call summary line (logged by the bridge) for the printout."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.summaries: list[dict[str, Any]] = []
        self.logged = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        summary = getattr(record, "summary", None)
        if isinstance(summary, dict):
            self.summaries.append(summary)
            self._loop.call_soon_threadsafe(self.logged.set)


async def _drop_model(
    sim: RealtimeSimulator, speed: float, at_s: float, *, code: int, abort: bool
) -> Drop | None:
    """At ``at_s`` of stream time, drop the model socket then in use (None: there was none)."""
    first = await sim.wait_for_connection(0, timeout_s=30)
    clock = StreamClock(first.accepted_at, speed)
    await asyncio.sleep(max(clock.epoch_s(at_s * 1000) - time.time(), 0.0))
    # The oldest socket still open is the one in use (during a rollover the newer one is the spare).
    current = next((c for c in sim.connections if not c.closing), None)
    if current is None:
        return None
    now = time.time()
    current.drop(code, "demo: model socket dropped", abort=abort)
    return Drop(clock.stream_ms(now), now, current.index, code, abort)


def replies() -> ReplyScript:
    """What the model does: greet; answer the first question after a look at the bookings
    (``check_availability``, answered by the tool server); give the long answer to the second one; say
    goodbye and call ``end_call`` when interrupted."""
    clip = load_clip
    return ReplyScript(
        greeting=clip("reply_greeting"),
        replies=(
            # ``waiting``: what is said if the tool is slow enough for the agent's filler (0.7 s real time)
            FunctionCall(TOOL, TOOL_ARGUMENTS, then=clip("reply_short"), waiting=clip("reply_followup")),
            clip("reply_long"),
            # No goodbye among the fixture clips: "Thanks for calling Dialtone. ..." stands in for one.
            FunctionCall("end_call", GOODBYE, then=clip("reply_followup"), preamble=clip("reply_greeting")),
        ),
        caller_transcripts=tuple(clip(name).text for name in CALLER_CLIPS),
    )


def script() -> list[Say | HangUp]:
    """What the caller does: asks, asks again, interrupts the long answer; hangs up only if the agent
    does not end the call."""
    question, followup, interrupt = (load_clip(name) for name in CALLER_CLIPS)
    return [
        Say(question, AfterAgentSilent(600)),
        Say(followup, AfterAgentSilent(600)),
        Say(interrupt, AfterAgentStarted(2500)),
        HangUp(AfterAgentSilent(HANG_UP_AFTER_MS)),
    ]


async def _wait_all(events: Sequence[asyncio.Event], timeout_s: float) -> None:
    """Wait until every event is set, for at most ``timeout_s``."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    if not waiters:
        return
    _, pending = await asyncio.wait(waiters, timeout=timeout_s)
    for waiter in pending:
        waiter.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def run(
    speed: float,
    wav: Path,
    record_dir: Path | None,
    *,
    picture: Path = Path("out/demo-call.svg"),
    drop_at_s: float | None = None,
    drop_abort: bool = False,
    drop_code: int = 1011,
    model_script: ReplyScript | None = None,
) -> int:
    """Run the demo's call and print it; the exit status. ``model_script`` replaces what the simulated
    model does (:func:`replies`), e.g. to see the demo fail when the model never ends the call."""
    options = Options(speed, wav, picture, record_dir, drop_at_s, drop_abort, drop_code, model_script)
    catcher = _SummaryCatcher()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    bridge_log = logging.getLogger(BRIDGE_LOGGER)
    saved = bridge_log.level, bridge_log.propagate
    bridge_log.setLevel(logging.INFO)
    bridge_log.addHandler(catcher)
    bridge_log.propagate = False
    try:
        with tempfile.TemporaryDirectory(prefix="dialtone-demo-") as folder:
            return await _run(options, catcher, Path(folder))
    finally:
        bridge_log.removeHandler(catcher)
        bridge_log.setLevel(saved[0])
        bridge_log.propagate = saved[1]


@dataclass(frozen=True, slots=True)
class _Call:
    """What the demo's call left behind, on every side."""

    record: CallRecord  # the caller simulator's
    connections: list[SimConnection]  # the Realtime simulator's sockets
    requests: list[ToolRequest]  # the tool server's
    drop: Drop | None


async def _place(options: Options, stack: LocalStack, tools: ToolServer, catcher: _SummaryCatcher) -> _Call:
    """The call, from the caller's first ring to the service's summary line and its last model socket
    closed."""
    drop: Drop | None = None
    dropper = None
    if options.drop_at_s is not None:
        dropper = asyncio.create_task(
            _drop_model(
                stack.sim, options.speed, options.drop_at_s, code=options.drop_code, abort=options.drop_abort
            )
        )
    try:
        kwargs = stack.call_kwargs(to=CALLED, speed=options.speed, script=script())
        record = await place_call(stack.http_base, **kwargs)
    finally:
        if dropper is not None:
            dropper.cancel()  # no effect if it is done; else the call was over before the drop
            (result,) = await asyncio.gather(dropper, return_exceptions=True)
            drop = result if isinstance(result, Drop) else None
    # The service logs its summary and closes its model socket once Twilio's socket has gone.
    await _wait_all([catcher.logged], SUMMARY_TIMEOUT_S)
    connections = list(stack.sim.connections)
    await _wait_all([c.closed for c in connections], CLOSE_TIMEOUT_S)
    return _Call(record, connections, list(tools.requests), drop)


def _read_record(url: str, call_sid: str) -> tuple[dict[str, Any] | None, str | None]:
    """The call's record as the service wrote it (the document of ``calls show --json``), or why not."""
    try:
        db = Database(url, must_exist=True)
    except RecordsError as exc:
        return None, str(exc)
    try:
        doc = db.get_call(call_sid)
    except SQLAlchemyError as exc:
        return None, describe_error(exc)
    finally:
        db.dispose()
    return doc, None if doc is not None else f"no record of {call_sid}"


async def _run(options: Options, catcher: _SummaryCatcher, folder: Path) -> int:
    out = sys.stdout
    database_url = f"sqlite:///{folder / 'dialtone.db'}"
    env = {"DATABASE_URL": database_url}
    if options.record_dir:
        env["RECORD_CALLS_DIR"] = str(options.record_dir)
    model_script = options.model_script if options.model_script is not None else replies()
    sim = RealtimeSimulator(model_script, api_key=API_KEY)
    async with ToolServer(TOOLS_SECRET) as tools:
        agents = agents_with_tools(tools.base_url, folder / "agents.toml")
        async with LocalStack(sim=sim, agents_file=agents, env=env) as stack:
            out.write(
                f"Dialtone demo: server on {stack.http_base}, Realtime simulator on {stack.sim.url}, "
                f"tool server (signed bookings API) on {tools.base_url}\n"
            )
            out.write(
                f"Placing a call to {CALLED}, Trattoria Sole's booking line "
                f"(stream time runs {options.speed:g}x real time)...\n"
            )
            if options.drop_at_s is not None:
                how = "with a TCP reset" if options.drop_abort else f"with close {options.drop_code}"
                out.write(
                    f"The model socket will be dropped {how} at {options.drop_at_s:g} s of stream time.\n"
                )
            out.write("\n")
            call = await _place(options, stack, tools, catcher)
        # The service has stopped: its records store has written what it had.
    doc, unread = _read_record(database_url, call.record.call_sid)
    _print(options, call, catcher, doc, unread)
    problems = _problems(call, doc, unread)
    if problems:
        out.write("\nThe call did not go as scripted:\n" + "".join(f"  - {p}\n" for p in problems))
        return 1
    return 0


def _print(
    options: Options,
    call: _Call,
    catcher: _SummaryCatcher,
    doc: dict[str, Any] | None,
    unread: str | None,
) -> None:
    out = sys.stdout
    record, connections = call.record, call.connections
    summary = catcher.summaries[-1] if catcher.summaries else None
    clock = StreamClock(connections[0].accepted_at, options.speed) if connections else None
    if options.drop_at_s is not None and call.drop is None:
        out.write(f"  (no model socket was dropped: the call was over before {options.drop_at_s:g} s)\n")
    rows = timeline(
        record, connections, clock=clock, drop=call.drop, summary=summary, doc=doc, requests=call.requests
    )
    for ms, what in rows:
        out.write(f"  {ms / 1000:7.2f} s  {what}\n")
    out.write(
        "\n" + (summary_text(summary) if summary is not None else "The service logged no summary line.\n")
    )
    out.write("\n")
    if doc is not None:
        out.write(record_text(doc, "the service's DATABASE_URL", options.speed))
    else:
        out.write(f"The call's record could not be read: {unread}\n")
    options.wav.parent.mkdir(parents=True, exist_ok=True)
    record.write_stereo_wav(options.wav)
    out.write(f"\nWrote {options.wav} (left: caller, right: agent as heard).\n")
    if doc is not None:
        write_picture(doc, options.picture)
        out.write(f"Wrote {options.picture} (the call's timeline, drawn from its record).\n")


def _problems(call: _Call, doc: dict[str, Any] | None, unread: str | None) -> list[str]:
    """How the call strayed from the script: protocol problems seen by either simulator, a tool call
    that did not go through, an end other than the agent's ``end_call`` and Dialtone's ``<Hangup/>``."""
    record = call.record
    problems = list(record.protocol_errors)
    for conn in call.connections:
        problems += [f"model socket {conn.index + 1}: {a}" for a in conn.anomalies]
    model_calls = [c for conn in call.connections for c in conn.function_calls]
    if not any(c.name == TOOL and c.output is not None for c in model_calls):
        problems.append(f"the model did not get an answer from {TOOL}")
    if not any(r.path == TOOL_PATH and r.verdict == "accepted" and r.status == 200 for r in call.requests):
        problems.append(f"the tool server did not answer a signed {TOOL} request")
    if not any(c.name == "end_call" for c in model_calls):
        problems.append("the model did not call end_call")
    if record.end_reason != "server_closed":
        problems.append(f"the service did not end the stream (ended: {record.end_reason})")
    verbs = [v.name for v in record.action_verbs]
    if record.action is None or record.action.status != 200 or verbs != ["Hangup"]:
        problems.append(f"<Connect action> did not answer <Hangup/> (verbs: {verbs})")
    if doc is None:
        problems.append(f"the call's record could not be read: {unread}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one simulated phone call through Dialtone.")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="stream time / wall time (default 1: real time)"
    )
    parser.add_argument("--wav", type=Path, default=Path("out/demo-call.wav"))
    parser.add_argument(
        "--picture",
        type=Path,
        default=Path("out/demo-call.svg"),
        metavar="PATH",
        help="write the call's timeline, drawn from its record, as SVG here",
    )
    parser.add_argument(
        "--record", type=Path, default=None, help="also record the call (JSONL) in this folder"
    )
    parser.add_argument(
        "--drop-model-at",
        type=float,
        default=None,
        metavar="SECONDS",
        help="drop the model socket in use at this many seconds of stream time (close 1011)",
    )
    parser.add_argument(
        "--drop-abort",
        action="store_true",
        help="with --drop-model-at: drop it with a TCP reset (no close frame) instead",
    )
    parser.add_argument(
        "--outbound",
        action="store_true",
        help="place an outbound call instead, through the calls API and the Twilio REST simulator",
    )
    args = parser.parse_args(argv)
    if args.speed <= 0:
        parser.error("--speed must be positive")
    if args.outbound:
        from service.demo_outbound import run_outbound

        wav = args.wav if args.wav != Path("out/demo-call.wav") else Path("out/demo-outbound.wav")
        return asyncio.run(run_outbound(args.speed, wav))
    if args.drop_model_at is not None and args.drop_model_at < 0:
        parser.error("--drop-model-at must be 0 or more")
    if args.drop_abort and args.drop_model_at is None:
        parser.error("--drop-abort needs --drop-model-at")
    return asyncio.run(
        run(
            args.speed,
            args.wav,
            args.record,
            picture=args.picture,
            drop_at_s=args.drop_model_at,
            drop_abort=args.drop_abort,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
