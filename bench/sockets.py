"""Per-call CPU and added latency of the whole call path over real sockets on 127.0.0.1, N calls at once.

The Dialtone server runs in its own process, the same app and server the Procfile runs
(``python -m service.serve``, the Procfile's command, configured by environment variables,
``LOG_LEVEL=WARNING``, started in an empty working directory so that no ``.env`` is read). The Realtime
simulator and the N Twilio caller simulators run in this process, so the server's CPU is measured apart
from theirs.

Run from the repository root (about 60 s with the defaults; at most about 2 minutes, as every call and
every level has a hard time limit)::

    .venv/bin/python -m bench.sockets                    # 1, 10, then 25 concurrent calls
    .venv/bin/python -m bench.sockets --calls 1 5 50     # other concurrency levels
    .venv/bin/python -m bench.sockets --ramp 4 --sim-speed 1 --seed 7

Options:

- ``--calls N [N ...]``: concurrency levels, run one after the other against the same server (default
  ``1 10 25``).
- ``--ramp S``: the calls of a level start evenly spread over ``S`` seconds (default 2), so that their
  greetings do not all land in the same 20 ms.
- ``--sim-speed X``: the Realtime simulator streams reply audio ``X`` times faster than real time, as the
  real API does (default 5; ``1`` streams at playback pace).
- ``--seed N``: seed of the simulator's ids and delta sizes (default 1).

Every call follows the same script, the caller at real-time pace (about 17 s of stream time): the agent's
greeting (3.9 s); the caller asks a question (1.9 s); the agent's long answer (8.9 s), which the caller
interrupts 2.5 s in (3.8 s of speech: the service sends ``clear`` and ``conversation.item.truncate``); a short
answer (2.2 s); the caller hangs up after 1 s of silence.

What is reported, per level (a markdown table, one row per level, printed as each level ends):

- ``call s``: mean stream duration of a call. ``window s``: the steady window, from ``SETTLE_S`` after the
  last call of the level started streaming until the first call ended; set-up and tear-down (webhook,
  handshakes, first ``session.update``) fall outside it. Without a window (a call failed to start) the
  whole level is used and the value is marked ``*``.
- ``server CPU %``: user + sys time of the server's process tree (one process),
  from ``/proc/<pid>/stat``, over the window, in % of one core. ``% core/call`` = that / N: the share of
  one core that one concurrent call costs; ``calls/core`` = 100 / that. One hypercorn worker is one
  process: it cannot use more than one core.
- ``sims CPU %``: this process (the simulators) over the same window; ``machine idle %``: idle share of
  all cores. When either sims CPU nears 100 % or the machine has no idle left, the latency figures include
  queueing in the simulators and CPU contention, not only the service's own delay.
- ``latency``, per response: from the Realtime simulator sending the first ``response.output_audio.delta``
  of an item to the caller simulator receiving the first ``media`` frame of that item (the service sends a
  mark naming the item just before it): median, p95 and max, socket to socket (the model's own latency
  is not in it). Both simulators run on this event loop and share its monotonic clock; the benchmark
  observes them by wrapping ``SimConnection._send`` and the caller's ``_Call.run`` (whose ``_t0`` is the
  loop time of stream ms 0) while it runs. ``responses``: responses measured / responses the simulator
  started (one cancelled before any of its audio reached the caller has no latency).
- ``barge-ins``: calls in which the caller got a ``clear`` and the long answer was truncated.
  ``truncate lag``: what the caller had heard of the item when the ``clear`` arrived minus the
  ``audio_end_ms`` the service sent (> 0: the service truncated earlier than heard, as echoed marks lag
  playback; median and max). ``underruns``: stretches of agent audio beyond one per response played,
  i.e. the caller's playback buffer ran dry mid-response.
- ``problems``: calls that failed, caller-side protocol errors, simulator ``error`` events (truncate
  errors apart), simulator anomalies, calls not ended by the caller's hang-up, calls without a barge-in,
  truncates past what the caller heard (by more than one 20 ms frame), Realtime sockets the server left
  open, and WARNING-or-worse lines in the server's log. The details (first five per level) follow the
  table; the exit status is 1 if any level had a problem.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.sim import caller as caller_sim
from service.sim.caller import CallRecord, place_call
from service.sim.realtime_server import RealtimeSimulator, SimConnection, Truncation
from service.sim.script import AfterAgentSilent, AfterAgentStarted, ReplyScript, Say, Step, load_clip
from service.sim.stack import API_KEY, AUTH_TOKEN, DEFAULT_AGENTS_FILE, PUBLIC_BASE_URL, free_port

REPO_DIR = Path(__file__).resolve().parents[1]
CALLED = "+15551239999"  # no entry of its own in fixtures/agents.toml: the default agent, which greets
SETTLE_S = 0.5  # the window opens this long after the last call of a level started streaming
MAX_CALL_MS = 25_000  # the caller's hard cap on a call (a call normally lasts 16-19 s)
CLOSE_WAIT_S = 5.0  # how long the server has to close the Realtime sockets after the last call ended
FRAME_MS = 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
#: Settings the server would read from this process's environment: cleared, only ours are passed.
SERVICE_VARS = (
    "OPENAI_API_KEY", "OPENAI_REALTIME_URL", "OPENAI_REALTIME_MODEL", "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL", "AGENTS_FILE", "PORT", "LOG_LEVEL", "STREAM_TOKEN_SECRET",
    "STREAM_TOKEN_TTL_S", "STREAM_SIGNATURE", "RECORD_CALLS_DIR", "LOG_PAYLOADS", "TRUNCATE_SLACK_MS",
)  # fmt: skip
WARNING_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})


# -- the server process -----------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after ``(comm)``: [1] ppid, [11] utime, [12] stime, [19] starttime."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].decode().split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_s(pids: list[int]) -> float:
    """user + sys CPU seconds of ``pids`` (those that have exited count as 0)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


