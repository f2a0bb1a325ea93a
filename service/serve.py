"""``make serve`` / the Procfile: run Dialtone under hypercorn, configured from the environment or ``.env``.

    python -m service.serve          # binds 0.0.0.0:$PORT (default 8080)

Settings and the agents file are checked before anything listens: every problem is printed at once and
the exit code is 2. Hypercorn's own log lines go through Dialtone's logging (JSON when not on a TTY), once
each. SIGTERM and SIGINT stop the server gracefully: calls in progress get a few seconds to end.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from service.config import load_settings
from service.errors import ConfigError
from service.logs import configure_logging
from service.web import wsfix
from service.web.app import create_app, secrets_of

log = logging.getLogger(__name__)
GRACEFUL_TIMEOUT_S = 5.0


async def _serve(app: Quart, config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, config, shutdown_trigger=stop.wait)


def main() -> int:
    try:
        settings = load_settings()
        configure_logging(settings.log_level, secrets=secrets_of(settings))
        app = create_app(settings)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    config = Config()
    config.bind = [f"0.0.0.0:{settings.port}"]
    config.errorlog = logging.getLogger("hypercorn.error")  # a Logger: hypercorn adds no handler of its own
    config.accesslog = None  # the per-call summary lines are the useful record
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    log.info("Dialtone on port %d, public URL %s", settings.port, settings.public_base_url)
    wsfix.install()  # a websocket hypercorn fails gets a close frame with the code (1007 for bad UTF-8)
    asyncio.run(_serve(app, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
