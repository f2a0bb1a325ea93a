"""``make demo``: one whole phone call, locally, with no Twilio or OpenAI account.

Starts the Realtime simulator and the real Dialtone server (hypercorn, 127.0.0.1), then the Twilio
caller simulator places a call: the agent greets, the caller asks a question and hears the answer, asks
another, and interrupts the long answer. Prints the call's timeline and writes a stereo WAV (caller
left, agent right, as heard) to listen to::

    python -m service.demo [--speed 1.0] [--wav out/demo-call.wav] [--record out/calls]
                           [--drop-model-at SECONDS [--drop-abort]]
    python -m service.demo --outbound [--speed 1.0]     (service.demo_outbound: an outbound call)

``--drop-model-at`` drops the model socket in use at that many seconds of stream time (close 1011, or a
TCP reset with ``--drop-abort``): the call goes on on a new session, and the timeline shows the
reconnect, the turns replayed to the new session and whether it was asked to continue its answer.

Exit status: 0 when the call went through and ended with the caller's hang-up, 1 when protocol problems
were seen (by the caller simulator, or by the Realtime simulator on any of the model sockets) or the
call ended some other way.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.sim.caller import CallRecord, ClearRecord, place_call
from service.sim.realtime_server import RealtimeSimulator, SimConnection, Truncation
from service.sim.script import AfterAgentSilent, AfterAgentStarted, HangUp, Say, load_clip
from service.sim.stack import LocalStack

CALLED = "+15551230009"  # no entry of its own in fixtures/agents.toml: the default agent answers
BRIDGE_LOGGER = "service.runtime.bridge"  # logs the per-call summary line (extra={"summary": ...})
SUMMARY_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 10.0


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


@dataclass(frozen=True, slots=True)
class StreamClock:
    """Wall clock (epoch seconds) to the caller's stream ms.

    The caller simulator keeps its stream clock to itself (``place_call`` only returns the record at
    the end), so the origin is taken from the Realtime simulator: the moment the service's first model
    socket was accepted. The service opens that socket when Twilio's media socket is accepted, a
    handshake later than the caller's ``start``: about 2 ms of real time late on a local run.
    """

    origin: float  # epoch seconds at stream ms 0
    speed: float

    def stream_ms(self, epoch_s: float) -> float:
        return (epoch_s - self.origin) * 1000 * self.speed

    def epoch_s(self, stream_ms: float) -> float:
        return self.origin + stream_ms / 1000 / self.speed


@dataclass(frozen=True, slots=True)
class Drop:
    """A model socket dropped by the demo (``--drop-model-at``)."""

    stream_ms: float
    epoch_s: float
    index: int  # the simulator connection dropped (0-based)
    code: int
    abort: bool

    @property
    def how(self) -> str:
        return "TCP reset" if self.abort else f"close {self.code}"


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


def script() -> list[Say | HangUp]:
    return [
        Say(load_clip("caller_question"), AfterAgentSilent(600)),
        Say(load_clip("caller_followup"), AfterAgentSilent(600)),
        Say(load_clip("caller_interrupt"), AfterAgentStarted(2500)),
        HangUp(AfterAgentSilent(800)),
    ]


def _replayed(conn: SimConnection) -> tuple[list[str], bool]:
    """The roles of the turns replayed to a session (``conversation.item.create``), and whether it was
    asked to go on (a ``response.create`` without instructions; the greeting's has some)."""
    roles: list[str] = []
    resumed = False
    for event in conn.client_events:
        if event.get("type") == "conversation.item.create":
            item = event.get("item")
            roles.append(str(item.get("role", "?")) if isinstance(item, dict) else "?")
        elif event.get("type") == "response.create":
            response = event.get("response")
            resumed |= not (isinstance(response, dict) and response.get("instructions"))
    return roles, resumed


def _replay_text(conn: SimConnection) -> str:
    roles, resumed = _replayed(conn)
    users, agents = roles.count("user"), roles.count("assistant")
    text = f"{len(roles)} turn(s) replayed ({users} caller, {agents} agent)"
    return text + (", asked to continue (response.create)" if resumed else ", not asked to continue")


def _lost_to_server(conn: SimConnection) -> bool:
    """Ended by the model side (a drop, a fault, the session limit, a fatal error), not by the service."""
    return conn.ended_by is not None


def _successor(conn: SimConnection, connections: Sequence[SimConnection]) -> SimConnection | None:
    return next((c for c in connections if c.index > conn.index), None)


def _loss_rows(
    record: CallRecord,
    connections: Sequence[SimConnection],
    clock: StreamClock,
    drop: Drop | None,
    reconnect_ms: list[int],
) -> tuple[list[tuple[float, str]], set[int]]:
    """Rows for each model socket the model side ended and its replacement, and the indexes in
    ``record.clears`` of the clears the service sent because of the loss (not barge-ins)."""
    rows: list[tuple[float, str]] = []
    lost_clears: set[int] = set()
    # Pairs each loss with the service's reconnect_ms in order (a loss before the session was
    # configured is not counted by the service: the demo only provokes one).
    for loss, conn in enumerate(c for c in connections if _lost_to_server(c) and c.closed_at is not None):
        assert conn.closed_at is not None
        is_drop = drop is not None and conn.index == drop.index
        lost_at = drop.epoch_s if drop is not None and is_drop else conn.closed_at
        lost_ms = clock.stream_ms(lost_at)
        if not is_drop:
            how = "TCP reset" if conn.aborted else f"close {conn.close_code}"
            rows.append((lost_ms, f"model   socket closed by the model side ({how}, {conn.ended_by})"))
        new = _successor(conn, connections)
        if new is None:
            rows.append((lost_ms, "model   no new socket was accepted after the loss"))
            continue
        accept_ms = (new.accepted_at - lost_at) * 1000
        ready_ms = reconnect_ms[loss] if loss < len(reconnect_ms) else None
        ready = "no session ready" if ready_ms is None else f"session ready {ready_ms} ms after the loss"
        what = "drop" if is_drop else "loss"
        at = clock.stream_ms(new.accepted_at)
        rows.append(
            (at, f"model   new socket accepted {accept_ms:.0f} ms after the {what}, {ready} (real time)")
        )
        rows.append((at, f"model   {_replay_text(new)}"))
        window_ms = max(accept_ms, float(ready_ms or 0)) * clock.speed + 100  # stream ms, generous
        lost_clears |= {
            i for i, c in enumerate(record.clears) if lost_ms <= c.stream_ms <= lost_ms + window_ms
        }
    return rows, lost_clears


def _rollover_rows(
    record: CallRecord, connections: Sequence[SimConnection], clock: StreamClock
) -> list[tuple[float, str]]:
    """A socket the service closed before the end of the call while its successor was already open."""
    rows: list[tuple[float, str]] = []
    call_end = clock.epoch_s(record.duration_ms)
    for conn in connections:
        new = _successor(conn, connections)
        if _lost_to_server(conn) or conn.closed_at is None or new is None:
            continue
        if new.accepted_at < conn.closed_at < call_end:
            opened_ms = (conn.closed_at - new.accepted_at) * 1000
            rows.append(
                (
                    clock.stream_ms(conn.closed_at),
                    f"model   session rolled over to a socket opened {opened_ms:.0f} ms before; "
                    + _replay_text(new),
                )
            )
    return rows


def _clear_rows(
    record: CallRecord, connections: Sequence[SimConnection], lost_clears: set[int]
) -> list[tuple[float, str]]:
    """Twilio clears (barge-in, or the lost answer of a dropped session) and the model's truncations,
    each truncation placed at the barge-in that caused it (in order)."""
    rows: list[tuple[float, str]] = []
    barge_ins: list[ClearRecord] = []
    for i, clear in enumerate(record.clears):
        heard = f"{clear.played_ms:.0f} ms of that answer was heard"
        if i in lost_clears:
            thrown = f"{clear.discarded_ms:.0f} ms queued thrown away"
            rows.append((clear.stream_ms, f"twilio  clear (model lost): {heard}, {thrown}"))
        else:
            barge_ins.append(clear)
            rows.append((clear.stream_ms, f"twilio  clear (barge-in): {heard}"))
    truncations: list[Truncation] = [t for conn in connections for t in conn.truncations]
    for i, cut in enumerate(truncations):
        at = barge_ins[min(i, len(barge_ins) - 1)].stream_ms if barge_ins else 0.0
        rows.append(
            (at, f"model   item truncated at {cut.audio_end_ms} ms of {cut.generated_ms} ms generated")
        )
    return rows


def timeline(
    record: CallRecord,
    connections: Sequence[SimConnection] = (),
    *,
    clock: StreamClock | None = None,
    drop: Drop | None = None,
    summary: dict[str, Any] | None = None,
) -> list[tuple[float, str]]:
    """(stream ms, what happened), in order. The model sockets' rows need the ``clock``."""
    rows: list[tuple[float, str]] = []
    runs = record.heard_runs
    for start, name in record.says:
        clip = load_clip(name)
        end = start + clip.duration_ms
        rows.append((start, f"caller  says {clip.text!r} ({clip.duration_ms} ms)"))
        later = [r for r in runs if r[0] >= end]
        if later:
            rows.append(
                (
                    later[0][0],
                    f"agent   first audio heard {later[0][0] - end:.0f} ms after the caller stopped",
                )
            )
    for start, end in runs:
        rows.append((start, f"agent   audio plays for {end - start:.0f} ms"))
    lost_clears: set[int] = set()
    if clock is not None:
        reconnect_ms = [int(ms) for ms in (summary or {}).get("reconnect_ms") or []]
        loss_rows, lost_clears = _loss_rows(record, connections, clock, drop, reconnect_ms)
        rows += loss_rows + _rollover_rows(record, connections, clock)
    if drop is not None:
        rows.append(
            (drop.stream_ms, f"model   socket dropped ({drop.how}){_activity(record, drop.stream_ms)}")
        )
    rows += _clear_rows(record, connections, lost_clears)
    rows.append((record.duration_ms, f"call    ended: {record.end_reason}"))
    return sorted(rows, key=lambda row: row[0])


def _activity(record: CallRecord, stream_ms: float) -> str:
    """What the caller heard or said at ``stream_ms``, for the drop row."""
    for start, name in record.says:
        if start <= stream_ms < start + load_clip(name).duration_ms:
            return " while the caller was speaking"
    if any(start <= stream_ms < end for start, end in record.heard_runs):
        return " while the agent was heard"
    return ""


def summary_text(s: dict[str, Any]) -> str:
    """The service's summary line as a sentence (missing fields show as ?)."""

    def get(key: str) -> Any:
        return s.get(key, "?")

    reconnect_ms = s.get("reconnect_ms") or []
    reconnects = f"{get('reconnects')} reconnect(s)"
    if reconnect_ms:
        reconnects += " (" + ", ".join(f"{ms} ms" for ms in reconnect_ms) + " from loss to new session)"
    return (
        f"Service summary: {get('duration_s')} s, {get('frames_in')} frames in, {get('frames_out')} frames "
        f"out, {get('turns')} turn(s), {get('barge_ins')} barge-in(s), {get('truncations')} truncation(s), "
        f"{reconnects}, {get('rollovers')} rollover(s), {get('gap_dropped_ms')} ms of caller audio "
        f"dropped while reconnecting, first audio after turn end (played) {get('first_audio_ms')} ms, "
        f"tokens in/out {get('input_tokens')}/{get('output_tokens')}, ended: {get('end_reason')} "
        f"(phase {get('phase')})\n"
    )


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
    drop_at_s: float | None = None,
    drop_abort: bool = False,
    drop_code: int = 1011,
) -> int:
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
        return await _run(speed, wav, record_dir, catcher, drop_at_s, drop_abort, drop_code)
    finally:
        bridge_log.removeHandler(catcher)
        bridge_log.setLevel(saved[0])
        bridge_log.propagate = saved[1]