class ServerProcess:
    """``python -m service.serve`` (the Procfile's command), its log in ``log_path``."""

    def __init__(self, realtime_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self._workdir = workdir
        self._realtime_url = realtime_url
        self._proc: subprocess.Popen[bytes] | None = None
        self._known: dict[int, str] = {}  # pid -> its start time: the tree as last seen

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        """The process tree as last seen (hypercorn's parent first)."""
        return list(self._known)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
        env.update(
            OPENAI_API_KEY=API_KEY,
            OPENAI_REALTIME_URL=self._realtime_url,
            TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            PUBLIC_BASE_URL=PUBLIC_BASE_URL,
            AGENTS_FILE=str(DEFAULT_AGENTS_FILE),
            PORT=str(self.port),
            LOG_LEVEL="WARNING",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH")])),
        )
        command = [sys.executable, "-m", "service.serve"]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                command, env=env, cwd=self._workdir, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.http_base + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        self.cpu_s()
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise TimeoutError(f"the server did not answer /healthz in {timeout_s:.0f} s:\n{self.log_tail()}")

    def cpu_s(self) -> float:
        assert self._proc is not None
        tree = process_tree(self._proc.pid)
        for pid in tree:
            with contextlib.suppress(OSError, IndexError):
                self._known[pid] = _stat_fields(pid)[19]
        return cpu_s(tree)

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_lines_since(self, offset: int) -> list[str]:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace").splitlines()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_lines_since(0)[-lines:])

    def stop(self) -> None:
        """SIGTERM (hypercorn shuts its workers down), SIGKILL after 10 s; then any worker left, by pid."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        for pid, started in self._known.items():  # a worker left behind, if it is still the same process
            with contextlib.suppress(OSError, IndexError):
                if pid != self._proc.pid and _stat_fields(pid)[19] == started:
                    os.kill(pid, signal.SIGKILL)


# -- observing the simulators -----------------------------------------------------------------------------


def machine_idle_s() -> float:
    """CPU seconds the machine's cores have been idle (summed over cores), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / CLK_TCK  # idle + iowait


@dataclass(frozen=True, slots=True)
class Probe:
    t_s: float  # loop time
    server_cpu_s: float
    sims_cpu_s: float
    machine_idle_s: float


@dataclass(slots=True)
class Window:
    """The steady part of one level: opened SETTLE_S after the last call started, closed by the first end."""

    calls: int
    probe: Callable[[], Probe]
    started: int = 0
    start: Probe | None = None
    end: Probe | None = None

    def stream_started(self) -> None:
        self.started += 1
        if self.started == self.calls:
            asyncio.get_running_loop().call_later(SETTLE_S, self._open)

    def _open(self) -> None:
        if self.end is None:
            self.start = self.probe()

    def stream_ended(self) -> None:
        if self.end is None:
            self.end = self.probe()


@dataclass(slots=True)
class Observer:
    """What the benchmark sees of the simulators: first-delta times and caller stream clocks."""

    first_delta_s: dict[str, float] = field(default_factory=dict)  # item id -> loop time of its first delta
    stream_t0_s: dict[str, float] = field(default_factory=dict)  # call sid -> loop time of stream ms 0
    window: Window | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Wrap ``SimConnection._send`` and ``_Call.run`` (in this process only) while the block runs."""
        original_send = SimConnection._send
        original_run = caller_sim._Call.run
        observer = self

        async def send(conn: SimConnection, payload: dict[str, Any]) -> None:
            if (
                payload["type"] == "response.output_audio.delta"
                and payload["item_id"] not in observer.first_delta_s
            ):
                observer.first_delta_s[payload["item_id"]] = asyncio.get_running_loop().time()
            await original_send(conn, payload)

        async def run(call: Any) -> None:
            if observer.window is not None:
                observer.window.stream_started()
            try:
                await original_run(call)
            finally:
                observer.stream_t0_s[call._record.call_sid] = call._t0
                if observer.window is not None:
                    observer.window.stream_ended()

        SimConnection._send = send  # type: ignore[method-assign,assignment]
        caller_sim._Call.run = run  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            SimConnection._send = original_send  # type: ignore[method-assign]
            caller_sim._Call.run = original_run  # type: ignore[method-assign]


# -- one level --------------------------------------------------------------------------------------------


PROBLEMS = (
    "failed calls", "protocol errors", "truncate errors", "sim errors", "sim anomalies", "bad endings",
    "no barge-in", "truncate past heard", "model sockets left open", "server log warnings",
)  # fmt: skip


@dataclass(slots=True)
class LevelResult:
    calls: int
    window_s: float = 0.0
    server_cpu_s: float = 0.0
    sims_cpu_s: float = 0.0
    idle_cpu_s: float = 0.0  # idle time of all the machine's cores in the window
    whole_level: bool = False  # no steady window: the CPU figures cover the whole level
    mean_call_s: float = 0.0
    responses: int = 0  # responses the Realtime simulator started
    latencies_ms: list[float] = field(default_factory=list)
    truncate_lags_ms: list[float] = field(default_factory=list)  # caller heard - audio_end_ms, per truncate
    barge_ins: int = 0
    underruns: int = 0
    problems: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROBLEMS, 0))
    details: list[str] = field(default_factory=list)

    def problem(self, kind: str, detail: str) -> None:
        self.problems[kind] += 1
        self.details.append(f"{kind}: {detail}")

    def pct(self, cpu_s: float) -> float:
        return 100 * cpu_s / self.window_s if self.window_s > 0 else float("nan")

    @property
    def per_call_pct(self) -> float:
        return self.pct(self.server_cpu_s) / self.calls


def caller_script() -> list[Step]:
    return [
        Say(load_clip("caller_question"), AfterAgentSilent(400, timeout_ms=8_000)),
        Say(load_clip("caller_interrupt"), AfterAgentStarted(2_500, timeout_ms=8_000)),
    ]


def reply_script() -> ReplyScript:
    return ReplyScript(
        greeting=load_clip("reply_greeting"),
        replies=(load_clip("reply_long"), load_clip("reply_short")),
        caller_transcripts=(load_clip("caller_question").text, load_clip("caller_interrupt").text),
    )


def item_of(mark_name: str) -> str:
    """The item id in one of the service's mark names (``<item>:<end ms>:g<generation>:m<seq>``)."""
    return mark_name.rsplit(":", 3)[0]


def first_frame_times(record: CallRecord, t0_s: float) -> dict[str, float]:
    """Item id -> loop time the caller received the item's first media frame (the mark before names it)."""
    times: dict[str, float] = {}
    current: str | None = None
    for stream_ms, message in record.received:
        event = message.get("event")
        if event == "mark":
            current = item_of(str(message["mark"]["name"]))
        elif event == "media" and current is not None and current not in times:
            times[current] = t0_s + stream_ms / 1000 / record.speed
    return times


def playback_starts_ms(record: CallRecord) -> dict[str, float]:
    """Item id -> stream ms its playback started (its start mark ``<item>:0:...`` echoed as played)."""
    starts: dict[str, float] = {}
    for mark in record.marks:
        item, end_ms, _, _ = mark.name.rsplit(":", 3)
        if end_ms == "0" and not mark.flushed:
            starts.setdefault(item, mark.stream_ms)
    return starts


def heard_between_ms(record: CallRecord, start_ms: float, end_ms: float) -> float:
    return sum(max(0.0, min(end, end_ms) - max(start, start_ms)) for start, end in record.heard_runs)


def check_call(record: CallRecord, truncations: dict[str, Truncation], result: LevelResult) -> None:
    """Barge-in, truncate accuracy, playback underruns and protocol errors of one call."""
    for error in record.protocol_errors:
        result.problem("protocol errors", error)
    if record.end_reason != "caller_hangup":
        result.problem("bad endings", f"call ended by {record.end_reason}")
    starts = playback_starts_ms(record)
    result.underruns += max(0, len(record.heard) - len(starts))  # more stretches of audio than items played
    cuts = [truncations[item] for item in starts if item in truncations]
    if not record.clears or not cuts:
        result.problem("no barge-in", f"{len(record.clears)} clears, {len(cuts)} truncates of played items")
        return
    result.barge_ins += 1
    for cut in cuts:
        begin = starts[cut.item_id]
        clear = next((c for c in record.clears if c.stream_ms >= begin), None)
        if clear is None:
            continue
        heard_ms = heard_between_ms(record, begin, clear.stream_ms)
        result.truncate_lags_ms.append(heard_ms - cut.audio_end_ms)
        if cut.audio_end_ms > heard_ms + FRAME_MS:
            result.problem(
                "truncate past heard", f"audio_end_ms {cut.audio_end_ms}, caller heard {heard_ms:.0f} ms"
            )


def _is_truncate_error(error: dict[str, Any], truncate_ids: set[str]) -> bool:
    code, message = str(error.get("code")), str(error.get("message"))
    return (
        error.get("event_id") in truncate_ids
        or code.startswith("item_truncate")
        or code == "unsupported_content_type"
        or "truncat" in message.lower()
        or message.startswith("Audio content of")
    )


def check_connection(conn: SimConnection, result: LevelResult) -> None:
    """Error events and anomalies on one Realtime socket."""
    truncate_ids = {
        str(e.get("event_id")) for e in conn.client_events if e["type"] == "conversation.item.truncate"
    }
    for event in conn.server_events:
        if event["type"] == "error":
            error = event["error"]
            kind = "truncate errors" if _is_truncate_error(error, truncate_ids) else "sim errors"
            result.problem(kind, f"{error.get('code')}: {error.get('message')}")
    for anomaly in conn.anomalies:
        result.problem("sim anomalies", anomaly)
    if not conn.closed.is_set():
        result.problem("model sockets left open", f"{CLOSE_WAIT_S:.0f} s after the last call ended")


def check_server_log(lines: list[str], result: LevelResult) -> None:
    for line in lines:
        try:
            level = json.loads(line).get("level")
        except (ValueError, AttributeError):
            level = "WARNING" if line.strip() else None  # not one of our JSON lines: hypercorn or a traceback
        if level in WARNING_LEVELS:
            result.problem("server log warnings", line[:200])


async def run_level(
    calls: int, server: ServerProcess, sim: RealtimeSimulator, observer: Observer, ramp_s: float
) -> LevelResult:
    loop = asyncio.get_running_loop()

    def probe() -> Probe:
        return Probe(loop.time(), server.cpu_s(), time.process_time(), machine_idle_s())

    window = observer.window = Window(calls, probe)
    first_conn, log_offset = len(sim.connections), server.log_size()
    script = caller_script()
    begin = probe()

    async def one(i: int) -> CallRecord:
        await asyncio.sleep(ramp_s * i / max(calls - 1, 1))
        return await place_call(
            server.http_base, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_BASE_URL, script=script,
            to=CALLED, speed=1.0, end_silence_ms=1_000, end_timeout_ms=8_000, max_duration_ms=MAX_CALL_MS,
        )  # fmt: skip

    async with asyncio.timeout(ramp_s + MAX_CALL_MS / 1000 + 5):
        outcomes = await asyncio.gather(*(one(i) for i in range(calls)), return_exceptions=True)
    conns = sim.connections[first_conn:]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_WAIT_S):
            await asyncio.gather(*(c.closed.wait() for c in conns))
    finish = probe()
    observer.window = None

    result = LevelResult(calls)
    start, end = window.start, window.end
    if start is None or end is None or end.t_s <= start.t_s:
        start, end, result.whole_level = begin, finish, True
    result.window_s = end.t_s - start.t_s
    result.server_cpu_s = end.server_cpu_s - start.server_cpu_s
    result.sims_cpu_s = end.sims_cpu_s - start.sims_cpu_s
    result.idle_cpu_s = end.machine_idle_s - start.machine_idle_s
    result.responses = sum(len(c.responses) for c in conns)

    records: list[CallRecord] = []
    for outcome in outcomes:
        if isinstance(outcome, CallRecord):
            records.append(outcome)
        elif isinstance(outcome, Exception):
            result.problem("failed calls", f"{type(outcome).__name__}: {outcome}")
        else:
            raise outcome
    result.mean_call_s = sum(r.duration_ms for r in records) / max(len(records), 1) / 1000
    truncations = {t.item_id: t for conn in conns for t in conn.truncations}
    for conn in conns:
        check_connection(conn, result)
    for record in records:
        check_call(record, truncations, result)
        t0_s = observer.stream_t0_s.get(record.call_sid)
        if t0_s is not None:
            for item, t_s in first_frame_times(record, t0_s).items():
                if item in observer.first_delta_s:
                    result.latencies_ms.append((t_s - observer.first_delta_s[item]) * 1000)
    check_server_log(server.log_lines_since(log_offset), result)
    return result


