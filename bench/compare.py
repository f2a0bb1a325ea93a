"""Dialtone against the official Twilio sample (the peer), side by side, under the same simulated load.

Run from the repository root (the defaults take about 15 minutes; every phase has a hard time limit)::

    .venv/bin/python -m bench.compare                              # 1, 25, 50 calls of 60 s, seeds 1 and 2
    .venv/bin/python -m bench.compare --calls 1 25 --seconds 20 --seeds 1    # a quick check, ~3 minutes
    .venv/bin/python -m bench.compare --workers 2                  # + Dialtone's multi-core figure

The peer is ``/work/shared/anchors/twilio-sample-python`` (FastAPI on uvicorn, ``audio/pcmu`` to the model, no
transcoding; its venv is built by its ``setup.sh``), run as ``python main.py`` with its stdout sent to
/dev/null. Dialtone is ``python -m service.serve`` in an empty temporary directory (so that no ``.env`` is
read), configured by the environment only, ``LOG_LEVEL=WARNING``. A fresh server process is started for
every run (one server, one level, one seed), pinned to core 0; the load generator (this process) is pinned
to core 1. Within a level the two servers alternate, in the order peer, Dialtone for the first seed and
Dialtone, peer for the second (ABBA), so that drift on the machine falls on both.

Load (see :mod:`bench.lean_load`): N calls of ``--seconds`` each, started evenly over ``--ramp`` seconds.
Each caller sends a 20 ms mu-law frame every 20 ms of real time (silence, 0xff, when not speaking) and
speaks every ~10 s (1.6-1.9 s of speech). The fake model answers each utterance 500 ms after it ends with
2.3 s of audio in 100 ms deltas, 5x faster than real time, in the session's output format. Calls dial
+15551230002, whose agent has no greeting, so that Dialtone does the same work as the peer. The caller
echoes each mark when the audio queued before it would have finished playing (a playback clock per call,
advanced by each media frame's duration, as Twilio plays), all pending marks at once on ``clear``.
Before the measured calls, one 3 s warm-up call (with one turn) runs on the fresh server; the idle RSS
is taken after it.

Figures, per run (one row each), over the steady window (from 1 s after the last call started streaming
until the first call ended, so set-up and tear-down fall outside):

- ``CPU-s / call-min``: user + sys CPU of the server's process tree (``/proc/<pid>/stat``) over the
  window, divided by the call-minutes in it (calls x window). ``ratio`` = Dialtone / peer, same level
  and seed. ``server CPU %``: of one core.
- ``up p50 / p99``: caller frame sent -> the fake model has its audio (the append that completes it), for
  the frames of the caller's speech: the latency the model's VAD and the conversation feel.
  ``up quiet``: the same for the other frames (silence): Dialtone lets quiet audio wait up to 100 ms to
  go in one append (``QUIET_BATCH_MS``; a louder frame sends it at once), so these are larger by design.
  ``down p50 / p99``: model delta sent -> the caller receives the first media frame of it. Socket to
  socket on 127.0.0.1, through the server; both ends are on this process's event loop, so any queueing
  in the generator is in these figures too (see ``gen CPU %`` and ``gen lag``).
- ``RSS/call``: (RSS of the server tree, the highest sample in the window - RSS after the warm-up) / N.
- ``gen CPU %``: this process over the window, % of one core; ``gen lag p99``: how late the generator sent
  its frames against their 20 ms schedule. With ``gen CPU %`` near 100 the latencies include the
  generator's own queueing.
- ``problems``: failed calls, model sockets not matched to a call or left open, deltas whose audio never
  reached the caller, frames whose audio never reached the model, media frames that straddle deltas,
  barge-ins (``clear``s: none are scripted), client events the load does not expect (truncate, cancel,
  response.create, item.create), errors the fake model sent, WARNING-or-worse lines in the server's log.

Options: ``--calls``, ``--seconds``, ``--ramp``, ``--seeds``, ``--servers``, ``--speed`` (delta pace),
``--no-pin``, ``--model-deflate`` (let the fake model accept permessage-deflate: the peer's ``websockets``
client offers it, Dialtone's does not; off by default), ``--workers N`` (Dialtone with ``WORKERS=N``
and ``WEB_CONCURRENCY=N`` in its environment, after the main table: a capacity sweep over
``--capacity-levels`` for the highest number of calls with p99 <= 20 ms both ways, the server on every
core but the generator's, or unpinned on a 2-core machine; skipped, and said so, when
``python -m service.serve`` runs one process), ``--live-tree`` (run Dialtone from the repository instead of
a copy of ``service/`` taken at the start: other sessions may be editing it), ``--keep-logs``,
``--no-append`` (do not append to ``bench/COMPARE.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import ClassVar

from bench import lean_load as ll
from bench.sockets import _stat_fields, process_tree  # /proc/<pid>/stat; [21]: rss pages

REPO_DIR = Path(__file__).resolve().parents[1]
PEER_DIR = Path("/work/shared/anchors/twilio-sample-python")
COMPARE_MD = REPO_DIR / "bench" / "COMPARE.md"
AUTH_TOKEN = "local-twilio-auth-token"
API_KEY = "sk-bench-test-key"
PUBLIC_BASE_URL = "https://dialtone.local.test"
AGENTS_FILE = REPO_DIR / "fixtures" / "agents.toml"
CALLED = "+15551230002"  # its agent has no greeting: both servers wait for the caller
SETTLE_S = 1.0
WARMUP_S = 3.0
P99_TARGET_MS = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
#: Variables either server would read: cleared from the inherited environment, only ours are passed.
SERVER_VARS = (
    "OPENAI_API_KEY",
    "OPENAI_REALTIME_URL",
    "OPENAI_REALTIME_MODEL",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "PUBLIC_BASE_URL",
    "AGENTS_FILE",
    "PORT",
    "LOG_LEVEL",
    "STREAM_TOKEN_SECRET",
    "STREAM_TOKEN_TTL_S",
    "STREAM_SIGNATURE",
    "RECORD_CALLS_DIR",
    "LOG_PAYLOADS",
    "TRUNCATE_SLACK_MS",
    "MODEL_CONNECT_TIMEOUT_S",
    "MODEL_RECONNECT_GIVE_UP_S",
    "ROLLOVER_MARGIN_S",
    "CONTEXT_REPLAY_TOKENS",
    "WEB_CONCURRENCY",
    "WORKERS",
    "TEMPERATURE",
)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WARNING_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})
COMPARE_HEADER = """# Dialtone vs the Twilio sample: measured results

