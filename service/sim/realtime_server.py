"""A local stand-in for the OpenAI Realtime API (GA), speaking its WebSocket protocol.

The demo and the end-to-end tests point the service at :class:`RealtimeSimulator` instead of
``wss://api.openai.com/v1/realtime``. It is a strict test double: what the real server rejects, it
rejects with the same ``error`` event (code, message, param), so that the bridge's mistakes show up
in tests. The wire facts come from ``shared/reference/realtime-ga.md`` and from a published live
capture of the GA server (September 2026), whose findings are repeated here where they matter:

- The handshake always succeeds (101) on ``/v1/realtime`` (and Azure's ``/openai/v1/realtime``).
  Then, like the real server, a bad or missing key gets ``error`` + close 3000, a missing or
  unsupported ``?model=`` and the retired ``OpenAI-Beta: realtime=v1`` header get ``error`` + close
  4000; the close reason is ``<error.type>.<error.code>``. ``reject_in_handshake=True`` instead
  answers those with HTTP 401/400 before the upgrade (what a proxy in front of the API may do).
- Auth: ``Authorization: Bearer <key>`` or Azure's ``api-key: <key>``.
- ``session.created`` carries the GA default session (server VAD 0.5 / 300 ms / 200 ms).
  ``session.update`` is validated like GA (the whole update is discarded on the first problem) and
  merged; ``session.updated`` carries the full effective session.
- Server VAD is energy based, on 10 ms windows: a window is speech when its RMS level reaches
  ``VAD_FLOOR_DBFS + threshold * VAD_SPAN_DB`` dBFS (threshold 0 -> -60 dBFS, 0.5 -> -35 dBFS,
  1 -> -10 dBFS) and speech starts after ``VAD_MIN_SPEECH_MS`` of such windows.
  ``audio_start_ms`` = onset - ``prefix_padding_ms`` (clamped to the start of the uncommitted
  buffer); speech stops once ``silence_duration_ms`` has passed without speech and
  ``audio_end_ms`` is that moment. Both count ms of audio appended (the model's input clock).
  ``semantic_vad`` is approximated by server VAD with a silence of 400 / 700 / 1000 ms for
  eagerness high / medium (auto) / low. ``idle_timeout_ms`` is accepted but not simulated.
- There is no model: :class:`~service.sim.script.ReplyScript` chooses the clip each response
  plays and the caller's input transcription. Audio is streamed in chunks of random duration
  (``chunk_ms``) with transcript deltas, ``speed`` times faster than real time. Event order is the
  GA order: ``response.created``, ``response.output_item.added``, ``conversation.item.added``,
  ``response.content_part.added``, deltas, ``response.output_audio.done``,
  ``response.output_audio_transcript.done``, ``response.content_part.done``,
  ``conversation.item.done``, ``response.output_item.done``, ``response.done`` and then
  ``rate_limits.updated``. Output modality ``text`` is accepted but the simulator always speaks.
- Not simulated: function calling, MCP, ``conversation.item.retrieve`` audio bytes, the 60 minute
  session cap. A few error messages are inferred rather than captured; they are marked below.

Observability: :attr:`RealtimeSimulator.connections` lists one :class:`SimConnection` per socket
with the client events received, the server events sent, the truncations performed, the responses,
the generated ms per item and ``anomalies`` (things the real server may tolerate but that show a
client bug, e.g. an odd-length PCM16 append). :class:`Fault` injects socket closes.

Run standalone: ``python -m service.sim.realtime_server --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import random
import re
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from service.sim.script import Clip, ReplyScript, alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

logger = logging.getLogger(__name__)

Json = dict[str, Any]

PATHS = ("/v1/realtime", "/openai/v1/realtime")
MODEL_RATE_HZ = 24_000
PCM_BYTES_PER_MS = 48
G711_BYTES_PER_MS = 8
VAD_WINDOW_MS = 10
VAD_FLOOR_DBFS = -60.0
VAD_SPAN_DB = 50.0
VAD_MIN_SPEECH_MS = 20
MIN_COMMIT_MS = 100
SESSION_LIFETIME_S = 3600
AUDIO_TOKENS_IN_PER_S = 10  # input audio: about one token per 100 ms
AUDIO_TOKENS_OUT_PER_S = 20  # output audio: about one token per 50 ms
RATE_LIMIT_TOKENS = 15_000_000
KNOWN_MODELS = frozenset({
    "gpt-realtime", "gpt-realtime-1.5", "gpt-realtime-2", "gpt-realtime-2.1", "gpt-realtime-2.1-mini",
    "gpt-realtime-2025-08-28", "gpt-realtime-mini", "gpt-realtime-mini-2025-10-06",
    "gpt-realtime-mini-2025-12-15", "gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview",
    "gpt-audio-1.5", "gpt-audio-mini",
})  # fmt: skip
#: The ``type`` values the GA server lists when it rejects an unknown one (captured).
SUPPORTED_TYPES = (
    "session.update", "session.close", "input_audio_buffer.append", "session.input_audio_buffer.append",
    "input_audio_buffer.commit", "input_audio_buffer.clear", "conversation.item.create",
    "conversation.item.truncate", "conversation.item.delete", "conversation.item.retrieve",
    "response.create", "response.cancel",
)  # fmt: skip
DEFAULT_INSTRUCTIONS = (
    "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. "
    "Your voice and personality should be warm and engaging."
)
SEMANTIC_SILENCE_MS = {"high": 400, "medium": 700, "auto": 700, "low": 1000}


@dataclass(frozen=True, slots=True)
class Problem:
    """One ``error`` event's ``error`` object (without the client's ``event_id``)."""

    code: str | None
    message: str
    param: str | None = None
    type: str = "invalid_request_error"


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection. ``close_after_ms``: close every socket that long after it connected.
    ``close_on_response``: close right after the first audio delta of the k-th response (1-based)."""

    close_after_ms: int | None = None
    close_on_response: int | None = None
    close_code: int = 1011
    close_reason: str = "simulated server failure"