# -- report -----------------------------------------------------------------------------------------------

COLUMNS = (
    "calls", "call s", "window s", "server CPU %", "% core/call", "calls/core", "sims CPU %",
    "machine idle %", "latency p50 / p95 / max ms", "responses", "barge-ins", "truncate lag p50 / max ms",
    "underruns", "problems",
)  # fmt: skip


def row(r: LevelResult) -> list[str]:
    lat = np.array(r.latencies_ms or [float("nan")])
    lag = np.array(r.truncate_lags_ms or [float("nan")])
    return [
        str(r.calls),
        f"{r.mean_call_s:.1f}",
        f"{r.window_s:.1f}" + ("*" if r.whole_level else ""),
        f"{r.pct(r.server_cpu_s):.1f}",
        f"{r.per_call_pct:.2f}",
        f"{100 / r.per_call_pct:.0f}",
        f"{r.pct(r.sims_cpu_s):.1f}",
        f"{r.pct(r.idle_cpu_s) / CORES:.0f}",
        f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 95):.1f} / {lat.max():.1f}",
        f"{len(r.latencies_ms)}/{r.responses}",
        f"{r.barge_ins}/{r.calls}",
        f"{np.percentile(lag, 50):.0f} / {lag.max():.0f}",
        str(r.underruns),
        ", ".join(f"{k} {v}" for k, v in r.problems.items() if v) or "none",
    ]


