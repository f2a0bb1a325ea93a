"""``make serve`` / the Procfile: run Dialtone under hypercorn, configured from the environment or ``.env``.

    python -m service.serve          # binds 0.0.0.0:$PORT (default 8080)

Settings are checked before anything listens: every problem is printed at once and the exit code is 2.
Hypercorn's own log lines go through Dialtone's logging (JSON when not on a TTY), once each. SIGTERM and
SIGINT stop the server gracefully: calls in progress get a few seconds to end.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

from service.app import create_app, secrets_of
from service.config import Settings, load_settings
from service.errors import ConfigError
from service.logs import configure_logging

log = logging.getLogger(__name__)
GRACEFUL_TIMEOUT_S = 5.0


async def _run(settings: Settings, config: Config, host_port: str) -> None:
    configure_logging(settings.log_level, secrets=secrets_of(settings))
    app = create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("Dialtone listening on %s (public URL %s)", host_port, settings.public_base_url)
    await serve(app, config, shutdown_trigger=stop.wait)


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    config = Config()
    host_port = f"0.0.0.0:{settings.port}"
    config.bind = [host_port]
    config.errorlog = logging.getLogger("hypercorn.error")  # a Logger: hypercorn adds no handler of its own
    config.accesslog = None  # Twilio polls nothing; the call summary lines are the useful record
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    asyncio.run(_run(settings, config, host_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
