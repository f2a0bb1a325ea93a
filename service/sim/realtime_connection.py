"""One client socket of the simulated Realtime server: the session, the input audio buffer and its
server VAD, the conversation, and the response in progress.

:class:`SimConnection` reads client events one at a time, validates each like GA
(:mod:`service.sim.realtime_schema`), and handles it; a refusal is an ``error`` event carrying the
client's ``event_id``, and the event is otherwise ignored. Appended audio advances the model's input
clock (``input_ms``) and goes through :class:`~service.sim.vad.ServerVad`, whose decisions become
``speech_started`` / ``speech_stopped``, a commit and (``create_response``) a response; speech that
starts during a response cancels it (``interrupt_response``). Responses stream in their own task
(:mod:`service.sim.realtime_response`).

With ``audio.input.transcription`` set, each committed user audio item is followed by
``conversation.item.input_audio_transcription.delta`` events (one per word; one with the whole text
for ``whisper-1``, inferred) and then ``...completed``; the text comes from the script.

How a socket ends, besides the client closing it:

- :meth:`SimConnection.drop`: a close frame with a code and reason, or (``abort``) a TCP reset with
  no close frame. The simulator's :class:`~service.sim.realtime_server.Fault` uses it (after N ms,
  or at the first audio delta of the k-th response); a test may call it at any time.
- The session limit (``RealtimeSimulator.session_limit_s``, 60 minutes in GA): close 1001 with the
  captured reason :data:`~service.sim.realtime_session.SESSION_LIMIT_REASON`, no warning before; a
  response in progress is cut by the close.
- :meth:`SimConnection.send_error` sends an ``error`` event; a fatal code (:data:`FATAL_CLOSE_CODES`)
  is followed by a close, as the handshake checks are.

Tools. ``session.tools`` is validated like GA (flat ``function`` tools; ``mcp`` entries). A session
that declares an MCP server gets, after ``session.updated``, its tool listing: an ``mcp_list_tools``
item (``conversation.item.added``), ``mcp_list_tools.in_progress``, then ``mcp_list_tools.completed``
(the tools the script calls there, or ``allowed_tools``) or ``.failed`` (a server label in
``RealtimeSimulator.mcp_list_failures``), and ``conversation.item.done``; each server configuration
is listed once per socket (inferred: the GA guide names the events, not their order). A scripted
function call's ``function_call_output`` must name the ``call_id`` of a function call in the
conversation (else the GA refusal, wording of the Responses API); the next response then plays the
call's ``then``, unless a user turn came after the output (the latest turn is answered instead). A
scripted call to a function, or an MCP server, that the tools do not declare is an anomaly, as are
``tool_choice: "none"`` with a scripted call and a second output for one call.

Everything exchanged is kept for tests: ``client_events``, ``server_events`` (and, index for index,
``client_event_times`` / ``server_event_times``: the ``time.monotonic()`` at which each was received /
sent), ``truncations``, ``responses``, ``function_calls`` (each call made and the output the client sent
for it), ``function_outputs`` (every accepted ``function_call_output``: call id, output), ``mcp_calls``,
``mcp_listed`` (server label -> listing succeeded), ``generated_ms`` (ms of audio generated per
assistant item), ``anomalies``
(things the real server may tolerate but that show a client bug, e.g. an odd-length PCM16 append),
``index`` (0-based among accepted sockets), ``accepted_at`` / ``closed_at`` (epoch seconds),
``close_code`` / ``close_reason`` (the client's echo of the close; 1006 when there was none),
``aborted`` and ``ended_by``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, assert_never

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from service.sim.realtime_conversation import Conversation, Item, Truncation, split_words, transcription_usage
from service.sim.realtime_response import (
    ActiveResponse,
    AudioPart,
    FunctionCallPart,
    FunctionCallRecord,
    McpCallPart,
    McpCallRecord,
    Part,
    ResponseRecord,
)
from service.sim.realtime_schema import Json, Problem, parse_event, validate_event
from service.sim.realtime_session import (
    SESSION_LIMIT_REASON,
    bytes_per_ms,
    decode_input,
    default_session,
    merge_session,
    rate_hz,
)
from service.sim.script import Clip, FunctionCall, McpCall, Preamble, Reply
from service.sim.vad import ServerVad, SpeechStarted, SpeechStopped, VadParams

if TYPE_CHECKING:
    from service.sim.realtime_server import RealtimeSimulator

logger = logging.getLogger(__name__)

MIN_COMMIT_MS = 100
MAX_APPEND_BYTES = 15 * 2**20

Handler = Callable[[Json], Awaitable[Problem | None]]
EndedBy = Literal["fault", "session_limit", "fatal_error", "drop"]

#: Error codes after which the server closes the socket, and the close code: 3000 for
#: authentication, 4000 for the model and the retired beta interface, as the handshake checks do
#: (captured); ``insufficient_quota`` is an account check like the key, so 3000 (inferred).
FATAL_CLOSE_CODES: dict[str, int] = {
    "invalid_api_key": 3000,
    "insufficient_quota": 3000,
    "invalid_model": 4000,
    "missing_model": 4000,
    "beta_api_shape_disabled": 4000,
}


@dataclass(slots=True)
class _ScriptedCall:
    """A scripted function call the simulator made: what follows its output."""

    call: FunctionCall
    call_id: str
    response: ResponseRecord  # the response that makes it
    user_turns: int  # the user turns when it was made
    answered: bool = False  # its function_call_output arrived


def reset_transport(transport: asyncio.Transport) -> None:
    """Drop a TCP connection with a reset (RST, SO_LINGER 0) and no WebSocket close frame."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class SimConnection:
    """One client socket: the session state, and everything exchanged on it."""

    def __init__(self, sim: RealtimeSimulator, ws: ServerConnection, model: str, index: int = 0) -> None:
        self.sim = sim
        self._ws = ws
        self.model = model
        self.index = index  # 0-based among the sockets the simulator accepted
        self.accepted_at = time.time()  # epoch seconds; ``expires_at`` and the session limit count from it
        self.closed_at: float | None = None
        request = ws.request
        self.request_path = request.path if request is not None else ""
        self.request_headers: dict[str, str] = dict(request.headers.raw_items()) if request else {}
        self.client_events: list[Json] = []
        self.server_events: list[Json] = []
        self.client_event_times: list[float] = []  # time.monotonic() each client event was received
        self.server_event_times: list[float] = []  # time.monotonic() each server event was sent (just before)
        self.truncations: list[Truncation] = []
        self.responses: list[ResponseRecord] = []
        self.generated_ms: dict[str, int] = {}
        self.function_calls: list[FunctionCallRecord] = []
        self.function_outputs: list[tuple[str, str]] = []
        self.mcp_calls: list[McpCallRecord] = []
        self.mcp_listed: dict[str, bool] = {}
        self.anomalies: list[str] = []
        self.session: Json = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self.aborted = False  # dropped with a TCP reset, no close frame
        self.ended_by: EndedBy | None = None  # None: still open, or the client closed it
        self.closed = asyncio.Event()
        self.input_ms = 0.0  # the model's input clock: ms of audio appended
        self.conversation = Conversation(sim.new_id("conv_"))
        self._response: ActiveResponse | None = None  # the latest one
        self._buffer_start_ms = 0.0  # where the uncommitted input audio buffer starts
        self._vad = ServerVad()
        self._speech_item: str | None = None  # the item id announced by speech_started
        self._timers: list[asyncio.Task[None]] = []
        self._closing: asyncio.Task[None] | None = None
        self._scripted: dict[str, _ScriptedCall] = {}  # call_id -> the scripted call
        self._follow_ups: deque[tuple[int, Reply]] = deque()  # (user turns then, ``then``) of calls answered
        self._mcp_configs: set[str] = set()  # MCP tool configurations already listed

    @property
    def _active(self) -> ActiveResponse | None:
        """The response in progress, if any."""
        response = self._response
        return response if response is not None and not response.finished else None

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, problem: Problem | None, close_code: int) -> None:
        try:
            if problem is not None:
                self.ended_by = "fatal_error"
                await self._error(problem, None)
                reason = f"{problem.type}.{problem.code}" if problem.code else problem.type
                await self._ws.close(close_code, reason)
                return
            limit_s = self.sim.session_limit_s
            self.session = default_session(self.sim.new_id("sess_"), self.model, self.accepted_at, limit_s)
            await self._send({"type": "session.created", "session": json.loads(json.dumps(self.session))})
            self._timers.append(asyncio.create_task(self._session_limit(self.accepted_at + limit_s)))
            fault = self.sim.fault
            if fault.close_after_ms is not None and fault.applies_to(self.index):
                self._timers.append(asyncio.create_task(self._close_later(fault.close_after_ms / 1000)))
            async for message in self._ws:
                await self._receive(message)
        except ConnectionClosed:
            pass
        finally:
            pending = [*self._timers, *([self._active.task] if self._active and self._active.task else [])]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            if self._closing is not None:
                await asyncio.wait({self._closing})
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""
            self.closed_at = time.time()
            self.closed.set()

    async def _close_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self.fault_close()

    async def _session_limit(self, deadline_s: float) -> None:
        await asyncio.sleep(max(deadline_s - time.time(), 0.0))
        logger.debug("= session limit reached on connection %s", self.index)
        self.drop(1001, SESSION_LIMIT_REASON, ended_by="session_limit")

    @property
    def closing(self) -> bool:
        """True once the server has started to end the socket (:meth:`drop`), or it has closed."""
        return self._closing is not None or self.aborted or self.closed.is_set()

    def fault_close(self) -> None:
        """End the socket as the simulator's :class:`Fault` says (once), whichever socket this is."""
        fault = self.sim.fault
        self.drop(fault.close_code, fault.close_reason, abort=fault.abort, ended_by="fault")

    def drop(
        self,
        code: int = 1011,
        reason: str = "simulated server failure",
        abort: bool = False,
        *,
        ended_by: EndedBy = "drop",
    ) -> None:
        """End the socket now: a close frame with ``code`` and ``reason`` (the close handshake runs in
        the background), or with ``abort`` a TCP reset and no close frame (the client sees close
        code 1006). Only the first call has an effect. Usable at any time, e.g. from a test while
        the caller is speaking; await :attr:`closed` to know the socket is gone."""
        if self.closing:
            return
        self.ended_by = ended_by
        if abort:
            logger.debug("= connection %s: TCP reset (%s)", self.index, ended_by)
            self.aborted = True
            reset_transport(self._ws.transport)
            return
        logger.debug("= connection %s: closing with %s (%s)", self.index, code, ended_by)
        self._closing = asyncio.create_task(self._ws.close(code, reason))

    async def send_error(
        self, code: str | None, message: str, type: str = "server_error", *, param: str | None = None
    ) -> None:
        """Send an ``error`` event now, in the GA shape (``error.event_id`` null). A fatal ``code``
        (:data:`FATAL_CLOSE_CODES`) is then followed by a close with reason ``<type>.<code>``, as
        the handshake checks do. Raises ``ConnectionClosed`` if the socket is gone."""
        await self._error(Problem(code, message, param, type), None)
        close_code = FATAL_CLOSE_CODES.get(code or "")
        if close_code is not None:
            self.drop(close_code, f"{type}.{code}", ended_by="fatal_error")

    async def fault_error(self) -> None:
        """Send the error event the simulator's :class:`Fault` describes."""
        fault = self.sim.fault
        await self.send_error(fault.error_code, fault.error_message, fault.error_type)

    async def _send(self, payload: Json) -> None:
        event = {"type": payload["type"], "event_id": self.sim.new_id("event_")}
        event.update((k, v) for k, v in payload.items() if k != "type")
        self.server_events.append(event)
        self.server_event_times.append(time.monotonic())
        logger.debug("> %s", event["type"])
        await self._ws.send(json.dumps(event))

    async def _error(self, problem: Problem, client_event_id: str | None) -> None:
        error = {"type": problem.type, "code": problem.code, "message": problem.message,
                 "param": problem.param, "event_id": client_event_id}  # fmt: skip
        await self._send({"type": "error", "error": error})

    # --- dispatch ----------------------------------------------------------------------------

    async def _receive(self, message: str | bytes) -> None:
        received_at = time.monotonic()
        event = parse_event(message)
        if isinstance(event, Problem):
            await self._error(event, None)
            return
        self.client_events.append(event)
        self.client_event_times.append(received_at)
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        logger.debug("< %s", event.get("type"))
        problem = validate_event(event)
        if problem is None:
            problem = await self._handlers()[event["type"]](event)
        if problem is not None:
            await self._error(problem, event_id)

    def _handlers(self) -> dict[str, Handler]:
        return {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "session.input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.truncate": self._on_truncate,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.retrieve": self._on_item_retrieve,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "session.close": self._on_session_close,
        }

    # --- session -----------------------------------------------------------------------------

    async def _on_session_update(self, event: Json) -> Problem | None:
        update: Json = event["session"]
        if update["type"] != "realtime":
            message = "Passing a transcription session update event to a realtime session is not allowed."
            return Problem("invalid_value", message, "session.type")
        if "model" in update and update["model"] != self.model:  # inferred: the model is fixed
            message = f"Invalid value: '{update['model']}'. The model of a session cannot be changed."
            return Problem("invalid_value", message, "session.model")
        modalities = update.get("output_modalities")
        if modalities is not None and len(set(modalities)) != 1:  # inferred wording
            message = "Invalid value: output_modalities must be either ['audio'] or ['text']."
            return Problem("invalid_value", message, "session.output_modalities")
        voice = update.get("audio", {}).get("output", {}).get("voice")
        if voice is not None and voice != self._output()["voice"] and self.conversation.has_assistant_audio:
            message = "Cannot update a conversation's voice if assistant audio is present."
            return Problem("cannot_update_voice", message, "session.audio.output.voice")
        old_format = self._input()["format"]
        self.session = merge_session(self.session, update)
        if self._input()["format"] != old_format or self._input()["turn_detection"] is None:
            self._reset_vad()
        await self._send({"type": "session.updated", "session": json.loads(json.dumps(self.session))})
        for tool in self.session.get("tools") or []:
            if tool.get("type") == "mcp":
                config = json.dumps(tool, sort_keys=True)
                if config not in self._mcp_configs:
                    self._mcp_configs.add(config)
                    await self._list_mcp_tools(tool)
        return None

    async def _list_mcp_tools(self, tool: Json) -> None:
        """The server lists an MCP server's tools (an ``mcp_list_tools`` item and its events)."""
        label = str(tool["server_label"])
        allowed = tool.get("allowed_tools")
        names = list(allowed) if isinstance(allowed, list) else self.sim.script.mcp_tool_names(label)
        payload: Json = {"type": "mcp_list_tools", "server_label": label, "tools": []}
        item = Item(self.sim.new_id("item_"), "mcp_list_tools", None, payload=payload)
        previous = self.conversation.append(item)
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item.as_json()}
        )
        await self._send({"type": "mcp_list_tools.in_progress", "item_id": item.id})
        failed = label in self.sim.mcp_list_failures
        if failed:
            await self._send({"type": "mcp_list_tools.failed", "item_id": item.id})
        else:
            payload["tools"] = [
                {"name": name, "description": f"The {name} tool of {label}.",
                 "input_schema": {"type": "object", "properties": {}}}
                for name in names
            ]  # fmt: skip
            await self._send({"type": "mcp_list_tools.completed", "item_id": item.id})
        self.mcp_listed[label] = not failed
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_json()}
        )

    async def _on_session_close(self, event: Json) -> Problem | None:
        await self._ws.close(1000, "")
        return None

    def _input(self) -> Json:
        audio_input: Json = self.session["audio"]["input"]
        return audio_input

    def _output(self) -> Json:
        audio_output: Json = self.session["audio"]["output"]
        return audio_output

    # --- input audio and VAD -----------------------------------------------------------------

    async def _on_append(self, event: Json) -> Problem | None:
        if event["type"] == "session.input_audio_buffer.append":
            self.anomalies.append("session.input_audio_buffer.append is the translation event name")
        try:
            data = base64.b64decode(event["audio"], validate=True)
        except (binascii.Error, ValueError):  # inferred wording
            return Problem("invalid_value", "Invalid 'audio': expected base64-encoded audio bytes.", "audio")
        if len(data) > MAX_APPEND_BYTES:  # inferred wording
            return Problem("invalid_value", "Invalid 'audio': at most 15 MiB of audio per event.", "audio")
        fmt = self._input()["format"]
        if fmt.get("type") == "audio/pcm" and len(data) % 2:
            self.anomalies.append(f"odd-length PCM16 append ({len(data)} bytes)")
        await self._feed(data, fmt)
        return None

    def _reset_vad(self) -> None:
        self._vad.reset(self.input_ms)
        self._speech_item = None

    async def _feed(self, data: bytes, fmt: Json) -> None:
        self.input_ms += len(data) / bytes_per_ms(fmt)
        td: Json | None = self._input()["turn_detection"]
        if td is None:
            self._vad.skip(self.input_ms)
            return
        decisions = self._vad.feed(decode_input(data, fmt), rate_hz(fmt), VadParams.from_turn_detection(td))
        for decision in decisions:
            match decision:
                case SpeechStarted(audio_start_ms=start_ms):
                    await self._speech_started(start_ms, td)
                case SpeechStopped(audio_end_ms=end_ms):
                    await self._speech_stopped(end_ms, td)
                case _:
                    assert_never(decision)

    async def _speech_started(self, start_ms: float, td: Json) -> None:
        item_id = self.sim.new_id("item_")
        self._speech_item = item_id
        start_ms = max(self._buffer_start_ms, start_ms)
        await self._send({"type": "input_audio_buffer.speech_started", "audio_start_ms": round(start_ms),
                          "item_id": item_id})  # fmt: skip
        if td.get("interrupt_response", True) and self._active is not None:
            await self._cancel("turn_detected")

    async def _speech_stopped(self, end_ms: float, td: Json) -> None:
        item_id = self._speech_item
        assert item_id is not None
        self._speech_item = None
        await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": round(end_ms),
                          "item_id": item_id})  # fmt: skip
        await self._commit(item_id, end_ms)
        if td.get("create_response", True) and self._active is None:
            await self._start_response("vad", {})

    async def _commit(self, item_id: str, end_ms: float) -> None:
        audio_ms = round(end_ms - self._buffer_start_ms)
        item, previous = self.conversation.commit_input_audio(item_id, audio_ms)
        self._buffer_start_ms = end_ms
        await self._send(
            {"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id}
        )
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item.as_json()}
        )
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_json()}
        )
        transcription: Json | None = self._input()["transcription"]
        if transcription is not None:
            item.transcript = self.sim.script.transcript_for(self.conversation.user_turns)
            whole = transcription.get("model") == "whisper-1"  # inferred: whisper-1 is not streamed
            for delta in [item.transcript] if whole else split_words(item.transcript):
                await self._send({"type": "conversation.item.input_audio_transcription.delta",
                                  "item_id": item_id, "content_index": 0, "delta": delta})  # fmt: skip
            await self._send({
                "type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                "content_index": 0, "transcript": item.transcript, "usage": transcription_usage(item),
            })  # fmt: skip

    async def _on_commit(self, event: Json) -> Problem | None:
        buffered_ms = self.input_ms - self._buffer_start_ms
        if buffered_ms < MIN_COMMIT_MS:
            message = (
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio."
            )
            return Problem("input_audio_buffer_commit_empty", message)
        item_id = self._speech_item or self.sim.new_id("item_")
        self._speech_item = None
        self._vad.end_speech()
        await self._commit(item_id, self.input_ms)
        return None

    async def _on_clear(self, event: Json) -> Problem | None:
        self._buffer_start_ms = self.input_ms
        self._reset_vad()
        await self._send({"type": "input_audio_buffer.cleared"})
        return None

    # --- conversation items ------------------------------------------------------------------

    async def _on_item_create(self, event: Json) -> Problem | None:
        raw: Json = event["item"]
        item_id = str(raw.get("id") or self.sim.new_id("item_"))
        if raw["type"] == "function_call_output" and self.conversation.function_call(raw["call_id"]) is None:
            # wording of the Responses API (captured there; inferred for Realtime)
            message = f"No tool call found for function call output with call_id {raw['call_id']}."
            return Problem(None, message, "item.call_id")
        created = self.conversation.create(raw, item_id, event.get("previous_item_id"))
        if isinstance(created, Problem):
            return created
        item, previous = created
        if raw["type"] == "function_call_output":
            self._function_output(raw["call_id"], raw["output"], item_id)
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item.as_json()}
        )
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_json()}
        )
        return None

    def _function_output(self, call_id: str, output: str, item_id: str) -> None:
        self.function_outputs.append((call_id, output))
        for call in self.function_calls:
            if call.call_id == call_id and call.output is None:
                call.output, call.output_item_id = output, item_id
        scripted = self._scripted.get(call_id)
        if scripted is None:
            return
        if scripted.answered:
            self.anomalies.append(f"a second function_call_output for call {call_id} ({scripted.call.name})")
            return
        scripted.answered = True
        self._follow_ups.append((self.conversation.user_turns, scripted.call.then))

    async def _on_item_delete(self, event: Json) -> Problem | None:
        item_id = event["item_id"]
        if problem := self.conversation.delete(item_id):
            return problem
        await self._send({"type": "conversation.item.deleted", "item_id": item_id})
        return None

    async def _on_item_retrieve(self, event: Json) -> Problem | None:
        item = self.conversation.retrieve(event["item_id"])
        if isinstance(item, Problem):
            return item
        await self._send({"type": "conversation.item.retrieved", "item": item.as_json()})
        return None

    async def _on_truncate(self, event: Json) -> Problem | None:
        item_id: str = event["item_id"]
        active = self._active
        generating = active is not None and active.current is not None and active.current.id == item_id
        truncation = self.conversation.truncate(item_id, event["content_index"], event["audio_end_ms"])
        if isinstance(truncation, Problem):
            return truncation
        if generating:
            self.anomalies.append(f"truncate of {item_id} while it is still being generated")
        self.truncations.append(truncation)
        await self._send({"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
                          "audio_end_ms": truncation.audio_end_ms})  # fmt: skip
        return None

    # --- responses ---------------------------------------------------------------------------

    async def _on_response_create(self, event: Json) -> Problem | None:
        if self._active is not None:
            message = (
                f"Conversation already has an active response in progress: {self._active.record.id}. "
                "Wait until the response is finished before creating a new one."
            )
            return Problem("conversation_already_has_active_response", message)
        await self._start_response("client", event.get("response") or {})
        return None

    async def _on_response_cancel(self, event: Json) -> Problem | None:
        wanted = event.get("response_id")
        if self._active is None or (wanted is not None and wanted != self._active.record.id):
            return Problem("response_cancel_not_active", "Cancellation failed: no active response found")
        await self._cancel("client_cancelled")
        return None

    async def _start_response(self, trigger: Literal["client", "vad"], params: Json) -> None:
        reply = self._next_reply()
        requested: Json = params.get("audio", {}).get("output", {})
        fmt = requested.get("format") or self._output()["format"]
        voice = requested.get("voice") or self._output()["voice"]
        parts = self._parts(reply, fmt)
        self._check_tools(parts, params)
        clips = [part.clip for part in parts if isinstance(part, AudioPart)]
        item_ids = [self.sim.new_id("item_") for _ in parts]
        record = ResponseRecord(self.sim.new_id("resp_"), item_ids[0], clips[-1] if clips else "", trigger,
                                params.get("instructions"), item_ids=item_ids, clips=clips)  # fmt: skip
        self.responses.append(record)
        for part in parts:
            if isinstance(part, FunctionCallPart) and isinstance(reply, FunctionCall):
                self._scripted[part.call_id] = _ScriptedCall(
                    reply, part.call_id, record, self.conversation.user_turns
                )
        response = ActiveResponse(
            self, record, parts, bytes_per_ms(fmt),
            params={
                "output_modalities": params.get("output_modalities", self.session["output_modalities"]),
                "max_output_tokens": params.get("max_output_tokens", self.session["max_output_tokens"]),
                "metadata": params.get("metadata"), "format": fmt, "voice": voice,
                "instructions": params.get("instructions", ""),
            },
        )  # fmt: skip
        self._response = response
        await self._send({"type": "response.created", "response": response.as_json(None)})
        response.start()

    def _next_reply(self) -> Reply:
        """What the next response does: the ``then`` of an answered function call first (unless the
        caller has had a turn since the output: the latest turn is answered, the ``then`` dropped),
        else the script's reply for the user turn (a pending call's ``waiting`` clip if no user turn
        came since it was made)."""
        turns = self.conversation.user_turns
        while self._follow_ups:
            at_turn, then = self._follow_ups.popleft()
            if at_turn == turns:
                return then
        made = {call.call_id for call in self.function_calls}
        pending = [
            s for s in self._scripted.values()
            if not s.answered and s.call_id in made and s.response.status == "completed"
            and s.user_turns == turns
        ]  # fmt: skip
        if pending:
            scripted = pending[-1]
            if scripted.call.waiting is not None:
                return scripted.call.waiting
            self.anomalies.append(
                f"a response while function call {scripted.call.name} ({scripted.call_id}) awaits its "
                "function_call_output (the script has no waiting clip)"
            )
        return self.sim.script.reply_for(turns)

    def _parts(self, reply: Reply, fmt: Json) -> list[Part]:
        """The output items of a response that does ``reply``."""

        def audio(clip: Clip) -> AudioPart:
            return AudioPart(clip.name, self.sim.encoded(clip, fmt), tuple(split_words(clip.text)))

        match reply:
            case Clip():
                return [audio(reply)]
            case Preamble():
                return [audio(reply.preamble), audio(reply.answer)]
            case FunctionCall():
                call = FunctionCallPart(reply.name, reply.arguments, self.sim.new_id("call_"))
                return [*([audio(reply.preamble)] if reply.preamble else []), call]
            case McpCall():
                mcp = McpCallPart(reply.server_label, reply.name, reply.arguments, reply.output, reply.error)
                return [*([audio(reply.preamble)] if reply.preamble else []), mcp, audio(reply.answer)]

    def _check_tools(self, parts: list[Part], params: Json) -> None:
        """Anomalies: a scripted call the effective tools (the response's, else the session's) do not
        declare, or that ``tool_choice`` forbids."""
        tools: list[Json] = params.get("tools", self.session.get("tools")) or []
        choice = params.get("tool_choice", self.session.get("tool_choice"))
        for part in parts:
            if isinstance(part, FunctionCallPart):
                if not any(t.get("type") == "function" and t.get("name") == part.name for t in tools):
                    self.anomalies.append(
                        f"scripted call to function {part.name}, which the tools do not declare"
                    )
                if choice == "none":
                    self.anomalies.append(f"scripted call to function {part.name} with tool_choice 'none'")
            elif isinstance(part, McpCallPart):
                servers = [
                    t for t in tools if t.get("type") == "mcp" and t.get("server_label") == part.server_label
                ]
                if not servers:
                    self.anomalies.append(
                        f"scripted call to MCP server {part.server_label}, which the tools do not declare"
                    )
                    continue
                allowed = servers[0].get("allowed_tools")
                if isinstance(allowed, list) and part.name not in allowed:
                    self.anomalies.append(f"scripted call to MCP tool {part.name}, not in allowed_tools")
                if self.mcp_listed.get(part.server_label) is False:
                    self.anomalies.append(
                        f"scripted call to MCP server {part.server_label}, whose listing failed"
                    )
                if choice == "none":
                    self.anomalies.append(f"scripted call to MCP tool {part.name} with tool_choice 'none'")

    async def _cancel(self, reason: str) -> None:
        active = self._active
        if active is not None:
            await active.cancel(reason)