Appended by `.venv/bin/python -m bench.compare` (the docstring of `bench/compare.py` says what each column
means). Compare within one run only: the figures drift with the machine.

"""
EXPECTED_CLIENT_EVENTS = frozenset({"session.update", "input_audio_buffer.append"})


# -- processes ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def machine_idle_s() -> float:
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / CLK_TCK


class ServerProc:
    """One server process (its own session and process group), pinned to ``cores`` when given."""

    live: ClassVar[set[ServerProc]] = set()

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        workdir: Path,
        port: int,
        ready_path: str,
        cores: set[int] | None,
        stdout_to_null: bool,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.port = port
        self.ready_path = ready_path
        self.cores = cores
        self.stdout_to_null = stdout_to_null
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    def start(self) -> None:
        cores = self.cores

        def pin() -> None:
            if cores:
                os.sched_setaffinity(0, cores)
            with contextlib.suppress(OSError, AttributeError):  # die with the benchmark, even on SIGKILL
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if self.stdout_to_null else log,
                stderr=log,
                start_new_session=True,
                preexec_fn=pin,
            )
        ServerProc.live.add(self)
        self.pids = [self.proc.pid]

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                status, _ = await asyncio.wait_for(ll.http_request(self.port, "GET", self.ready_path), 2)
                if status == 200:
                    self.refresh()
                    return
            await asyncio.sleep(0.1)
        raise TimeoutError(
            f"{self.name} did not answer {self.ready_path} in {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def refresh(self) -> list[int]:
        assert self.proc is not None
        self.pids = process_tree(self.proc.pid)
        return self.pids

    def cpu_s(self) -> float:
        ticks = 0
        for pid in self.refresh():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _stat_fields(pid)
                ticks += int(fields[11]) + int(fields[12])
        return ticks / CLK_TCK

    def rss_kb(self) -> int:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(_stat_fields(pid)[21]) * PAGE_KB
        return total

    def python_processes(self) -> int:
        count = 0
        for pid in self.refresh():
            with contextlib.suppress(OSError):
                if "python" in Path(f"/proc/{pid}/comm").read_text():
                    count += 1
        return count

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text("utf-8", "replace").splitlines()
        except OSError:
            return []

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(self.log_lines()[-n:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``grace_s``."""
        proc = self.proc
        if proc is None:
            return
        ServerProc.live.discard(self)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


@atexit.register
def _kill_live_servers() -> None:
    for server in list(ServerProc.live):
        server.stop()


def peer_python() -> str:
    """The peer's venv python, built by its setup.sh (idempotent)."""
    out = subprocess.run(
        ["bash", str(PEER_DIR / "setup.sh")], capture_output=True, text=True, timeout=900, check=True
    )
    return out.stdout.strip().splitlines()[-1]