@dataclass(frozen=True, slots=True)
class Truncation:
    item_id: str
    audio_end_ms: int
    generated_ms: int  # the item's audio before the cut


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


# --- validation (GA error wording) ---------------------------------------------------------------

Validator = Callable[[Any, str], Problem | None]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_type(path: str, expected: str, value: Any) -> Problem:
    message = f"Invalid type for '{path}': expected {expected}, but got {_kind(value)} instead."
    return Problem("invalid_type", message, path)


def _quoted_list(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _invalid_value(path: str, value: Any, allowed: tuple[str, ...]) -> Problem:
    message = f"Invalid value: '{value}'. Supported values are: {_quoted_list(allowed)}."
    return Problem("invalid_value", message, path)


def _any(value: Any, path: str) -> Problem | None:
    return None


def _str(value: Any, path: str) -> Problem | None:
    return None if isinstance(value, str) else _invalid_type(path, "a string", value)


def _bool(value: Any, path: str) -> Problem | None:
    return None if isinstance(value, bool) else _invalid_type(path, "a boolean", value)


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _number(low: float | None, high: float | None, integer: bool) -> Validator:
    def check(value: Any, path: str) -> Problem | None:
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if not ok or isinstance(value, bool):
            return _invalid_type(path, "an integer" if integer else "a decimal", value)
        name = "integer" if integer else "decimal"
        if low is not None and value < low:
            message = (
                f"Invalid '{path}': {name} below minimum value. "
                f"Expected a value >= {_number_text(low)}, but got {value} instead."
            )
            return Problem(f"{name}_below_min_value", message, path)
        if high is not None and value > high:
            message = (
                f"Invalid '{path}': {name} above maximum value. "
                f"Expected a value <= {_number_text(high)}, but got {value} instead."
            )
            return Problem(f"{name}_above_max_value", message, path)
        return None

    return check


def _enum(*allowed: str) -> Validator:
    def check(value: Any, path: str) -> Problem | None:
        if not isinstance(value, str):
            return _invalid_type(path, "a string", value)
        return None if value in allowed else _invalid_value(path, value, allowed)

    return check


def _nullable(inner: Validator) -> Validator:
    return lambda value, path: None if value is None else inner(value, path)


def _list(inner: Validator) -> Validator:
    def check(value: Any, path: str) -> Problem | None:
        if not isinstance(value, list):
            return _invalid_type(path, "an array", value)
        for i, v in enumerate(value):
            if problem := inner(v, f"{path}[{i}]"):
                return problem
        return None

    return check


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _obj(fields: Mapping[str, Validator], required: tuple[str, ...] = ()) -> Validator:
    def check(value: Any, path: str) -> Problem | None:
        if not isinstance(value, dict):
            return _invalid_type(path, "an object", value)
        for key in required:
            if key not in value:
                p = _join(path, key)
                return Problem("missing_required_parameter", f"Missing required parameter: '{p}'.", p)
        for key, v in value.items():
            p = _join(path, key)
            if key not in fields:
                return Problem("unknown_parameter", f"Unknown parameter: '{p}'.", p)
            if problem := fields[key](v, p):
                return problem
        return None

    return check


def _by_type(variants: dict[str, Validator]) -> Validator:
    """An object whose ``type`` selects the schema."""

    def check(value: Any, path: str) -> Problem | None:
        if not isinstance(value, dict):
            return _invalid_type(path, "an object", value)
        if "type" not in value:
            p = _join(path, "type")
            return Problem("missing_required_parameter", f"Missing required parameter: '{p}'.", p)
        kind = value["type"]
        if not isinstance(kind, str) or kind not in variants:
            return _enum(*variants)(kind, _join(path, "type"))
        return variants[kind](value, path)

    return check


def _max_tokens(value: Any, path: str) -> Problem | None:
    return None if value == "inf" else _number(1, 4096, True)(value, path)


def _metadata(value: Any, path: str) -> Problem | None:
    if not isinstance(value, dict):
        return _invalid_type(path, "an object", value)
    for key, v in value.items():
        if problem := _str(v, f"{path}.{key}"):
            return problem
    return None


def _voice(value: Any, path: str) -> Problem | None:
    return None if isinstance(value, str) else _obj({"id": _str}, ("id",))(value, path)


_FORMAT = _by_type({
    "audio/pcm": _obj({"type": _any, "rate": _number(MODEL_RATE_HZ, MODEL_RATE_HZ, True)}),
    "audio/pcmu": _obj({"type": _any}),
    "audio/pcma": _obj({"type": _any}),
})  # fmt: skip
_TURN_DETECTION = _nullable(_by_type({
    "server_vad": _obj({
        "type": _any, "threshold": _number(0.0, 1.0, False), "prefix_padding_ms": _number(0, None, True),
        "silence_duration_ms": _number(0, None, True), "create_response": _bool,
        "interrupt_response": _bool, "idle_timeout_ms": _nullable(_number(0, None, True)),
    }),
    "semantic_vad": _obj({
        "type": _any, "eagerness": _enum("low", "medium", "high", "auto"),
        "create_response": _bool, "interrupt_response": _bool,
    }),
}))  # fmt: skip
_TOOL = _by_type({
    "function": _obj({"type": _any, "name": _str, "description": _str, "parameters": _any}),
    "mcp": _any,
})  # fmt: skip
_MODALITIES = _list(_enum("text", "audio"))
_SESSION = _obj({
    "type": _enum("realtime", "transcription"), "model": _str, "instructions": _str,
    "output_modalities": _MODALITIES, "max_output_tokens": _max_tokens, "tools": _list(_TOOL),
    "tool_choice": _any, "tracing": _any, "truncation": _any, "prompt": _any, "include": _any,
    "reasoning": _any, "parallel_tool_calls": _bool,
    "audio": _obj({
        "input": _obj({
            "format": _FORMAT, "turn_detection": _TURN_DETECTION,
            "transcription": _nullable(_obj({
                "model": _str, "language": _str, "languages": _list(_str), "prompt": _str,
                "keywords": _list(_str), "delay": _enum("minimal", "low", "medium", "high", "xhigh"),
            })),
            "noise_reduction": _nullable(_obj({
                "type": _enum("near_field", "far_field"), "strength": _number(0.0, None, False),
            })),
        }),
        "output": _obj({"format": _FORMAT, "voice": _voice, "speed": _number(0.25, 1.5, False)}),
    }),
}, required=("type",))  # fmt: skip
_RESPONSE = _obj({
    "instructions": _str, "output_modalities": _MODALITIES, "max_output_tokens": _max_tokens,
    "metadata": _nullable(_metadata), "conversation": _str, "input": _list(_any), "tools": _list(_TOOL),
    "tool_choice": _any, "prompt": _any, "reasoning": _any, "parallel_tool_calls": _bool,
    "audio": _obj({"output": _obj({"format": _FORMAT, "voice": _voice})}),
})  # fmt: skip
_ITEM = _by_type({
    "message": _obj({
        "type": _any, "id": _str, "object": _str, "status": _str,
        "role": _enum("user", "assistant", "system"), "content": _list(_any),
    }, ("role", "content")),
    "function_call": _obj({
        "type": _any, "id": _str, "object": _str, "status": _str, "call_id": _str, "name": _str,
        "arguments": _str,
    }, ("name", "arguments")),
    "function_call_output": _obj({
        "type": _any, "id": _str, "object": _str, "status": _str, "call_id": _str, "output": _str,
    }, ("call_id", "output")),
})  # fmt: skip
_BASE = {"type": _any, "event_id": _str}
_EVENTS: dict[str, Validator] = {
    "session.update": _obj({**_BASE, "session": _SESSION}, ("session",)),
    "input_audio_buffer.append": _obj({**_BASE, "audio": _str}, ("audio",)),
    "session.input_audio_buffer.append": _obj({**_BASE, "audio": _str}, ("audio",)),
    "input_audio_buffer.commit": _obj(_BASE),
    "input_audio_buffer.clear": _obj(_BASE),
    "conversation.item.create": _obj(
        {**_BASE, "previous_item_id": _nullable(_str), "item": _ITEM}, ("item",)
    ),
    "conversation.item.truncate": _obj(
        {
            **_BASE,
            "item_id": _str,
            "content_index": _number(0, None, True),
            "audio_end_ms": _number(0, None, True),
        },
        ("item_id", "content_index", "audio_end_ms"),
    ),
    "conversation.item.delete": _obj({**_BASE, "item_id": _str}, ("item_id",)),
    "conversation.item.retrieve": _obj({**_BASE, "item_id": _str}, ("item_id",)),
    "response.create": _obj({**_BASE, "response": _RESPONSE}),
    "response.cancel": _obj({**_BASE, "response_id": _str}),
    "session.close": _obj(_BASE),
}


def default_turn_detection(kind: str = "server_vad") -> Json:
    if kind == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": "auto",
            "create_response": True,
            "interrupt_response": True,
        }
    return {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
        "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
    }  # fmt: skip