async def _run(
    speed: float,
    wav: Path,
    record_dir: Path | None,
    catcher: _SummaryCatcher,
    drop_at_s: float | None,
    drop_abort: bool,
    drop_code: int,
) -> int:
    env = {"RECORD_CALLS_DIR": str(record_dir)} if record_dir else {}
    out = sys.stdout
    drop: Drop | None = None
    async with LocalStack(env=env) as stack:
        out.write(f"Dialtone demo: server on {stack.http_base}, Realtime simulator on {stack.sim.url}\n")
        out.write(f"Placing a call to {CALLED} (stream time runs {speed:g}x real time)...\n")
        if drop_at_s is not None:
            how = "with a TCP reset" if drop_abort else f"with close {drop_code}"
            out.write(f"The model socket will be dropped {how} at {drop_at_s:g} s of stream time.\n")
        out.write("\n")
        dropper = None
        if drop_at_s is not None:
            dropper = asyncio.create_task(
                _drop_model(stack.sim, speed, drop_at_s, code=drop_code, abort=drop_abort)
            )
        try:
            record = await place_call(
                stack.http_base, **stack.call_kwargs(to=CALLED, speed=speed, script=script())
            )
        finally:
            if dropper is not None:
                dropper.cancel()  # no effect if it is done; else the call was over before the drop
                (result,) = await asyncio.gather(dropper, return_exceptions=True)
                drop = result if isinstance(result, Drop) else None
        # The service logs its summary and closes its model socket once Twilio's socket has gone.
        await _wait_all([catcher.logged], SUMMARY_TIMEOUT_S)
        connections = list(stack.sim.connections)
        await _wait_all([c.closed for c in connections], CLOSE_TIMEOUT_S)
    summary = catcher.summaries[-1] if catcher.summaries else None
    clock = StreamClock(connections[0].accepted_at, speed) if connections else None
    if drop_at_s is not None and drop is None:
        out.write(f"  (no model socket was dropped: the call was over before {drop_at_s:g} s)\n")
    for ms, what in timeline(record, connections, clock=clock, drop=drop, summary=summary):
        out.write(f"  {ms / 1000:7.2f} s  {what}\n")
    if summary is not None:
        out.write("\n" + summary_text(summary))
    else:
        out.write("\nThe service logged no summary line.\n")
    wav.parent.mkdir(parents=True, exist_ok=True)
    record.write_stereo_wav(wav)
    out.write(f"\nWrote {wav} (left: caller, right: agent as heard).\n")
    problems = list(record.protocol_errors)
    for conn in connections:
        problems += [f"model socket {conn.index + 1}: {a}" for a in conn.anomalies]
    if record.end_reason != "caller_hangup":
        problems.append(f"the call did not end with the caller's hang-up (ended: {record.end_reason})")
    if problems:
        out.write("Protocol problems seen:\n" + "".join(f"  - {p}\n" for p in problems))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one simulated phone call through Dialtone.")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="stream time / wall time (default 1: real time)"
    )
    parser.add_argument("--wav", type=Path, default=Path("out/demo-call.wav"))
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
        run(args.speed, args.wav, args.record, drop_at_s=args.drop_model_at, drop_abort=args.drop_abort)
    )


if __name__ == "__main__":
    raise SystemExit(main())