# -- one run --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunResult:
    server: str
    calls: int
    seed: int
    workers: int = 1
    started: int = 0
    window_s: float = 0.0
    server_cpu_s: float = 0.0
    gen_cpu_s: float = 0.0
    idle_cpu_s: float = 0.0
    server_idle_pct: float = 0.0
    rss_idle_kb: int = 0
    rss_load_kb: int = 0
    up_ms: list[float] = field(default_factory=list)  # frames of speech
    up_quiet_ms: list[float] = field(default_factory=list)  # the other frames
    down_ms: list[float] = field(default_factory=list)
    down_first_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    responses: int = 0
    media: int = 0
    extra_media: int = 0
    marks: int = 0
    client_events: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    details: dict[str, str] = field(default_factory=dict)  # kind -> its first instance
    log_warnings: list[str] = field(default_factory=list)

    def problem(self, kind: str, detail: str, count: int = 1) -> None:
        self.problems[kind] += count
        self.details.setdefault(kind, detail)

    @property
    def call_minutes(self) -> float:
        return self.calls * self.window_s / 60

    @property
    def cpu_per_call_min(self) -> float:
        return self.server_cpu_s / self.call_minutes if self.call_minutes > 0 else float("nan")

    def pct(self, cpu_s: float) -> float:
        return 100 * cpu_s / self.window_s if self.window_s > 0 else float("nan")

    @property
    def rss_per_call_kb(self) -> float:
        return (self.rss_load_kb - self.rss_idle_kb) / self.calls


@dataclass(slots=True)
class Options:
    seconds: float
    ramp_s: float
    speed: float
    server_cores: set[int] | None
    peer_python: str
    workdir: Path
    code_dir: Path  # PYTHONPATH of the Dialtone server: a snapshot of service/, or the repository
    workers: int = 1


async def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class Load:
    """The generator's parts that live across runs: the fake model, the ticker and the audio."""

    def __init__(self, assets: ll.Assets, fake: ll.FakeRealtime, ticker: ll.Ticker) -> None:
        self.assets = assets
        self.fake = fake
        self.ticker = ticker

    async def calls(
        self,
        target: ll.Target,
        n: int,
        seconds: float,
        ramp_s: float,
        seed: int,
        scripts: Callable[[int], list[ll.Utterance]] | None = None,
        window: Callable[[list[ll.Call]], Awaitable[None]] | None = None,
    ) -> list[ll.Call]:
        """Place ``n`` calls over ``ramp_s``, stream them ``seconds``, hang up; every step time-limited."""
        assets = self.assets
        calls = [
            ll.Call(i, seconds, scripts(i) if scripts else ll.make_script(seed, i, seconds, assets), assets)
            for i in range(n)
        ]
        lock = asyncio.Lock()
        begin = time.monotonic() + 0.05
        placed = 0
        all_placed = asyncio.Event()
        failed: set[int] = set()

        async def life(call: ll.Call) -> None:
            nonlocal placed
            await sleep_until(begin + ramp_s * call.index / max(n - 1, 1))
            try:
                async with lock:
                    await ll.place_call(call, target, self.fake, call.index, timeout_s=15)
                    self.ticker.add(call, call.index)
            except Exception as exc:
                failed.add(call.index)
                call.problems.append(f"failed: {type(exc).__name__}: {exc}"[:300])
                self.fake.forget(call)
                if call.ws is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(call.ws.close(), 2)
                return
            finally:
                placed += 1
                if placed == n:
                    all_placed.set()
            receiver = asyncio.create_task(ll.receive(call))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.done_sending.wait(), seconds + ramp_s + 30)
            if not call.done_sending.is_set():
                call.problems.append("the generator did not finish sending the call's frames in time")
                with contextlib.suppress(ValueError):
                    self.ticker.active.remove(call)
            await ll.hang_up(call)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receiver, 5)

        async def windowed() -> None:
            await all_placed.wait()
            if window is not None:
                await window([c for c in calls if c.index not in failed])

        tasks = [asyncio.create_task(life(c)) for c in calls]
        watcher = asyncio.create_task(windowed())
        try:
            async with asyncio.timeout(ramp_s + seconds + 15 * n + 60):
                await asyncio.gather(*tasks)
                await watcher
        finally:
            for task in [*tasks, watcher]:
                task.cancel()
            await asyncio.gather(*tasks, watcher, return_exceptions=True)
        conns = [c.model for c in calls if c.model is not None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*(m.closed.wait() for m in conns))
        for m in conns:  # the server left it open: closed from the model's side, so that none pile up
            if not m.closed.is_set():
                m.left_open = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(m.ws.close(1000, "bench: call over"), 3)
        return calls


def make_server(
    kind: str, opts: Options, fake: ll.FakeRealtime, workers: int
) -> tuple[ServerProc, ll.Target]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS and not k.startswith("PYTHON")}
    workdir = Path(tempfile.mkdtemp(prefix=f"compare-{kind}-", dir=opts.workdir))
    if kind == "dialtone":
        env.update(
            OPENAI_API_KEY=API_KEY,
            OPENAI_REALTIME_URL=fake.url,
            TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            PUBLIC_BASE_URL=PUBLIC_BASE_URL,
            AGENTS_FILE=str(AGENTS_FILE),
            PORT=str(port),
            LOG_LEVEL="WARNING",
            PYTHONPATH=str(opts.code_dir),
        )
        if workers > 1:
            env["WEB_CONCURRENCY"] = env["WORKERS"] = str(workers)
        argv = [str(REPO_DIR / ".venv" / "bin" / "python"), "-m", "service.serve"]
        server = ServerProc(kind, argv, env, workdir, port, "/healthz", opts.server_cores, False)
        target = ll.Target(
            kind, port, "/twilio/voice", auth_token=AUTH_TOKEN, public_base_url=PUBLIC_BASE_URL, to=CALLED
        )
    else:
        env.update(OPENAI_API_KEY=API_KEY, OPENAI_REALTIME_URL=fake.url, PORT=str(port))
        argv = [opts.peer_python, str(PEER_DIR / "main.py")]
        server = ServerProc(kind, argv, env, workdir, port, "/", opts.server_cores, True)
        target = ll.Target(kind, port, "/incoming-call", auth_token=None, public_base_url=None, to=CALLED)
    return server, target