def default_session(session_id: str, model: str, now_s: float) -> Json:
    """The session object of ``session.created`` (GA defaults, as captured)."""
    pcm = {"type": "audio/pcm", "rate": MODEL_RATE_HZ}
    turn_detection = default_turn_detection() | {"silence_duration_ms": 200}
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": ["audio"], "instructions": DEFAULT_INSTRUCTIONS, "tools": [],
        "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None, "truncation": "auto",
        "prompt": None, "expires_at": int(now_s) + SESSION_LIFETIME_S, "include": None,
        "audio": {
            "input": {"format": dict(pcm), "transcription": None, "noise_reduction": None,
                      "turn_detection": turn_detection},
            "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
        },
    }  # fmt: skip


def merge_session(current: Json, update: Json) -> Json:
    """A GA partial update: present fields replace, nested objects merge, null disables.
    ``turn_detection`` is replaced whole (missing fields take their defaults)."""
    merged = dict(current)
    for key, value in update.items():
        if key == "turn_detection" and isinstance(value, dict):
            merged[key] = default_turn_detection(str(value["type"])) | value
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "format":
            merged[key] = merge_session(merged[key], value)
        else:
            merged[key] = value
    return merged


def _bytes_per_ms(fmt: Json) -> int:
    return PCM_BYTES_PER_MS if fmt.get("type") == "audio/pcm" else G711_BYTES_PER_MS


