"""``make serve`` / the Procfile: run Dialtone, configured from the environment or ``.env``.

    python -m service.serve          # binds 0.0.0.0:$PORT (default 8080)

Settings and the agents file are checked before anything listens: every problem is printed at once and
the exit code is 2. One port serves everything (:mod:`service.web.serving`): the media streams on the
lean path, the webhooks through hypercorn. Hypercorn's own log lines go through Dialtone's logging
(JSON when not on a TTY). SIGTERM and SIGINT stop the server: it stops listening, ends the calls still
running (each logs its summary) and exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from quart import Quart

from service.config import Settings, load_settings
from service.errors import ConfigError
from service.logs import configure_logging
from service.web.app import create_app, secrets_of
from service.web.serving import Service

log = logging.getLogger(__name__)


async def _serve(app: Quart, settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = Service(app, host="0.0.0.0", port=settings.port)
    await service.start()
    log.info("Dialtone on port %d, public URL %s", service.port, settings.public_base_url)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await service.stop()


def main() -> int:
    try:
        settings = load_settings()
        configure_logging(settings.log_level, secrets=secrets_of(settings))
        app = create_app(settings)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    for name in ("websockets.server", "websockets.client"):
        logging.getLogger(name).setLevel(logging.WARNING)  # not a line per connection
    run(_serve(app, settings))
    return 0


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (Linux, macOS): its C transports and loop cost a fraction of
    asyncio's per message; else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


if __name__ == "__main__":
    raise SystemExit(main())