def warmup_script(_: int) -> list[ll.Utterance]:
    return [ll.Utterance(15, 0, 40)]  # 0.3 s in, 0.8 s of speech: one full turn within WARMUP_S


def log_warnings(kind: str, lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if not line.strip():
            continue
        if kind == "dialtone":
            try:
                level = json.loads(line).get("level")
            except (ValueError, AttributeError):
                level = "WARNING"  # not one of Dialtone's JSON lines: a traceback or a library's print
        else:  # uvicorn's log on stderr: "INFO:     ..." lines
            head = line.split(":", 1)[0].strip()
            level = head if head in WARNING_LEVELS else ("INFO" if head == "INFO" else "WARNING")
        if level in WARNING_LEVELS:
            out.append(line[:300])
    return out


async def run_one(kind: str, n: int, seed: int, opts: Options, load: Load, workers: int = 1) -> RunResult:
    result = RunResult(kind, n, seed, workers)
    server, target = make_server(kind, opts, load.fake, workers)
    unmatched0 = load.fake.unmatched
    server.start()
    try:
        await server.wait_ready()
        if workers > 1 and server.python_processes() < 2:
            result.problem("workers", f"WORKERS={workers} gave one process")
        warm = await load.calls(target, 1, WARMUP_S, 0.0, seed, scripts=warmup_script)
        for call in warm:
            for p in call.problems:
                result.problem("warm-up", p)
        await asyncio.sleep(1.0)
        t0, c0 = time.monotonic(), server.cpu_s()
        await asyncio.sleep(1.0)
        result.server_idle_pct = 100 * (server.cpu_s() - c0) / (time.monotonic() - t0)
        result.rss_idle_kb = server.rss_kb()

        async def window(calls: list[ll.Call]) -> None:
            if not calls:
                return
            start = max(c.t0 for c in calls) + SETTLE_S
            end = min(c.t0 for c in calls) + opts.seconds - 0.05
            if end - start < 1.0:
                result.problem(
                    "no window", f"steady window {end - start:.1f} s: raise --seconds or lower --ramp"
                )
                return
            await sleep_until(start)
            p0 = (time.monotonic(), server.cpu_s(), time.process_time(), machine_idle_s())
            rss = server.rss_kb()
            while time.monotonic() < end - 0.01:
                await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
                rss = max(rss, server.rss_kb())
            p1 = (time.monotonic(), server.cpu_s(), time.process_time(), machine_idle_s())
            result.window_s = p1[0] - p0[0]
            result.server_cpu_s = p1[1] - p0[1]
            result.gen_cpu_s = p1[2] - p0[2]
            result.idle_cpu_s = p1[3] - p0[3]
            result.rss_load_kb = rss
            windows.append((p0[0], p1[0]))

        windows: list[tuple[float, float]] = []
        calls = await load.calls(target, n, opts.seconds, opts.ramp_s, seed, window=window)
        collect(result, calls, windows[0] if windows else None, load.fake.unmatched - unmatched0)
    except asyncio.CancelledError:  # Ctrl-C or SIGTERM: stop the server at once
        await asyncio.to_thread(server.stop, 1.0)
        raise
    except Exception as exc:
        result.problem("run failed", f"{type(exc).__name__}: {exc}"[:400])
    finally:
        await asyncio.to_thread(server.stop)
        result.log_warnings = log_warnings(kind, server.log_lines())
        if result.log_warnings:
            result.problem("server log warnings", result.log_warnings[0], len(result.log_warnings))
    return result


def collect(
    result: RunResult, calls: list[ll.Call], window: tuple[float, float] | None, unmatched: int
) -> None:
    """Latencies within the window, counters and problems of one run."""
    if unmatched:
        result.problem("unmatched model sockets", f"{unmatched} model socket(s) not tied to a call")
    lo, hi = window if window is not None else (float("-inf"), float("inf"))
    for call in calls:
        for p in call.problems:
            result.problem("failed calls" if p.startswith("failed") else "caller", p)
        if call.ws is None or call.t0 != call.t0:  # never streamed
            continue
        result.started += 1
        send_t, recv_t, lag = call.send_t, call.recv_t, call.lag
        missing = 0
        for k in range(len(send_t)):
            s = send_t[k]
            if lo <= s <= hi:
                r = recv_t[k]
                if r != r:
                    missing += 1
                elif k in call.speech:
                    result.up_ms.append((r - s) * 1000)
                else:
                    result.up_quiet_ms.append((r - s) * 1000)
                result.lag_ms.append(lag[k] * 1000)
        if missing:
            result.problem(
                "frames never appended", f"call {call.index}: {missing} frames in the window", missing
            )
        for sent, recv, first in zip(call.down_sent, call.down_recv, call.down_first, strict=True):
            if lo <= sent <= hi:
                result.down_ms.append((recv - sent) * 1000)
                if first:
                    result.down_first_ms.append((recv - sent) * 1000)
        deltas = sum(len(t) for t in call.resp_sent)
        if deltas != len(call.down_sent):
            result.problem(
                "deltas not heard",
                f"call {call.index}: {deltas - len(call.down_sent)} of {deltas}",
                deltas - len(call.down_sent),
            )
        if call.misaligned:
            result.problem(
                "media straddling deltas", f"call {call.index}: {call.misaligned}", call.misaligned
            )
        if call.clears:
            result.problem("clears (barge-ins)", f"call {call.index}: {call.clears}", call.clears)
        if call.backpressure:
            result.problem(
                "backpressure", f"call {call.index}: {call.backpressure} sends waited", call.backpressure
            )
        result.media += call.media_rx
        result.extra_media += call.extra_media
        result.marks += call.marks_echoed
        model = call.model
        if model is None:
            result.problem("no model socket", f"call {call.index}")
            continue
        result.responses += model.responses
        result.client_events.update(model.client_events)
        expected = len(call.script)
        if model.responses != expected:
            result.problem(
                "responses", f"call {call.index}: {model.responses} responses, {expected} scripted"
            )
        for anomaly in model.anomalies[:3]:
            result.problem("model anomalies", f"call {call.index}: {anomaly}")
        for code, count in model.errors_sent.items():
            result.problem("model errors sent", f"call {call.index}: {code}", count)
        if model.left_open:
            result.problem("model sockets left open", f"call {call.index}: 5 s after its end")
    unexpected = {k: v for k, v in result.client_events.items() if k not in EXPECTED_CLIENT_EVENTS}
    for kind, count in unexpected.items():
        result.problem("unexpected client events", f"{kind} x{count}", count)


# -- report ---------------------------------------------------------------------------------------------

COLUMNS = (
    "server",
    "calls",
    "seed",
    "window s",
    "server CPU %",
    "CPU-s / call-min",
    "ratio D/P",
    "up p50 / p99 ms",
    "up quiet p50 / p99 ms",
    "down p50 / p99 ms",
    "RSS/call KB",
    "gen CPU %",
    "gen lag p99 ms",
    "machine idle %",
    "problems",
)
SUMMARY_COLUMNS = (
    "calls",
    "runs",
    "peer CPU-s / call-min",
    "Dialtone CPU-s / call-min",
    "ratio D/P",
    "peer up p50 / p99",
    "Dialtone up p50 / p99",
    "peer down p50 / p99",
    "Dialtone down p50 / p99",
    "peer RSS/call KB",
    "Dialtone RSS/call KB",
    "gen CPU % (max)",
)


def p(values: list[float], q: float) -> float:
    return ll.percentile(values, q)


def lat(values: list[float]) -> str:
    return f"{p(values, 50):.1f} / {p(values, 99):.1f}" if values else "-"


def md_line(cells: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def md_table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return [md_line(columns), md_line(["---"] + ["---:"] * (len(columns) - 2) + ["---"]), *map(md_line, rows)]


def problems_cell(r: RunResult) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(r.problems.items())) or "none"


def pair_of(r: RunResult, results: list[RunResult]) -> RunResult | None:
    return next(
        (
            o
            for o in results
            if o.server == "peer" and o.calls == r.calls and o.seed == r.seed and o.window_s > 0
        ),
        None,
    )


def row(r: RunResult, results: list[RunResult]) -> list[str]:
    peer = pair_of(r, results) if r.server == "dialtone" else None
    ratio = f"{r.cpu_per_call_min / peer.cpu_per_call_min:.2f}" if peer and r.window_s > 0 else "-"
    ok = r.window_s > 0
    return [
        r.server + (f" x{r.workers}" if r.workers > 1 else ""),
        str(r.calls),
        str(r.seed),
        f"{r.window_s:.1f}" if ok else "-",
        f"{r.pct(r.server_cpu_s):.1f}" if ok else "-",
        f"{r.cpu_per_call_min:.3f}" if ok else "-",
        ratio,
        lat(r.up_ms),
        lat(r.up_quiet_ms),
        lat(r.down_ms),
        f"{r.rss_per_call_kb:.0f}" if ok else "-",
        f"{r.pct(r.gen_cpu_s):.0f}" if ok else "-",
        f"{p(r.lag_ms, 99):.1f}" if r.lag_ms else "-",
        f"{r.pct(r.idle_cpu_s) / (os.cpu_count() or 1):.0f}" if ok else "-",
        problems_cell(r),
    ]


@dataclass(slots=True)
class Pooled:
    runs: int
    cpu: float  # CPU-s per call-minute
    up: list[float]
    down: list[float]
    rss: float  # KB per call, mean over runs
    gen: float  # generator CPU %, the highest run


def pooled(results: list[RunResult], server: str, calls: int) -> Pooled | None:
    rs = [r for r in results if r.server == server and r.calls == calls and r.window_s > 0 and r.workers == 1]
    if not rs:
        return None
    return Pooled(
        runs=len(rs),
        cpu=sum(r.server_cpu_s for r in rs) / sum(r.call_minutes for r in rs),
        up=[x for r in rs for x in r.up_ms],
        down=[x for r in rs for x in r.down_ms],
        rss=sum(r.rss_per_call_kb for r in rs) / len(rs),
        gen=max(r.pct(r.gen_cpu_s) for r in rs),
    )


def summary_rows(results: list[RunResult], levels: list[int]) -> list[list[str]]:
    rows = []
    for n in levels:
        a, b = pooled(results, "peer", n), pooled(results, "dialtone", n)
        if a is None and b is None:
            continue
        gen = max(d.gen for d in (a, b) if d is not None)
        rows.append(
            [
                str(n),
                f"{a.runs if a else 0} + {b.runs if b else 0}",
                f"{a.cpu:.3f}" if a else "-",
                f"{b.cpu:.3f}" if b else "-",
                f"{b.cpu / a.cpu:.2f}" if a and b else "-",
                lat(a.up) if a else "-",
                lat(b.up) if b else "-",
                lat(a.down) if a else "-",
                lat(b.down) if b else "-",
                f"{a.rss:.0f}" if a else "-",
                f"{b.rss:.0f}" if b else "-",
                f"{gen:.0f}",
            ]
        )
    return rows


def capacity_line(results: list[RunResult], levels: list[int], workers: int = 1) -> str:
    held = []
    for n in sorted(levels):
        rs = [
            r
            for r in results
            if r.server == "dialtone" and r.calls == n and r.window_s > 0 and r.workers == workers
        ]
        if not rs:
            continue
        up = [x for r in rs for x in r.up_ms]
        down = [x for r in rs for x in r.down_ms]
        if up and down:
            held.append((n, p(up, 99), p(down, 99)))
    ok = [n for n, u, d in held if u <= P99_TARGET_MS and d <= P99_TARGET_MS]
    detail = "; ".join(f"{n} calls: up p99 {u:.1f} ms, down p99 {d:.1f} ms" for n, u, d in held)
    best = max(ok) if ok else None
    who = f"Dialtone with {workers} worker(s)" if workers > 1 else "Dialtone (one process, one core)"
    if best is None:
        return f"{who}: no level measured held p99 <= {P99_TARGET_MS:.0f} ms both ways ({detail})."
    return f"{who}: highest level with p99 <= {P99_TARGET_MS:.0f} ms both ways: {best} calls ({detail})."


def git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def snapshot_service(dest: Path) -> str:
    """Copy service/ (the working tree, as it is now) to ``dest``/service; describe what was copied.

    Other sessions edit service/ while the benchmark runs: every Dialtone run of one benchmark then runs
    the same code.
    """
    shutil.copytree(REPO_DIR / "service", dest / "service", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for f in sorted((dest / "service").rglob("*.py")):
        digest.update(str(f.relative_to(dest)).encode() + b"\0" + f.read_bytes())
    return describe_code(
        f"a copy of service/ taken at the start (sha256 {digest.hexdigest()[:12]} of its .py files)"
    )


def describe_code(what: str) -> str:
    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "service").splitlines()
    changed = f" + {len(dirty)} uncommitted change(s) under service/" if dirty else ""
    return f"Dialtone: {what}; commit {head}{changed}"


def machine_line() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} x {model}, Linux {platform.release()}, Python "
        f"{platform.python_version()} (generator and Dialtone), websockets {metadata.version('websockets')} "
        "(generator); "
        f"load average at start {load}"
    )