def _samples(data: bytes, fmt: Json) -> npt.NDArray[np.int16]:
    kind = fmt.get("type")
    if kind == "audio/pcmu":
        return ulaw_decode(data)
    if kind == "audio/pcma":
        return alaw_decode(data)
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")


def _encode_output(clip: Clip, fmt: Json) -> bytes:
    """The clip in the session's output format (24 kHz PCM16, or G.711 at 8 kHz)."""
    samples = np.frombuffer(clip.pcm, dtype="<i2").astype(np.float64)
    target_hz = MODEL_RATE_HZ if fmt.get("type") == "audio/pcm" else 8_000
    if clip.rate_hz != target_hz:
        if clip.rate_hz > target_hz:  # windowed-sinc low-pass before decimating
            cutoff = 0.45 * target_hz / clip.rate_hz
            n = np.arange(-48, 49)
            taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(len(n))
            samples = np.convolve(samples, taps / taps.sum(), mode="same")
        count = len(samples) * target_hz // clip.rate_hz
        positions = np.arange(count) * (clip.rate_hz / target_hz)
        samples = np.interp(positions, np.arange(len(samples)), samples)
    pcm = np.clip(np.round(samples), -32768, 32767).astype(np.int16)
    if fmt.get("type") == "audio/pcmu":
        return ulaw_encode(pcm)
    if fmt.get("type") == "audio/pcma":
        return alaw_encode(pcm)
    return pcm.astype("<i2").tobytes()


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


@dataclass(slots=True)
class _Item:
    id: str
    type: str
    role: str | None
    content_type: str | None = None  # "input_audio", "output_audio", "input_text", ...
    transcript: str | None = None
    audio_ms: int = 0
    audio_bytes: int = 0
    status: str = "completed"
    payload: Json | None = None  # an item the client created: echoed as sent

    def as_json(self, with_content: bool = True) -> Json:
        if self.payload is not None:
            return {**self.payload, "id": self.id, "object": "realtime.item", "status": self.status}
        content = [{"type": self.content_type, "transcript": self.transcript}] if with_content else []
        return {
            "id": self.id, "object": "realtime.item", "type": self.type, "status": self.status,
            "role": self.role, "content": content,
        }  # fmt: skip


@dataclass(slots=True)
class _Active:
    record: ResponseRecord
    item: _Item
    audio: bytes
    words: list[str]
    bytes_per_ms: int
    params: Json
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    item_added: bool = False
    previous_item_id: str | None = None
    sent_bytes: int = 0
    sent_words: int = 0


