"""Post-call webhooks: each call's record, POSTed as JSON, signed, retried; never on the call's path.

    sender = WebhookSender(secret)            # one per process
    sender.send(url, record_doc)              # O(1): queued (dropped with a warning when the queue is full)
    await sender.close(timeout_s)             # at shutdown: deliver what can be, log what cannot

Signed like tool requests (:mod:`service.runtime.tools`): ``X-Dialtone-Timestamp`` and
``X-Dialtone-Signature`` (hex HMAC-SHA256 of ``timestamp + "." + body`` with ``TOOLS_SIGNING_SECRET``).
A delivery that fails for a reason worth retrying (no connection, a timeout, HTTP 408, 429 or 5xx) is
tried again after 1, 2, 4, 8 and 16 s (a jitter of up to a quarter added); any other 4xx is final. A
few deliveries run at once, so a slow receiver holds up nothing but its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.runtime.tools import SIGNATURE_HEADER, TIMESTAMP_HEADER, USER_AGENT, sign

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
TIMEOUT_S = 10.0
MAX_QUEUE = 1_000
SENDERS = 4
RETRYABLE = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class Delivery:
    url: str
    body: bytes
    call_sid: str


@dataclass(slots=True)
class WebhookStats:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    attempts: int = 0


class WebhookSender:
    """Delivers post-call webhooks from a bounded queue (see the module docstring)."""

    def __init__(
        self,
        secret: bytes,
        *,
        delays_s: tuple[float, ...] = RETRY_DELAYS_S,
        timeout_s: float = TIMEOUT_S,
        max_queue: int = MAX_QUEUE,
        rng: random.Random | None = None,
    ) -> None:
        self._secret = secret
        self._delays = delays_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(max_queue)
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.stats = WebhookStats()

    def send(self, url: str, doc: Mapping[str, Any]) -> bool:
        """Queue the record ``doc`` for ``url``; False (and a warning) when the queue is full."""
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        delivery = Delivery(url, body, str(doc.get("call_sid") or ""))
        if not self._workers:
            self._start()
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.warning("post-call webhook for %s dropped: %d waiting already", delivery.call_sid, MAX_QUEUE)
            return False
        return True

    def _start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, trust_env=False)
        self._workers = [asyncio.get_running_loop().create_task(self._work()) for _ in range(SENDERS)]

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                await self._deliver(delivery)
            finally:
                self._queue.task_done()

    async def _deliver(self, delivery: Delivery) -> None:
        for attempt in range(len(self._delays) + 1):
            self.stats.attempts += 1
            problem, retry = await self._post(delivery)
            if problem is None:
                self.stats.delivered += 1
                log.info("post-call webhook delivered (attempt %d)", attempt + 1)
                return
            if not retry or attempt == len(self._delays):
                self.stats.failed += 1
                log.warning("post-call webhook for %s not delivered: %s", delivery.call_sid, problem)
                return
            delay = self._delays[attempt]
            await asyncio.sleep(delay + self._rng.uniform(0, delay / 4))

    async def _post(self, delivery: Delivery) -> tuple[str | None, bool]:
        """(None, _) when delivered; else (what went wrong, whether to try again)."""
        assert self._session is not None
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, delivery.body),
        }
        try:
            async with self._session.post(
                delivery.url, data=delivery.body, headers=headers, timeout=self._timeout
            ) as reply:
                status = reply.status
        except TimeoutError:
            return "timeout", True
        except (aiohttp.ClientError, OSError) as exc:
            return type(exc).__name__, True
        if 200 <= status < 300:
            return None, False
        return f"HTTP {status}", status >= 500 or status in RETRYABLE

    async def close(self, timeout_s: float = 5.0) -> int:
        """Deliver what is queued within ``timeout_s``; the number left undelivered (each logged)."""
        if not self._workers:
            return 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        left = self._queue.qsize()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while not self._queue.empty():
            delivery = self._queue.get_nowait()
            log.warning("post-call webhook for %s not delivered: shutting down", delivery.call_sid)
        if self._session is not None:
            await self._session.close()
        return left