# -- main -----------------------------------------------------------------------------------------------


def reads_workers(code_dir: Path) -> str:
    """Which of the two variables the measured code reads, and where."""
    found = []
    for var in ("WORKERS", "WEB_CONCURRENCY"):
        users = [
            str(f.relative_to(code_dir))
            for f in sorted((code_dir / "service").rglob("*.py"))
            if f'"{var}"' in f.read_text("utf-8", "replace")
        ]
        if users:
            found.append(f"{var} is read in {', '.join(users)}")
    return "; ".join(found) or "nothing under service/ reads WORKERS or WEB_CONCURRENCY"


async def probe_workers(opts: Options, load: Load, workers: int) -> tuple[bool, str]:
    server, _ = make_server("dialtone", opts, load.fake, workers)
    server.start()
    try:
        await server.wait_ready()
        await asyncio.sleep(1.0)
        count = server.python_processes()
    finally:
        await asyncio.to_thread(server.stop)
    if count < 2:
        return False, (
            f"python -m service.serve does not run workers: with WORKERS={workers} and "
            f"WEB_CONCURRENCY={workers} it ran {count} python process ({reads_workers(opts.code_dir)}); "
            "the multi-core figure is skipped."
        )
    return True, f"WORKERS={workers}: {count} python processes ({reads_workers(opts.code_dir)})."


