"""Runs an agent's HTTP tools: one signed POST per call of the model, its answer back as an input.

    runner = ToolRunner(signing_secret)          # one per process: one aiohttp session, connections reused
    result = await runner.run(call_tool)         # -> ToolResult; never raises (but CancelledError)
    await runner.close()

The request body is JSON ``{"call_sid", "agent", "from", "to", "tool", "arguments", "call_id"}``
(``call_id``: the model's id of this call, unique: two calls with the same arguments in the same second
do not sign alike, so a tool server that refuses replays does not refuse the second), with the tool's
configured headers and two of ours: ``X-Dialtone-Timestamp`` (Unix seconds) and ``X-Dialtone-Signature``,
the hex HMAC-SHA256 of ``timestamp + "." + body`` under ``TOOLS_SIGNING_SECRET``. A tool server
recomputes it over the raw body and refuses a request whose timestamp is more than
:data:`SIGNATURE_WINDOW_S` away from its clock (a replay): the check to copy is
:func:`service.sim.tools.verify_signature` (written apart from this module, so that the local tool
server checks what Dialtone sends against the documented scheme, not against this code).

Every failure becomes an answer the model can apologise for (``output`` ``{"error": ...}``), with an
``outcome`` for the logs and the record: ``timeout``, ``refused`` (no connection), ``http_<status>``,
``not_json``, ``too_large`` (over :data:`MAX_RESPONSE_BYTES`), ``error``. A 2xx JSON body is given to
the model as it came.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable

import aiohttp

from service.core.commands import CallTool
from service.core.inputs import ToolResult

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Dialtone-Timestamp"
SIGNATURE_HEADER = "X-Dialtone-Signature"
SIGNATURE_WINDOW_S = 300
"""A tool server accepts a request whose timestamp is at most this far from its own clock."""
MAX_RESPONSE_BYTES = 16 * 1024
"""A tool's answer goes into the model's context: more than this is refused (``too_large``)."""
USER_AGENT = "Dialtone-tools/1"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``timestamp + "." + body``."""
    return hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


class ToolRunner:
    """Runs tool calls (one :class:`aiohttp.ClientSession`, made on first use, for the process)."""

    def __init__(
        self,
        signing_secret: bytes,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = signing_secret
        self._clock = clock
        self._wall_clock = wall_clock
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=200, limit_per_host=50, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": USER_AGENT}, trust_env=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def request(self, call: CallTool) -> tuple[bytes, dict[str, str]]:
        """The body and headers of ``call``'s request (signed now)."""
        fields = {"call_sid": call.call_sid, "call_id": call.call_id, "agent": call.agent,
                  "from": call.caller, "to": call.called,
                  "tool": call.tool.name, "arguments": dict(call.arguments)}  # fmt: skip
        body = json.dumps(fields, separators=(",", ":")).encode()
        timestamp = str(int(self._wall_clock()))
        headers = {
            **call.tool.headers,
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        return body, headers

    async def run(self, call: CallTool) -> ToolResult:
        """POST the call to its tool; the answer (or what went wrong) as a :class:`ToolResult`."""
        started = self._clock()
        output, outcome = await self._post(call)
        duration_ms = round((self._clock() - started) * 1000)
        return ToolResult(call.call_id, output, outcome, duration_ms)

    async def _post(self, call: CallTool) -> tuple[str, str]:
        body, headers = self.request(call)
        timeout = aiohttp.ClientTimeout(total=call.tool.timeout_ms / 1000)
        post = self._client().post
        try:
            async with post(call.tool.url, data=body, headers=headers, timeout=timeout) as reply:
                if not 200 <= reply.status < 300:
                    return _error(f"the tool answered HTTP {reply.status}"), f"http_{reply.status}"
                if (reply.content_length or 0) > MAX_RESPONSE_BYTES:
                    return _error("the tool's answer is too large"), "too_large"
                data = await reply.content.read(MAX_RESPONSE_BYTES + 1)
        except TimeoutError:
            return _error("timeout"), "timeout"
        except aiohttp.ClientConnectorError:
            return _error("the tool could not be reached"), "refused"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log.warning("tool %s: request failed: %s", call.tool.name, type(exc).__name__)
            return _error("the tool failed"), "error"
        if len(data) > MAX_RESPONSE_BYTES:
            return _error("the tool's answer is too large"), "too_large"
        try:
            text = data.decode("utf-8")
            json.loads(text)
        except ValueError:
            return _error("the tool's answer is not JSON"), "not_json"
        return text, "ok"


def _error(message: str) -> str:
    return json.dumps({"error": message})
