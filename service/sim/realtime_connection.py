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

Everything exchanged is kept for tests: ``client_events``, ``server_events``, ``truncations``,
``responses``, ``generated_ms`` (ms of audio generated per assistant item), ``anomalies``
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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, assert_never

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from service.sim.realtime_conversation import Conversation, Truncation, split_words, transcription_usage
from service.sim.realtime_response import ActiveResponse, ResponseRecord
from service.sim.realtime_schema import Json, Problem, parse_event, validate_event
from service.sim.realtime_session import (
    SESSION_LIMIT_REASON,
    bytes_per_ms,
    decode_input,
    default_session,
    merge_session,
    rate_hz,
)
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
        self.truncations: list[Truncation] = []
        self.responses: list[ResponseRecord] = []
        self.generated_ms: dict[str, int] = {}
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
        logger.debug("> %s", event["type"])
        await self._ws.send(json.dumps(event))

    async def _error(self, problem: Problem, client_event_id: str | None) -> None:
        error = {"type": problem.type, "code": problem.code, "message": problem.message,
                 "param": problem.param, "event_id": client_event_id}  # fmt: skip
        await self._send({"type": "error", "error": error})

    # --- dispatch ----------------------------------------------------------------------------

    async def _receive(self, message: str | bytes) -> None:
        event = parse_event(message)
        if isinstance(event, Problem):
            await self._error(event, None)
            return
        self.client_events.append(event)
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
        return None

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
        created = self.conversation.create(raw, item_id, event.get("previous_item_id"))
        if isinstance(created, Problem):
            return created
        item, previous = created
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item.as_json()}
        )
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_json()}
        )
        return None

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
        generating = active is not None and self.conversation.items.get(item_id) is active.item
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
        clip = self.sim.script.reply_for(self.conversation.user_turns)
        requested: Json = params.get("audio", {}).get("output", {})
        fmt = requested.get("format") or self._output()["format"]
        voice = requested.get("voice") or self._output()["voice"]
        record = ResponseRecord(self.sim.new_id("resp_"), self.sim.new_id("item_"), clip.name, trigger,
                                params.get("instructions"))  # fmt: skip
        self.responses.append(record)
        response = ActiveResponse(
            self, record, self.sim.encoded(clip, fmt), split_words(clip.text), bytes_per_ms(fmt),
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

    async def _cancel(self, reason: str) -> None:
        active = self._active
        if active is not None:
            await active.cancel(reason)