async def bench(args: argparse.Namespace) -> tuple[list[RunResult], list[str], str]:
    notes: list[str] = []
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)  # as Ctrl-C does
    cores = sorted(os.sched_getaffinity(0))
    server_cores: set[int] | None = None
    if args.pin and len(cores) >= 2:
        server_cores = {cores[0]}
        os.sched_setaffinity(0, {cores[1]})
        notes.append(
            f"Servers pinned to core {cores[0]}, the load generator (this process) to core {cores[1]}."
        )
    else:
        notes.append(f"Not pinned ({'--no-pin' if not args.pin else f'{len(cores)} usable core(s)'}).")
    peer_py = await asyncio.to_thread(peer_python) if "peer" in args.servers else ""
    workroot = Path(tempfile.mkdtemp(prefix="dialtone-compare-"))
    if args.live_tree:
        code_dir, code = REPO_DIR, describe_code("the repository's working tree, as each server started")
    else:
        code_dir = workroot / "code"
        code = snapshot_service(code_dir)
    opts = Options(args.seconds, args.ramp, args.speed, server_cores, peer_py, workroot, code_dir)
    assets = ll.Assets()
    fake = ll.FakeRealtime(assets, speed=args.speed, deflate=args.model_deflate)
    await fake.start()
    ticker = ll.Ticker()
    ticker.start()
    load = Load(assets, fake, ticker)
    results: list[RunResult] = []
    try:
        print(md_line(COLUMNS), flush=True)
        print(md_line(["---"] + ["---:"] * (len(COLUMNS) - 2) + ["---"]), flush=True)
        for n in args.calls:
            for s, seed in enumerate(args.seeds):
                order = [x for x in ("peer", "dialtone") if x in args.servers]
                for kind in order if s % 2 == 0 else order[::-1]:
                    async with asyncio.timeout(args.ramp + args.seconds + WARMUP_S + 15 * n + 150):
                        r = await run_one(kind, n, seed, opts, load)
                    results.append(r)
                    print(md_line(row(r, results)), flush=True)
        if args.workers == 1:
            notes.append(f"Multi-core figure not measured (it needs --workers N); {reads_workers(code_dir)}.")
        if args.workers > 1 and "dialtone" in args.servers:
            supported, message = await probe_workers(opts, load, args.workers)
            notes.append(message)
            print(message, flush=True)
            if supported:
                opts.server_cores = set(cores) - {cores[1]} if len(cores) > 2 else None
                notes.append(
                    f"Capacity sweep: Dialtone x{args.workers} on cores {sorted(opts.server_cores)}"
                    if opts.server_cores
                    else f"Capacity sweep: Dialtone x{args.workers} unpinned, sharing the {len(cores)} cores "
                    "with the generator (its latencies include that contention)"
                )
                for n in args.capacity_levels:
                    async with asyncio.timeout(args.ramp + args.seconds + WARMUP_S + 15 * n + 150):
                        r = await run_one("dialtone", n, args.seeds[0], opts, load, workers=args.workers)
                    results.append(r)
                    print(md_line(row(r, results)), flush=True)
                    if p(r.up_ms, 99) > P99_TARGET_MS or p(r.down_ms, 99) > P99_TARGET_MS:
                        break
                notes.append(capacity_line(results, args.capacity_levels, args.workers))
    finally:
        await ticker.stop()
        await fake.stop()
        for server in list(ServerProc.live):
            await asyncio.to_thread(server.stop)
        if args.keep_logs:
            print(f"server logs kept in {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    return results, notes, code


def report(
    args: argparse.Namespace, results: list[RunResult], notes: list[str], code: str, argv: list[str]
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = ".venv/bin/python -m bench.compare " + " ".join(shlex.quote(a) for a in argv)
    lines = [
        f"## {now}",
        "",
        f"Machine: {machine_line()}.",
        "",
        f"{code}; peer: {PEER_DIR} (its pinned requirements).",
        "",
        f"Command (from the repository root): `{command.strip()}`",
        "",
        f"Load: {args.seconds:g} s calls started over {args.ramp:g} s, an utterance every ~10 s, replies of "
        f"{ll.REPLY_S:g} s in {ll.DELTA_MS} ms deltas at {args.speed:g}x real time; seeds "
        f"{', '.join(map(str, args.seeds))}; fake model permessage-deflate "
        f"{'accepted' if args.model_deflate else 'refused'}.",
        "",
        "Per run:",
        "",
        *md_table(COLUMNS, [row(r, results) for r in results]),
        "",
        "Pooled over seeds (CPU: total CPU-s / total call-minutes; latencies in ms, all samples pooled):",
        "",
        *md_table(SUMMARY_COLUMNS, summary_rows(results, args.calls)),
        "",
    ]
    notes = [*notes, capacity_line(results, args.calls)]
    for r in results:
        if r.window_s > 0 and r.pct(r.gen_cpu_s) >= 90:
            notes.append(
                f"{r.server} at {r.calls} calls (seed {r.seed}): the generator used "
                f"{r.pct(r.gen_cpu_s):.0f} % of "
                "its core: the latencies include its own queueing."
            )
        if r.window_s > 0 and r.pct(r.server_cpu_s) >= 95:
            notes.append(
                f"{r.server} at {r.calls} calls (seed {r.seed}): the server was saturated "
                f"({r.pct(r.server_cpu_s):.0f} % of its core)."
            )
    first_delta = [
        f"{r.server} {r.calls}/{r.seed}: {lat(r.down_first_ms)}"
        for r in results
        if r.down_first_ms and r.workers == 1
    ]
    if first_delta:
        notes.append("First delta of each response only, down p50 / p99 ms: " + "; ".join(first_delta) + ".")
    notes.append(
        "RSS/call is (RSS in the window - RSS after the warm-up call) / N: at 1 call it is within the noise "
        "(the warm-up call's freed memory is reused)."
    )
    idle = [f"{r.server} {r.calls}/{r.seed}: {r.server_idle_pct:.1f} %" for r in results]
    notes.append("Server CPU when idle after the warm-up (% of a core): " + "; ".join(idle) + ".")
    leaks = [r for r in results if r.server == "peer" and r.problems.get("model sockets left open")]
    if leaks:
        notes.append(
            "The peer leaves its model socket open when the Twilio stream ends (in every peer run above): "
            "starlette's `WebSocket.iter_text()` swallows the disconnect, so `receive_from_twilio` returns "
            "without closing the OpenAI socket and `send_to_twilio` waits on it for ever. The fake model "
            "closes those sockets 5 s after the call, outside the window."
        )
    extra = [
        f"{r.server} {r.calls}/{r.seed}: {r.extra_media / r.responses:.2f}" for r in results if r.responses
    ]
    if extra:
        notes.append(
            "Media frames per response beyond the reply's audio (Dialtone: its end-of-item frame, the "
            "transcoder's tail padded to 20 ms): " + "; ".join(extra) + "."
        )
    lines += [f"- {n}" for n in notes]
    if any(r.details for r in results):
        lines += ["", "Problems (count in the run, then the first instance):", ""]
        for r in results:
            for kind, first in r.details.items():
                count = r.problems[kind]
                lines.append(f"- {r.server} {r.calls} calls, seed {r.seed}: {kind} x{count}, first: {first}")
    warned = [r for r in results if r.log_warnings]
    if warned:
        lines += ["", "Server log lines at WARNING or above (first three per run):", ""]
        for r in warned:
            for w in r.log_warnings[:3]:
                lines.append(f"- {r.server} {r.calls}/{r.seed}: `{w[:240]}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="Dialtone vs the Twilio sample under the same load.")
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 25, 50], help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each call")
    parser.add_argument("--ramp", type=float, default=5.0, help="calls start evenly over this many seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="script seeds (ABBA order)")
    parser.add_argument("--servers", nargs="+", choices=["peer", "dialtone"], default=["peer", "dialtone"])
    parser.add_argument("--speed", type=float, default=5.0, help="model audio pace, x real time")
    parser.add_argument("--workers", type=int, default=1, help="Dialtone processes (WEB_CONCURRENCY)")
    parser.add_argument("--capacity-levels", type=int, nargs="+", default=[25, 50, 75, 100, 150])
    parser.add_argument("--model-deflate", action="store_true", help="fake model accepts permessage-deflate")
    parser.add_argument(
        "--live-tree",
        action="store_true",
        help="run Dialtone from the repository, not a snapshot of service/",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (a temp dir)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and generator")
    parser.add_argument(
        "--no-append", dest="append", action="store_false", help=f"do not append to {COMPARE_MD}"
    )
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.calls) or args.seconds < 5 or args.ramp < 0 or args.workers < 1:
        parser.error("--calls >= 1, --seconds >= 5, --ramp >= 0, --workers >= 1")
    runs = len(args.calls) * len(args.seeds) * len(args.servers)
    estimate = runs * (args.seconds + args.ramp + WARMUP_S + 8) / 60
    print(
        f"{runs} runs, about {estimate:.0f} minutes. Reproduce: .venv/bin/python -m bench.compare "
        f"{' '.join(shlex.quote(a) for a in argv)}",
        flush=True,
    )
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    try:
        results, notes, code = asyncio.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        _kill_live_servers()
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    text = report(args, results, notes, code, argv)
    print()
    print(text)
    if args.append:
        new = not COMPARE_MD.exists()
        with open(COMPARE_MD, "a", encoding="utf-8") as f:
            if new:
                f.write(COMPARE_HEADER)
            f.write(text + "\n")
        print(f"appended to {COMPARE_MD.relative_to(REPO_DIR)}")
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
