"""Post-call analysis over HTTP: ``POST {OPENAI_API_BASE_URL}/responses``, off every call's path.

    analyst = Analyst(settings.openai_api_base_url, settings.openai_api_headers)   # one per process
    result = await analyst.analyse(record, agent.analysis)   # Analysis | AnalysisFailed, never raises
    await analyst.close()

What is sent and how the answer is read: :mod:`service.core.analysis` (pure). Here: a few requests at
once (``concurrency``; the others wait their turn, at most ``max_waiting`` of them, the rest are
skipped), each analysis bounded by ``timeout_s`` as a whole, one retry after HTTP 429 or 5xx or a
failed connection (after ``Retry-After`` when it says, up to ``MAX_RETRY_AFTER_S``). The key goes in
the headers only; what is logged is the call, the model and what went wrong (an HTTP status and
OpenAI's error code), never the key, the transcript or the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from service.core.agent import AnalysisConfig
from service.core.analysis import (
    AnalysisError,
    AnalysisFailed,
    AnalysisResult,
    failure_of,
    parse_response,
    request_body,
    usage_of,
)
from service.core.record import CallRecord
from service.runtime.tools import USER_AGENT

__all__ = ["CONCURRENCY", "TIMEOUT_S", "Analyst"]

log = logging.getLogger(__name__)

CONCURRENCY = 4
TIMEOUT_S = 30.0
RETRY_DELAY_S = 1.0
MAX_RETRY_AFTER_S = 5.0
MAX_WAITING = 1_000
MAX_ANSWER_BYTES = 1_000_000


class Analyst:
    """Runs post-call analyses against the Responses API (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        concurrency: int = CONCURRENCY,
        timeout_s: float = TIMEOUT_S,
        retry_delay_s: float = RETRY_DELAY_S,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.url = base_url.rstrip("/") + "/responses"
        self._headers = dict(headers)  # holds the key: never logged
        self.timeout_s = timeout_s
        self.retry_delay_s = retry_delay_s
        self.max_waiting = max_waiting
        self._slots = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self.waiting = 0
        """Analyses started and not finished (running or waiting for a slot)."""

    def __repr__(self) -> str:
        return f"Analyst({self.url!r})"

    async def analyse(self, record: CallRecord, config: AnalysisConfig) -> AnalysisResult:
        """The analysis of ``record``, or why there is none. Never raises (but ``CancelledError``)."""
        call = record.call_sid or "-"
        if self.waiting >= self.max_waiting:
            log.warning("analysis of %s skipped: %d analyses waiting already", call, self.waiting)
            return AnalysisFailed(config.model, f"skipped: {self.waiting} analyses waiting already")
        self.waiting += 1
        try:
            body = json.dumps(request_body(record, config), ensure_ascii=False).encode()
            try:
                async with asyncio.timeout(self.timeout_s):
                    result = await self._attempts(body, config)
            except TimeoutError:
                result = AnalysisFailed(config.model, f"timeout after {self.timeout_s:g} s")
        finally:
            self.waiting -= 1
        if isinstance(result, AnalysisFailed):
            log.warning("analysis of %s (%s) failed: %s", call, config.model, result.error)
        else:
            log.info("analysis of %s (%s) done", call, config.model)
        return result

    async def _attempts(self, body: bytes, config: AnalysisConfig) -> AnalysisResult:
        async with self._slots:
            status, answer, retry_after = await self._post(body)
            if status == 0 or status == 429 or status >= 500:
                log.debug("= analysis: %s, trying again", failure_of(status, answer) if status else answer)
                await asyncio.sleep(retry_after if retry_after is not None else self.retry_delay_s)
                status, answer, retry_after = await self._post(body)
                if status == 0 or status == 429 or status >= 500:
                    return AnalysisFailed(config.model, f"{_problem(status, answer)} (after a retry)")
            if not 200 <= status < 300:
                return AnalysisFailed(config.model, _problem(status, answer))
        try:
            return parse_response(answer, config)
        except AnalysisError as exc:
            usage = usage_of(answer) if isinstance(answer, Mapping) else None
            return AnalysisFailed(config.model, exc.reason, usage)

    async def _post(self, body: bytes) -> tuple[int, Any, float | None]:
        """(HTTP status, the answer as JSON (None if it is not), Retry-After in seconds); status 0 and
        the problem's name in place of the answer when no answer came."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, trust_env=False)
        headers = {**self._headers, "Content-Type": "application/json"}
        try:
            async with self._session.post(self.url, data=body, headers=headers) as reply:
                raw = await reply.content.read(MAX_ANSWER_BYTES + 1)
                status = reply.status
                retry_after = _seconds(reply.headers.get("Retry-After"))
        except (aiohttp.ClientError, OSError) as exc:
            return 0, type(exc).__name__, None
        try:
            answer = json.loads(raw) if len(raw) <= MAX_ANSWER_BYTES else None
        except (ValueError, RecursionError):
            answer = None
        return status, answer, retry_after

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _problem(status: int, answer: Any) -> str:
    if status == 0:
        return f"no answer ({answer})"
    return failure_of(status, answer)


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds, capped (an HTTP date is ignored: the default delay applies)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not 0 <= seconds < float("inf"):
        return None
    return min(seconds, MAX_RETRY_AFTER_S)
