"""One simulated response: the script's reply streamed as the GA event sequence, paced, cancellable.

There is no model: the connection turns the script's reply (:mod:`service.sim.script`) into the
response's output items, its :data:`Part` list, and :class:`ActiveResponse` streams them in order,
item ``k`` at ``output_index`` k, each after :attr:`RealtimeSimulator.first_delta_delay_ms`:

- :class:`AudioPart`, an assistant audio message: ``response.output_item.added``,
  ``conversation.item.added``, ``response.content_part.added``, audio and transcript deltas,
  ``response.output_audio.done``, ``response.output_audio_transcript.done``,
  ``response.content_part.done``, ``conversation.item.done``, ``response.output_item.done``. Audio
  goes out in chunks of random duration (:attr:`RealtimeSimulator.chunk_ms`) with the transcript's
  words spread over them, ``speed`` times faster than real time. Two of them in one response are a
  preamble and its answer.
- :class:`FunctionCallPart`: ``response.output_item.added`` (a ``function_call`` item, arguments
  ""), ``conversation.item.added``, ``response.function_call_arguments.delta`` events (``call_id``
  and a piece of the arguments each), ``response.function_call_arguments.done`` (``call_id``,
  ``name``, ``arguments``), ``conversation.item.done``, ``response.output_item.done``. A cancel
  between deltas still sends ``.done``, with the arguments so far and the item ``incomplete`` (GA:
  "also emitted when a Response is interrupted, incomplete, or cancelled").
- :class:`McpCallPart`: ``response.output_item.added`` (an ``mcp_call`` item),
  ``conversation.item.added``, ``response.mcp_call_arguments.delta`` events,
  ``response.mcp_call_arguments.done``, ``response.mcp_call.in_progress``, then (the server calling
  the tool: ``first_delta_delay_ms``) ``response.mcp_call.completed`` with the ``output`` on the
  item, or ``response.mcp_call.failed`` with a ``tool_execution_error``; ``conversation.item.done``
  and ``response.output_item.done`` (the order is inferred from the event list; the GA guide does
  not show one). Once started it runs to its end.

Then ``response.done`` (every item that was started in ``output``) and ``rate_limits.updated``. A
cancel stops the item being streamed (its done events still go out) and no later item starts; a
response cancelled before its first item never adds one.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from websockets.exceptions import ConnectionClosed

from service.sim.realtime_conversation import Item
from service.sim.realtime_schema import Json

if TYPE_CHECKING:
    from service.sim.realtime_connection import SimConnection


@dataclass(frozen=True, slots=True)
class AudioPart:
    """An assistant audio message: ``audio`` in the output format, ``words`` its transcript."""

    clip: str
    audio: bytes = field(repr=False)
    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FunctionCallPart:
    name: str
    arguments: str
    call_id: str


@dataclass(frozen=True, slots=True)
class McpCallPart:
    server_label: str
    name: str
    arguments: str
    output: str
    error: str | None


Part = AudioPart | FunctionCallPart | McpCallPart


@dataclass(slots=True)
class ResponseRecord:
    """One response as the tests see it. ``item_id`` is its first output item, ``item_ids`` all of
    them (by output index, including items never started); ``clip`` is the last clip it plays (the
    answer; "" when it only calls a function) and ``clips`` all of them; ``audio_ms`` counts the ms
    of audio sent in deltas, all items together."""

    id: str
    item_id: str
    clip: str
    trigger: Literal["client", "vad"]
    instructions: str | None
    status: str = "in_progress"
    reason: str | None = None
    audio_ms: int = 0
    item_ids: list[str] = field(default_factory=list)
    clips: list[str] = field(default_factory=list)


@dataclass(slots=True)
class FunctionCallRecord:
    """A function call the simulator made, and the client's answer to it. ``status`` is the item's:
    ``completed``, or ``incomplete`` when the response was cancelled while the arguments streamed."""

    call_id: str
    name: str
    arguments: str
    item_id: str
    response_id: str
    status: str
    output: str | None = None  # the ``function_call_output`` the client sent, once it has
    output_item_id: str | None = None


@dataclass(slots=True)
class McpCallRecord:
    """An MCP tool call the simulated server made (``error`` when it failed)."""

    server_label: str
    name: str
    arguments: str
    item_id: str
    response_id: str
    output: str | None
    error: str | None


def _chunks(text: str, sizes: list[int]) -> list[str]:
    """``text`` cut into pieces of the given sizes (cycled), for argument deltas."""
    pieces: list[str] = []
    i = 0
    while i < len(text):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(text[i : i + size])
        i += size
    return pieces


class ActiveResponse:
    """A response from ``response.created`` to ``response.done``. ``params`` are the effective
    response parameters (``output_modalities``, ``max_output_tokens``, ``metadata``, ``format``,
    ``voice``, ``instructions``). ``finished`` turns true just before ``response.done`` is sent.
    ``items`` are the output items (one per part, in order); :attr:`current` is the one being
    streamed."""

    def __init__(
        self, conn: SimConnection, record: ResponseRecord, parts: list[Part], bytes_per_ms: int, params: Json
    ) -> None:
        self.record = record
        self.items = [
            self._new_item(item_id, part) for item_id, part in zip(record.item_ids, parts, strict=True)
        ]
        self.params = params
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        self.finished = False
        self.current: Item | None = None
        self._conn = conn
        self._parts = parts
        self._bytes_per_ms = bytes_per_ms
        self._wake = asyncio.Event()
        self._added: list[Item] = []
        self._sent_bytes = 0  # audio bytes sent, all items together
        self._first_audio = True

    @staticmethod
    def _new_item(item_id: str, part: Part) -> Item:
        match part:
            case AudioPart():
                return Item(
                    item_id, "message", "assistant", "output_audio", transcript="", status="in_progress"
                )
            case FunctionCallPart():
                payload = {
                    "type": "function_call",
                    "call_id": part.call_id,
                    "name": part.name,
                    "arguments": "",
                }
                return Item(item_id, "function_call", None, status="in_progress", payload=payload)
            case McpCallPart():
                payload = {"type": "mcp_call", "server_label": part.server_label, "name": part.name,
                           "arguments": ""}  # fmt: skip
                return Item(item_id, "mcp_call", None, status="in_progress", payload=payload)

    @property
    def item(self) -> Item:
        """The first output item."""
        return self.items[0]

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
        output = [item.as_json() for item in self._added] if record.status != "in_progress" else []
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
        sim = self._conn.sim
        try:
            for index, (part, item) in enumerate(zip(self._parts, self.items, strict=True)):
                await self._pause(sim.first_delta_delay_ms / 1000)
                if self.cancel_reason is not None:
                    break
                self.current = item
                match part:
                    case AudioPart():
                        if not await self._audio_item(index, part, item):
                            return
                    case FunctionCallPart():
                        await self._function_call_item(index, part, item)
                    case McpCallPart():
                        await self._mcp_call_item(index, part, item)
                self.current = None
            await self._finish()
        except ConnectionClosed:
            pass
        finally:
            self.finished = True

    async def _open(self, index: int, item: Item) -> None:
        """Add ``item`` to the conversation: ``response.output_item.added`` and
        ``conversation.item.added``."""
        previous = self._conn.conversation.append(item)
        self._added.append(item)
        opened = item.as_json(with_content=False)
        await self._send({"type": "response.output_item.added", "response_id": self.record.id,
                          "output_index": index, "item": opened})  # fmt: skip
        await self._send({"type": "conversation.item.added", "previous_item_id": previous, "item": opened})

    async def _close(self, index: int, item: Item) -> None:
        """``conversation.item.done`` then ``response.output_item.done``."""
        order = self._conn.conversation.order
        position = order.index(item.id) if item.id in order else 0
        previous = order[position - 1] if position > 0 else None
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_json()}
        )
        await self._send({"type": "response.output_item.done", "response_id": self.record.id,
                          "output_index": index, "item": item.as_json()})  # fmt: skip

    async def _audio_item(self, index: int, part: AudioPart, item: Item) -> bool:
        """Stream one audio message; False if the socket is being closed under it (a fault)."""
        conn, sim, record = self._conn, self._conn.sim, self.record
        ids = {"response_id": record.id, "item_id": item.id, "output_index": index, "content_index": 0}
        await self._open(index, item)
        await self._send(
            {"type": "response.content_part.added", **ids, "part": {"type": "audio", "transcript": ""}}
        )
        audio, words = part.audio, part.words
        sent = sent_words = 0
        while self.cancel_reason is None and sent < len(audio):
            chunk_ms = sim.rng.randint(*sim.chunk_ms)
            chunk = audio[sent : sent + chunk_ms * self._bytes_per_ms]
            await self._send({"type": "response.output_audio.delta", **ids,
                              "delta": base64.b64encode(chunk).decode("ascii")})  # fmt: skip
            sent += len(chunk)
            self._sent_bytes += len(chunk)
            item.audio_bytes += len(chunk)
            item.audio_ms = item.audio_bytes // self._bytes_per_ms
            conn.generated_ms[item.id] = sent // self._bytes_per_ms
            record.audio_ms = self._sent_bytes // self._bytes_per_ms
            conn.conversation.has_assistant_audio = True
            due = math.ceil(len(words) * sent / len(audio))
            while sent_words < due:
                delta = words[sent_words]
                sent_words += 1
                await self._send({"type": "response.output_audio_transcript.delta", **ids, "delta": delta})
            if self._first_audio:
                self._first_audio = False
                if sim.fault.applies_to(conn.index):
                    k = len(conn.responses)
                    if sim.fault.error_on_response == k:
                        await conn.fault_error()
                    if sim.fault.close_on_response == k:
                        conn.fault_close()
                    if conn.closing:
                        return False
            pause_s = len(chunk) / self._bytes_per_ms / 1000 / sim.speed if sim.speed > 0 else 0
            await self._pause(pause_s)
        item.status = "incomplete" if self.cancel_reason else "completed"
        item.transcript = "".join(words[:sent_words])
        await self._send({"type": "response.output_audio.done", **ids})
        await self._send(
            {"type": "response.output_audio_transcript.done", **ids, "transcript": item.transcript}
        )
        await self._send({"type": "response.content_part.done", **ids,
                          "part": {"type": "audio", "transcript": item.transcript}})  # fmt: skip
        await self._close(index, item)
        return True

    async def _function_call_item(self, index: int, part: FunctionCallPart, item: Item) -> None:
        record, payload = self.record, item.payload
        assert payload is not None
        ids = {"response_id": record.id, "item_id": item.id, "output_index": index, "call_id": part.call_id}
        await self._open(index, item)
        sizes = [self._conn.sim.rng.randint(4, 16) for _ in range(4)]
        for delta in _chunks(part.arguments, sizes):
            if self.cancel_reason is not None:
                break
            payload["arguments"] += delta
            await self._send({"type": "response.function_call_arguments.delta", **ids, "delta": delta})
            await self._pause(0)
        item.status = "completed" if payload["arguments"] == part.arguments else "incomplete"
        await self._send({"type": "response.function_call_arguments.done", **ids, "name": part.name,
                          "arguments": payload["arguments"]})  # fmt: skip
        await self._close(index, item)
        self._conn.function_calls.append(
            FunctionCallRecord(part.call_id, part.name, payload["arguments"], item.id, record.id, item.status)
        )

    async def _mcp_call_item(self, index: int, part: McpCallPart, item: Item) -> None:
        record, payload = self.record, item.payload
        assert payload is not None
        ids = {"item_id": item.id, "output_index": index}
        await self._open(index, item)
        sizes = [self._conn.sim.rng.randint(4, 16) for _ in range(4)]
        for delta in _chunks(part.arguments, sizes):
            payload["arguments"] += delta
            await self._send({"type": "response.mcp_call_arguments.delta", "response_id": record.id, **ids,
                              "delta": delta})  # fmt: skip
        await self._send({"type": "response.mcp_call_arguments.done", "response_id": record.id, **ids,
                          "arguments": payload["arguments"]})  # fmt: skip
        await self._send({"type": "response.mcp_call.in_progress", **ids})
        await asyncio.sleep(self._conn.sim.first_delta_delay_ms / 1000)  # the server calls the tool
        if part.error is not None:
            payload["error"] = {"type": "tool_execution_error", "message": part.error}
            item.status = "failed"
            await self._send({"type": "response.mcp_call.failed", **ids})
        else:
            payload["output"] = part.output
            item.status = "completed"
            await self._send({"type": "response.mcp_call.completed", **ids})
        await self._close(index, item)
        self._conn.mcp_calls.append(McpCallRecord(
            part.server_label, part.name, part.arguments, item.id, record.id,
            None if part.error is not None else part.output, part.error,
        ))  # fmt: skip

    async def _finish(self) -> None:
        record = self.record
        record.status = "cancelled" if self.cancel_reason else "completed"
        record.reason = self.cancel_reason
        conversation = self._conn.conversation
        instructions = str(self._conn.session.get("instructions") or "") + str(
            self.params["instructions"] or ""
        )
        usage = conversation.response_usage(instructions, self._added, self._sent_bytes / self._bytes_per_ms)
        self.finished = True
        await self._send({"type": "response.done", "response": self.as_json(usage)})
        remaining, reset_s = self._conn.sim.charge(int(usage["total_tokens"]))
        limits = [{"name": "tokens", "limit": self._conn.sim.tokens_per_minute, "remaining": remaining,
                   "reset_seconds": reset_s}]  # fmt: skip
        await self._send({"type": "rate_limits.updated", "rate_limits": limits})
