"""One simulated response: the script's clip streamed as the GA event sequence, paced, cancellable.

There is no model: the connection picks the clip (:class:`~service.sim.script.ReplyScript`) and
:class:`ActiveResponse` plays it. Audio goes out in chunks of random duration
(:attr:`RealtimeSimulator.chunk_ms`) with the transcript's words spread over them, ``speed`` times
faster than real time. The event order is the GA order: ``response.created`` (sent by the
connection), ``response.output_item.added``, ``conversation.item.added``,
``response.content_part.added``, deltas, ``response.output_audio.done``,
``response.output_audio_transcript.done``, ``response.content_part.done``,
``conversation.item.done``, ``response.output_item.done``, ``response.done`` and then
``rate_limits.updated``. A response cancelled before its first delta never adds its item.

The simulator's :class:`~service.sim.realtime_server.Fault` may act at the first audio delta of the
k-th response of a socket: an ``error`` event (``error_on_response``; the response goes on unless
the code is fatal) and/or the end of the socket (``close_on_response``). When the socket is closed
under it (a fault, the session limit, a test's ``drop``) the response simply stops: no
``response.done``.

Every event goes out through the connection's ``SimConnection._send``, which records it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from websockets.exceptions import ConnectionClosed

from service.sim.realtime_conversation import RATE_LIMIT_TOKENS, Item
from service.sim.realtime_schema import Json

if TYPE_CHECKING:
    from service.sim.realtime_connection import SimConnection


@dataclass(slots=True)
class ResponseRecord:
    id: str
    item_id: str
    clip: str
    trigger: Literal["client", "vad"]
    instructions: str | None
    status: str = "in_progress"
    reason: str | None = None
    audio_ms: int = 0  # ms of audio sent in deltas


class ActiveResponse:
    """A response from ``response.created`` to ``response.done``. ``params`` are the effective
    response parameters (``output_modalities``, ``max_output_tokens``, ``metadata``, ``format``,
    ``voice``, ``instructions``). ``finished`` turns true just before ``response.done`` is sent."""

    def __init__(
        self,
        conn: SimConnection,
        record: ResponseRecord,
        audio: bytes,
        words: list[str],
        bytes_per_ms: int,
        params: Json,
    ) -> None:
        self.record = record
        self.item = Item(
            record.item_id, "message", "assistant", "output_audio", transcript="", status="in_progress"
        )
        self.params = params
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        self.finished = False
        self._conn = conn
        self._audio = audio
        self._words = words
        self._bytes_per_ms = bytes_per_ms
        self._wake = asyncio.Event()
        self._item_added = False
        self._previous_item_id: str | None = None
        self._sent_bytes = 0
        self._sent_words = 0

    def start(self) -> None:
        self.task = asyncio.create_task(self._stream())

    async def cancel(self, reason: str) -> None:
        """Stop streaming (``status_details.reason`` is ``reason``) and wait for ``response.done``."""
        self.cancel_reason = reason
        self._wake.set()
        if self.task is not None:
            await asyncio.wait({self.task})

    def as_json(self, usage: Json | None) -> Json:
        """The ``response`` object of ``response.created`` (no usage) and ``response.done``."""
        record = self.record
        details = None if record.reason is None else {"type": record.status, "reason": record.reason}
        output = [self.item.as_json()] if self._item_added and record.status != "in_progress" else []
        p = self.params
        return {
            "object": "realtime.response", "id": record.id, "status": record.status,
            "status_details": details, "output": output, "conversation_id": self._conn.conversation.id,
            "output_modalities": p["output_modalities"], "max_output_tokens": p["max_output_tokens"],
            "audio": {"output": {"format": p["format"], "voice": p["voice"]}}, "usage": usage,
            "metadata": p["metadata"],
        }  # fmt: skip

    async def _send(self, payload: Json) -> None:
        await self._conn._send(payload)  # looked up on each call: the benchmark wraps it

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _stream(self) -> None:
        conn, sim, record, item = self._conn, self._conn.sim, self.record, self.item
        ids = {"response_id": record.id, "item_id": item.id, "output_index": 0, "content_index": 0}
        try:
            await self._pause(sim.first_delta_delay_ms / 1000)
            if self.cancel_reason is None:
                self._previous_item_id = conn.conversation.append(item)
                self._item_added = True
                opened = item.as_json(with_content=False)
                await self._send({"type": "response.output_item.added", "response_id": record.id,
                                  "output_index": 0, "item": opened})  # fmt: skip
                await self._send({"type": "conversation.item.added",
                                  "previous_item_id": self._previous_item_id, "item": opened})  # fmt: skip
                await self._send({"type": "response.content_part.added", **ids,
                                  "part": {"type": "audio", "transcript": ""}})  # fmt: skip
            while self.cancel_reason is None and self._sent_bytes < len(self._audio):
                chunk_ms = sim.rng.randint(*sim.chunk_ms)
                chunk = self._audio[self._sent_bytes : self._sent_bytes + chunk_ms * self._bytes_per_ms]
                await self._send({"type": "response.output_audio.delta", **ids,
                                  "delta": base64.b64encode(chunk).decode("ascii")})  # fmt: skip
                first = self._sent_bytes == 0
                self._sent_bytes += len(chunk)
                item.audio_bytes += len(chunk)
                item.audio_ms = item.audio_bytes // self._bytes_per_ms
                record.audio_ms = conn.generated_ms[item.id] = self._sent_bytes // self._bytes_per_ms
                conn.conversation.has_assistant_audio = True
                due = math.ceil(len(self._words) * self._sent_bytes / len(self._audio))
                while self._sent_words < due:
                    delta = self._words[self._sent_words]
                    self._sent_words += 1
                    await self._send(
                        {"type": "response.output_audio_transcript.delta", **ids, "delta": delta}
                    )
                if first and sim.fault.applies_to(conn.index):
                    k = len(conn.responses)
                    if sim.fault.error_on_response == k:
                        await conn.fault_error()
                    if sim.fault.close_on_response == k:
                        conn.fault_close()
                    if conn.closing:
                        return
                pause_s = len(chunk) / self._bytes_per_ms / 1000 / sim.speed if sim.speed > 0 else 0
                await self._pause(pause_s)
            await self._finish(ids)
        except ConnectionClosed:
            pass
        finally:
            self.finished = True

    async def _finish(self, ids: Json) -> None:
        record, item = self.record, self.item
        record.status = "cancelled" if self.cancel_reason else "completed"
        record.reason = self.cancel_reason
        item.status = "incomplete" if self.cancel_reason else "completed"
        item.transcript = "".join(self._words[: self._sent_words])
        if self._item_added:
            await self._send({"type": "response.output_audio.done", **ids})
            await self._send(
                {"type": "response.output_audio_transcript.done", **ids, "transcript": item.transcript}
            )
            await self._send({"type": "response.content_part.done", **ids,
                              "part": {"type": "audio", "transcript": item.transcript}})  # fmt: skip
            previous = self._previous_item_id
            await self._send(
                {"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_json()}
            )
            await self._send({"type": "response.output_item.done", "response_id": record.id,
                              "output_index": 0, "item": item.as_json()})  # fmt: skip
        conversation = self._conn.conversation
        instructions = str(self._conn.session.get("instructions") or "") + str(
            self.params["instructions"] or ""
        )
        usage = conversation.response_usage(instructions, item, self._sent_bytes / self._bytes_per_ms)
        self.finished = True
        await self._send({"type": "response.done", "response": self.as_json(usage)})
        remaining = conversation.charge(int(usage["total_tokens"]))
        limits = [{"name": "tokens", "limit": RATE_LIMIT_TOKENS, "remaining": remaining,
                   "reset_seconds": 0.001}]  # fmt: skip
        await self._send({"type": "rate_limits.updated", "rate_limits": limits})
