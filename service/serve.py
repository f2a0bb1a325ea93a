"""``make serve`` / the Procfile: run Dialtone, configured from the environment or ``.env``.

    python -m service.serve          # binds 0.0.0.0:$PORT (default 8080), $WORKERS processes (default 1)

Settings and the agents file are checked before anything listens: every problem is printed at once and
the exit code is 2. One port serves everything (:mod:`service.web.serving`): the media streams on the
lean path, the webhooks through hypercorn. Hypercorn's own log lines go through Dialtone's logging
(JSON when not on a TTY).

With ``WORKERS=N`` (N > 1) this process supervises N worker processes, each a whole server bound to the
same port with ``SO_REUSEPORT`` (the kernel spreads connections across them): one per core. A worker
that dies is started again. A call lives in one worker, from its webhook to its end only if the
webhook and the stream land on the same one, which nothing requires: a stream's token is checked
statelessly by whichever worker gets it (see the README on what the workers share).

SIGTERM and SIGINT stop the server (the supervisor passes them to its workers): new calls are refused
(the webhook answers busy, ``/readyz`` 503), live calls go on for up to ``DRAIN_TIMEOUT_S``, the rest
are ended politely (the caller hears that the line closes), then the server stops listening, delivers
its webhooks and writes every call record before it exits. A second signal ends the drain at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from typing import Any

from prometheus_client import multiprocess
from quart import Quart

from service.config import Settings, load_settings
from service.errors import ConfigError
from service.logs import configure_logging
from service.runtime.metrics import MULTIPROC_ENV
from service.web.app import create_app, secrets_of
from service.web.serving import Service

log = logging.getLogger(__name__)
WORKER_FLAG = "--worker"
RESTART_PAUSE_S = 1.0


async def _serve(app: Quart, settings: Settings, *, reuse_port: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    service = Service(app, host="0.0.0.0", port=settings.port, reuse_port=reuse_port)

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: ending the drain now")
            service.drain_cut.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await service.start()
    freeze_startup_heap()
    pid, url = os.getpid(), settings.public_base_url
    log.info("Dialtone on port %d (pid %d), public URL %s", service.port, pid, url)
    try:
        await stop.wait()
    finally:
        log.info("stopping: new calls refused, draining for up to %.0f s", settings.drain_timeout_s)
        await service.stop(drain_timeout_s=settings.drain_timeout_s)


def freeze_startup_heap() -> None:
    """Move everything alive after start-up (the modules, the app: some 120,000 objects) out of the
    garbage collector's reach. They live as long as the process, and a full collection walking them
    stops the event loop, so every call at once, for 60-70 ms on this project's VM; after the freeze,
    well under a millisecond (``bench/TOOLS.md``)."""
    gc.collect()
    gc.freeze()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (Linux, macOS): its C transports and loop cost a fraction of
    asyncio's per message; else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def supervise(workers: int) -> int:
    """Run ``workers`` worker processes until SIGTERM/SIGINT; start again any that dies."""
    command = [sys.executable, "-m", "service.serve", WORKER_FLAG]
    shared = os.environ.get(MULTIPROC_ENV)
    metrics_dir = shared or tempfile.mkdtemp(prefix="dialtone-metrics-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir}  # /metrics on any worker answers for all of them
    procs = [subprocess.Popen(command, env=env) for _ in range(workers)]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("supervising %d workers", workers)
    while not stopping:
        time.sleep(0.5)
        for i, proc in enumerate(procs):
            if proc.poll() is not None and not stopping:
                log.error("worker %d exited with %s; starting it again", proc.pid, proc.returncode)
                # its live gauges no longer count
                multiprocess.mark_process_dead(proc.pid, metrics_dir)  # type: ignore[no-untyped-call]
                time.sleep(RESTART_PAUSE_S)
                procs[i] = subprocess.Popen(command, env=env)
    codes = [proc.wait() for proc in procs]
    if shared is None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = load_settings()
        configure_logging(settings.log_level, secrets=secrets_of(settings))
        app = create_app(settings)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    for name in ("websockets.server", "websockets.client"):
        logging.getLogger(name).setLevel(logging.WARNING)  # not a line per connection
    worker = WORKER_FLAG in args
    if settings.workers > 1 and not worker:
        return supervise(settings.workers)
    run(_serve(app, settings, reuse_port=worker))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