def markdown_line(cells: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


async def bench(calls: list[int], ramp_s: float, sim_speed: float, seed: int) -> list[LevelResult]:
    sim = RealtimeSimulator(reply_script(), api_key=API_KEY, speed=sim_speed, seed=seed)
    await sim.start()
    results: list[LevelResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="dialtone-bench-") as workdir:
            server = ServerProcess(sim.url, Path(workdir))
            server.start()
            try:
                await asyncio.to_thread(server.wait_ready)
                t0_s, cpu0_s = time.monotonic(), server.cpu_s()
                await asyncio.sleep(1.0)
                idle_pct = 100 * (server.cpu_s() - cpu0_s) / (time.monotonic() - t0_s)
                print(f"server pids {server.pids} (idle {idle_pct:.1f} % of one core); Realtime sim speed "
                      f"{sim_speed:g}, ramp {ramp_s:g} s, {CORES} cores")  # fmt: skip
                print(markdown_line(COLUMNS))
                print(markdown_line(["---:"] * (len(COLUMNS) - 1) + ["---"]))
                observer = Observer()
                with observer.installed():
                    for n in calls:
                        result = await run_level(n, server, sim, observer, ramp_s)
                        results.append(result)
                        print(markdown_line(row(result)), flush=True)
            finally:
                await asyncio.to_thread(server.stop)
    finally:
        await sim.stop()
    for r in results:
        for line in r.details[:5]:
            print(f"  N={r.calls}: {line}")
        if len(r.details) > 5:
            print(f"  N={r.calls}: ... and {len(r.details) - 5} more")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-call CPU and added latency over real sockets.")
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 10, 25], help="concurrency levels")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which a level's calls start")
    parser.add_argument("--sim-speed", type=float, default=5.0, help="Realtime sim streaming speed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.calls) or args.ramp < 0:
        parser.error("--calls must be >= 1 and --ramp >= 0")
    results = asyncio.run(bench(args.calls, args.ramp, args.sim_speed, args.seed))
    return 1 if any(any(r.problems.values()) for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