class SimConnection:
    """One client socket: the session state, and everything exchanged on it."""

    def __init__(self, sim: RealtimeSimulator, ws: ServerConnection, model: str) -> None:
        self._sim = sim
        self._ws = ws
        self.model = model
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
        self.closed = asyncio.Event()
        self.input_ms = 0.0  # the model's input clock: ms of audio appended
        self._items: dict[str, _Item] = {}
        self._order: list[str] = []
        self._conversation_id = sim.new_id("conv_")
        self._user_turns = 0
        self._audio_produced = False
        self._active: _Active | None = None
        self._last_input_tokens = 0
        self._tokens_remaining = RATE_LIMIT_TOKENS
        self._buffer_start_ms = 0.0
        self._window = np.zeros(0, dtype=np.int16)
        self._window_start_ms = 0.0
        self._voiced_run_ms = 0
        self._onset_ms = 0.0
        self._last_voice_ms = 0.0
        self._speech_item: str | None = None
        self._timer: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, problem: Problem | None, close_code: int) -> None:
        try:
            if problem is not None:
                await self._error(problem, None)
                reason = f"{problem.type}.{problem.code}" if problem.code else problem.type
                await self._ws.close(close_code, reason)
                return
            self.session = default_session(self._sim.new_id("sess_"), self.model, time.time())
            await self._send({"type": "session.created", "session": json.loads(json.dumps(self.session))})
            fault = self._sim.fault
            if fault.close_after_ms is not None:
                self._timer = asyncio.create_task(self._close_later(fault.close_after_ms / 1000))
            async for message in self._ws:
                await self._receive(message)
        except ConnectionClosed:
            pass
        finally:
            pending = [t for t in (self._timer, self._active.task if self._active else None) if t]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            if self._closing is not None:
                await asyncio.wait({self._closing})
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""
            self.closed.set()

    async def _close_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._begin_close()

    def _begin_close(self) -> None:
        if self._closing is None:
            fault = self._sim.fault
            logger.debug("= fault: closing with %s", fault.close_code)
            self._closing = asyncio.create_task(self._ws.close(fault.close_code, fault.close_reason))

    async def _send(self, payload: Json) -> None:
        event = {"type": payload["type"], "event_id": self._sim.new_id("event_")}
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
        problem: Problem | None
        if isinstance(message, bytes):
            text = "Expected a text WebSocket message; binary frames are not supported."
            await self._error(Problem("invalid_event", text), None)
            return
        try:
            event = json.loads(message)
        except (ValueError, RecursionError):
            await self._error(Problem("invalid_json", "Invalid event: failed to parse JSON value."), None)
            return
        if not isinstance(event, dict):
            # inferred wording: the capture shows only the non-JSON case
            await self._error(Problem("invalid_json", "Invalid event: expected a JSON object."), None)
            return
        self.client_events.append(event)
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        kind = event.get("type")
        logger.debug("< %s", kind)
        if "type" not in event:
            problem = Problem("missing_required_parameter", "Missing required parameter: 'type'.", "type")
            await self._error(problem, event_id)
            return
        if not isinstance(kind, str) or kind not in SUPPORTED_TYPES:
            await self._error(_invalid_value("type", kind, SUPPORTED_TYPES), event_id)
            return
        problem = _EVENTS[kind](event, "")
        if problem is None:
            problem = await self._handlers()[kind](event)
        if problem is not None:
            await self._error(problem, event_id)

    def _handlers(self) -> dict[str, Callable[[Json], Any]]:
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
        if voice is not None and voice != self._output()["voice"] and self._audio_produced:
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

    # --- input audio and VAD ---------------------------------------------------------------------

    async def _on_append(self, event: Json) -> Problem | None:
        if event["type"] == "session.input_audio_buffer.append":
            self.anomalies.append("session.input_audio_buffer.append is the translation event name")
        try:
            data = base64.b64decode(event["audio"], validate=True)
        except (binascii.Error, ValueError):  # inferred wording
            return Problem("invalid_value", "Invalid 'audio': expected base64-encoded audio bytes.", "audio")
        if len(data) > 15 * 2**20:  # inferred wording
            return Problem("invalid_value", "Invalid 'audio': at most 15 MiB of audio per event.", "audio")
        fmt = self._input()["format"]
        if fmt.get("type") == "audio/pcm" and len(data) % 2:
            self.anomalies.append(f"odd-length PCM16 append ({len(data)} bytes)")
        await self._feed(data, fmt)
        return None

    def _reset_vad(self) -> None:
        self._window = np.zeros(0, dtype=np.int16)
        self._window_start_ms = self.input_ms
        self._voiced_run_ms = 0
        self._speech_item = None

    def _vad_params(self, td: Json) -> tuple[float, int, int]:
        """(threshold dBFS, prefix padding ms, silence duration ms)."""
        if td["type"] == "semantic_vad":
            return (
                VAD_FLOOR_DBFS + 0.5 * VAD_SPAN_DB,
                300,
                SEMANTIC_SILENCE_MS[str(td.get("eagerness", "auto"))],
            )
        threshold_db = VAD_FLOOR_DBFS + float(td["threshold"]) * VAD_SPAN_DB
        return threshold_db, int(td["prefix_padding_ms"]), int(td["silence_duration_ms"])

    async def _feed(self, data: bytes, fmt: Json) -> None:
        self.input_ms += len(data) / _bytes_per_ms(fmt)
        td: Json | None = self._input()["turn_detection"]
        if td is None:
            self._window_start_ms = self.input_ms
            return
        rate_hz = MODEL_RATE_HZ if fmt.get("type") == "audio/pcm" else 8_000
        size = rate_hz * VAD_WINDOW_MS // 1000
        samples = np.concatenate([self._window, _samples(data, fmt)])
        count = len(samples) // size
        for i in range(count):
            window = samples[i * size : (i + 1) * size].astype(np.float64)
            rms = math.sqrt(float(np.mean(window * window)))
            level_dbfs = 20 * math.log10(max(rms, 1e-9) / 32768)
            start_ms = self._window_start_ms + i * VAD_WINDOW_MS
            await self._vad_window(level_dbfs, start_ms, td)
            if self._input()["turn_detection"] is not td:  # a handler changed the session: stop here
                return
        self._window = samples[count * size :]
        self._window_start_ms += count * VAD_WINDOW_MS

    async def _vad_window(self, level_dbfs: float, start_ms: float, td: Json) -> None:
        threshold_dbfs, prefix_ms, silence_ms = self._vad_params(td)
        voiced = level_dbfs >= threshold_dbfs
        end_ms = start_ms + VAD_WINDOW_MS
        if self._speech_item is None:
            if not voiced:
                self._voiced_run_ms = 0
                return
            if self._voiced_run_ms == 0:
                self._onset_ms = start_ms
            self._voiced_run_ms += VAD_WINDOW_MS
            if self._voiced_run_ms >= VAD_MIN_SPEECH_MS:
                await self._speech_started(prefix_ms, end_ms, td)
        elif voiced:
            self._last_voice_ms = end_ms
        elif end_ms - self._last_voice_ms >= silence_ms:
            await self._speech_stopped(end_ms, td)

    async def _speech_started(self, prefix_ms: int, now_ms: float, td: Json) -> None:
        item_id = self._sim.new_id("item_")
        self._speech_item = item_id
        self._last_voice_ms = now_ms
        start_ms = max(self._buffer_start_ms, self._onset_ms - prefix_ms, 0.0)
        await self._send({"type": "input_audio_buffer.speech_started", "audio_start_ms": round(start_ms),
                          "item_id": item_id})  # fmt: skip
        if td.get("interrupt_response", True) and self._active is not None:
            await self._cancel("turn_detected")

    async def _speech_stopped(self, end_ms: float, td: Json) -> None:
        item_id = self._speech_item
        assert item_id is not None
        self._speech_item = None
        self._voiced_run_ms = 0
        await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": round(end_ms),
                          "item_id": item_id})  # fmt: skip
        await self._commit(item_id, end_ms)
        if td.get("create_response", True) and self._active is None:
            await self._start_response("vad", {})

    async def _commit(self, item_id: str, end_ms: float) -> None:
        previous = self._order[-1] if self._order else None
        item = _Item(
            item_id, "message", "user", "input_audio", audio_ms=round(end_ms - self._buffer_start_ms)
        )
        self._buffer_start_ms = end_ms
        self._items[item_id] = item
        self._order.append(item_id)
        self._user_turns += 1
        await self._send(
            {"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id}
        )
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item.as_json()}
        )
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_json()}
        )
        if self._input()["transcription"] is not None:
            item.transcript = self._sim.script.transcript_for(self._user_turns)
            audio_tokens = math.ceil(item.audio_ms * AUDIO_TOKENS_IN_PER_S / 1000)
            text_tokens = _text_tokens(item.transcript)
            usage = {
                "type": "tokens", "total_tokens": audio_tokens + text_tokens, "input_tokens": audio_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                "output_tokens": text_tokens,
            }  # fmt: skip
            await self._send({
                "type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                "content_index": 0, "transcript": item.transcript, "usage": usage,
            })  # fmt: skip

    async def _on_commit(self, event: Json) -> Problem | None:
        buffered_ms = self.input_ms - self._buffer_start_ms
        if buffered_ms < MIN_COMMIT_MS:
            message = (
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio."
            )
            return Problem("input_audio_buffer_commit_empty", message)
        item_id = self._speech_item or self._sim.new_id("item_")
        self._speech_item = None
        self._voiced_run_ms = 0
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
        item_id = str(raw.get("id") or self._sim.new_id("item_"))
        if item_id in self._items:  # inferred wording
            return Problem("invalid_value", f"Item with id '{item_id}' already exists.", "item.id")
        previous = event.get("previous_item_id")
        if previous is not None and previous not in self._items:  # inferred wording
            return Problem("invalid_value", f"Item with id '{previous}' not found.", "previous_item_id")
        content = raw.get("content") or [{}]
        first: Json = content[0] if isinstance(content[0], dict) else {}
        item = _Item(item_id, str(raw["type"]), raw.get("role"), first.get("type"),
                     transcript=first.get("text", first.get("transcript")), payload=raw)  # fmt: skip
        index = self._order.index(previous) + 1 if previous is not None else len(self._order)
        previous = self._order[index - 1] if index > 0 else None
        self._order.insert(index, item_id)
        self._items[item_id] = item
        if item.role == "user":
            self._user_turns += 1
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item.as_json()}
        )
        await self._send(
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_json()}
        )
        return None

    async def _on_item_delete(self, event: Json) -> Problem | None:
        item_id = event["item_id"]
        if item_id not in self._items:  # inferred wording
            message = f"Error deleting item: the item with id '{item_id}' does not exist."
            return Problem("item_delete_invalid_item_id", message, "item_id")
        del self._items[item_id]
        self._order.remove(item_id)
        await self._send({"type": "conversation.item.deleted", "item_id": item_id})
        return None

    async def _on_item_retrieve(self, event: Json) -> Problem | None:
        item = self._items.get(event["item_id"])
        if item is None:  # inferred wording
            message = f"Error retrieving item: the item with id '{event['item_id']}' does not exist."
            return Problem("item_retrieve_invalid_item_id", message, "item_id")
        await self._send({"type": "conversation.item.retrieved", "item": item.as_json()})
        return None

    async def _on_truncate(self, event: Json) -> Problem | None:
        item_id: str = event["item_id"]
        item = self._items.get(item_id)
        if item is None:  # code captured; wording inferred
            message = f"Error truncating item: the item with id '{item_id}' does not exist."
            return Problem("item_truncate_invalid_item_id", message, "item_id")
        if item.role != "assistant" or item.content_type != "output_audio" or item.audio_bytes == 0:
            return Problem("unsupported_content_type", "Only model output audio messages can be truncated")
        if event["content_index"] != 0:  # inferred wording
            message = (
                f"Invalid 'content_index': item '{item_id}' has no content at index {event['content_index']}."
            )
            return Problem("invalid_value", message, "content_index")
        end_ms: int = event["audio_end_ms"]
        if end_ms > item.audio_ms:
            return Problem(
                "invalid_value", f"Audio content of {item.audio_ms}ms is already shorter than {end_ms}ms"
            )
        if self._active is not None and self._active.item is item:
            self.anomalies.append(f"truncate of {item_id} while it is still being generated")
        self.truncations.append(Truncation(item_id, end_ms, item.audio_ms))
        if item.transcript and item.audio_ms:
            words = re.findall(r"\s*\S+", item.transcript)
            item.transcript = "".join(words[: math.ceil(len(words) * end_ms / item.audio_ms)])
        item.audio_bytes = item.audio_bytes * end_ms // item.audio_ms
        item.audio_ms = end_ms
        await self._send({"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
                          "audio_end_ms": end_ms})  # fmt: skip
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
        clip = self._sim.script.reply_for(self._user_turns)
        requested: Json = params.get("audio", {}).get("output", {})
        fmt = requested.get("format") or self._output()["format"]
        voice = requested.get("voice") or self._output()["voice"]
        record = ResponseRecord(self._sim.new_id("resp_"), self._sim.new_id("item_"), clip.name, trigger,
                                params.get("instructions"))  # fmt: skip
        self.responses.append(record)
        item = _Item(
            record.item_id, "message", "assistant", "output_audio", transcript="", status="in_progress"
        )
        active = _Active(
            record, item, self._sim.encoded(clip, fmt), re.findall(r"\s*\S+", clip.text), _bytes_per_ms(fmt),
            params={
                "output_modalities": params.get("output_modalities", self.session["output_modalities"]),
                "max_output_tokens": params.get("max_output_tokens", self.session["max_output_tokens"]),
                "metadata": params.get("metadata"), "format": fmt, "voice": voice,
                "instructions": params.get("instructions", ""),
            },
        )  # fmt: skip
        self._active = active
        await self._send({"type": "response.created", "response": self._response_json(active, None)})
        active.task = asyncio.create_task(self._stream(active))

    def _response_json(self, active: _Active, usage: Json | None) -> Json:
        record = active.record
        details = None if record.reason is None else {"type": record.status, "reason": record.reason}
        output = [active.item.as_json()] if active.item_added and record.status != "in_progress" else []
        p = active.params
        return {
            "object": "realtime.response", "id": record.id, "status": record.status,
            "status_details": details, "output": output, "conversation_id": self._conversation_id,
            "output_modalities": p["output_modalities"], "max_output_tokens": p["max_output_tokens"],
            "audio": {"output": {"format": p["format"], "voice": p["voice"]}}, "usage": usage,
            "metadata": p["metadata"],
        }  # fmt: skip

    async def _cancel(self, reason: str) -> None:
        active = self._active
        if active is None:
            return
        active.cancel_reason = reason
        active.wake.set()
        if active.task is not None:
            await asyncio.wait({active.task})

    async def _pause(self, active: _Active, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(active.wake.wait(), seconds)

    async def _stream(self, active: _Active) -> None:
        sim, record, item = self._sim, active.record, active.item
        ids = {"response_id": record.id, "item_id": item.id, "output_index": 0, "content_index": 0}
        try:
            await self._pause(active, sim.first_delta_delay_ms / 1000)
            if active.cancel_reason is None:
                active.previous_item_id = self._order[-1] if self._order else None
                self._items[item.id] = item
                self._order.append(item.id)
                active.item_added = True
                opened = item.as_json(with_content=False)
                await self._send({"type": "response.output_item.added", "response_id": record.id,
                                  "output_index": 0, "item": opened})  # fmt: skip
                await self._send({"type": "conversation.item.added",
                                  "previous_item_id": active.previous_item_id, "item": opened})  # fmt: skip
                await self._send({"type": "response.content_part.added", **ids,
                                  "part": {"type": "audio", "transcript": ""}})  # fmt: skip
            while active.cancel_reason is None and active.sent_bytes < len(active.audio):
                chunk_ms = sim.rng.randint(*sim.chunk_ms)
                chunk = active.audio[active.sent_bytes : active.sent_bytes + chunk_ms * active.bytes_per_ms]
                await self._send({"type": "response.output_audio.delta", **ids,
                                  "delta": base64.b64encode(chunk).decode("ascii")})  # fmt: skip
                first = active.sent_bytes == 0
                active.sent_bytes += len(chunk)
                item.audio_bytes += len(chunk)
                item.audio_ms = item.audio_bytes // active.bytes_per_ms
                record.audio_ms = self.generated_ms[item.id] = active.sent_bytes // active.bytes_per_ms
                self._audio_produced = True
                due = math.ceil(len(active.words) * active.sent_bytes / len(active.audio))
                while active.sent_words < due:
                    delta = active.words[active.sent_words]
                    active.sent_words += 1
                    await self._send(
                        {"type": "response.output_audio_transcript.delta", **ids, "delta": delta}
                    )
                if first and sim.fault.close_on_response == len(self.responses):
                    self._begin_close()
                    return
                await self._pause(
                    active, len(chunk) / active.bytes_per_ms / 1000 / sim.speed if sim.speed > 0 else 0
                )
            await self._finish(active, ids)
        except ConnectionClosed:
            pass
        finally:
            if self._active is active:
                self._active = None

    async def _finish(self, active: _Active, ids: Json) -> None:
        record, item = active.record, active.item
        record.status = "cancelled" if active.cancel_reason else "completed"
        record.reason = active.cancel_reason
        item.status = "incomplete" if active.cancel_reason else "completed"
        item.transcript = "".join(active.words[: active.sent_words])
        if active.item_added:
            await self._send({"type": "response.output_audio.done", **ids})
            await self._send(
                {"type": "response.output_audio_transcript.done", **ids, "transcript": item.transcript}
            )
            await self._send({"type": "response.content_part.done", **ids,
                              "part": {"type": "audio", "transcript": item.transcript}})  # fmt: skip
            previous = active.previous_item_id
            await self._send(
                {"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_json()}
            )
            await self._send({"type": "response.output_item.done", "response_id": record.id,
                              "output_index": 0, "item": item.as_json()})  # fmt: skip
        usage = self._usage(active)
        self._active = None
        await self._send({"type": "response.done", "response": self._response_json(active, usage)})
        self._tokens_remaining = max(self._tokens_remaining - int(usage["total_tokens"]), 0)
        limits = [{"name": "tokens", "limit": RATE_LIMIT_TOKENS, "remaining": self._tokens_remaining,
                   "reset_seconds": 0.001}]  # fmt: skip
        await self._send({"type": "rate_limits.updated", "rate_limits": limits})

    def _usage(self, active: _Active) -> Json:
        """Plausible GA usage: the whole conversation is input; audio tokens from durations."""
        instructions = str(self.session.get("instructions") or "") + str(active.params["instructions"] or "")
        text_in = _text_tokens(instructions)
        audio_in = 0
        for item_id in self._order:
            other = self._items[item_id]
            if other is active.item:
                continue
            if other.content_type in ("input_audio", "output_audio"):
                audio_in += math.ceil(other.audio_ms * AUDIO_TOKENS_IN_PER_S / 1000)
            elif other.transcript:
                text_in += _text_tokens(other.transcript)
        input_tokens = text_in + audio_in
        cached = min(self._last_input_tokens, input_tokens) // 64 * 64
        cached_text = min(cached, text_in)
        self._last_input_tokens = input_tokens
        audio_out = round(active.sent_bytes / active.bytes_per_ms * AUDIO_TOKENS_OUT_PER_S / 1000)
        text_out = _text_tokens(active.item.transcript or "")
        return {
            "total_tokens": input_tokens + audio_out + text_out, "input_tokens": input_tokens,
            "output_tokens": audio_out + text_out,
            "input_token_details": {
                "text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0, "cached_tokens": cached,
                "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached - cached_text,
                                          "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }  # fmt: skip


def _mask(key: str) -> str:
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 8 else "***"


class RealtimeSimulator:
    """The simulated Realtime server. ``async with RealtimeSimulator() as sim:`` starts it on
    127.0.0.1 with a free port; ``sim.url`` is the ``ws://`` URL (without ``?model=``).

    ``speed``: how much faster than real time audio is streamed (<= 0: no pause at all).
    ``chunk_ms``: the range of audio delta durations. ``first_delta_delay_ms``: wall time between
    ``response.created`` and the first output item. ``models``: accepted ``?model=`` values (None:
    any). ``seed``: makes ids and chunk sizes reproducible.
    """

    def __init__(
        self,
        script: ReplyScript | None = None,
        *,
        api_key: str = "sk-sim-test-key",
        speed: float = 5.0,
        chunk_ms: tuple[int, int] = (40, 200),
        first_delta_delay_ms: int = 50,
        models: frozenset[str] | None = KNOWN_MODELS,
        fault: Fault | None = None,
        reject_in_handshake: bool = False,
        seed: int | None = None,
    ) -> None:
        self.script = script if script is not None else ReplyScript.default()
        self.api_key = api_key
        self.speed = speed
        self.chunk_ms = chunk_ms
        self.first_delta_delay_ms = first_delta_delay_ms
        self.models = models
        self.fault = fault if fault is not None else Fault()
        self.reject_in_handshake = reject_in_handshake
        self.rng = random.Random(seed)
        self.connections: list[SimConnection] = []
        self._server: Server | None = None
        self._port = 0
        self._host = "127.0.0.1"
        self._changed = asyncio.Condition()
        self._encoded: dict[tuple[str, str], bytes] = {}

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self._port}{PATHS[0]}"

    def new_id(self, prefix: str) -> str:
        return prefix + "".join(self.rng.choices(string.ascii_letters + string.digits, k=21))

    def encoded(self, clip: Clip, fmt: Json) -> bytes:
        key = (clip.name, str(fmt.get("type")))
        if key not in self._encoded:
            self._encoded[key] = _encode_output(clip, fmt)
        return self._encoded[key]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await serve(
            self._handle, host, port, process_request=self._process_request, max_size=32 * 2**20
        )
        self._host = host
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        logger.debug("= realtime simulator on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RealtimeSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def wait_for_connection(self, index: int = 0, timeout_s: float = 5.0) -> SimConnection:
        """The ``index``-th connection, once it has been accepted."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.connections) > index)
        return self.connections[index]

    def check_request(self, request: Request) -> tuple[Problem | None, int]:
        """What the GA server says about a connection request: (problem, close code)."""
        headers = request.headers
        key = headers.get("api-key")
        authorization = headers.get("Authorization", "")
        if key is None and authorization.lower().startswith("bearer "):
            key = authorization[7:].strip()
        if not key:
            return Problem(None, "Missing bearer or basic authentication in header"), 3000
        if key != self.api_key:
            message = (
                f"Incorrect API key provided: {_mask(key)}. "
                "You can find your API key at https://platform.openai.com/account/api-keys."
            )
            return Problem("invalid_api_key", message), 3000
        if "realtime=v1" in headers.get("OpenAI-Beta", ""):
            message = "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
            return Problem("beta_api_shape_disabled", message), 4000
        model = parse_qs(urlsplit(request.path).query).get("model", [""])[0]
        if not model:
            message = (
                "You must provide a model parameter, for example "
                "wss://api.openai.com/v1/realtime?model=gpt-realtime-1.5"
            )
            return Problem("missing_model", message), 4000
        if self.models is not None and model not in self.models:
            return Problem("invalid_model", f'Model "{model}" is not supported in realtime mode.'), 4000
        return None, 1000

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path not in PATHS:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if self.reject_in_handshake:
            problem, code = self.check_request(request)
            if problem is not None:
                status = HTTPStatus.UNAUTHORIZED if code == 3000 else HTTPStatus.BAD_REQUEST
                body = {"error": {"type": problem.type, "code": problem.code, "message": problem.message,
                                  "param": problem.param}}  # fmt: skip
                return connection.respond(status, json.dumps(body) + "\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        model = parse_qs(urlsplit(ws.request.path).query).get("model", [""])[0]
        conn = SimConnection(self, ws, model)
        self.connections.append(conn)
        async with self._changed:
            self._changed.notify_all()
        problem, close_code = self.check_request(ws.request)
        await conn.run(problem, close_code)


async def _serve(args: argparse.Namespace) -> None:
    sim = RealtimeSimulator(api_key=args.api_key, speed=args.speed, seed=args.seed)
    await sim.start(args.host, args.port)
    logger.info("Realtime simulator listening on %s?model=gpt-realtime", sim.url)
    try:
        await asyncio.Future()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the OpenAI Realtime (GA) simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="sk-sim-test-key", help="the key clients must present")
    parser.add_argument("--speed", type=float, default=5.0, help="times faster than real time")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
