"""OpenAI Realtime (GA) wire format: parse server events, serialize client events.

Pure: text in, values out. Base64 and JSON stop here. Only the events the bridge acts on get their own
type; every other well-formed server event becomes :class:`Unknown` (kept for logs and recordings), and a
message we cannot use becomes :class:`Invalid`. Nothing here raises on bad input.

Wire facts: ``shared/reference/realtime-ga.md`` (GA only: the beta names are retired).
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

from service.wire import fields
from service.wire.fields import FieldError

BYTES_PER_MS = 48
"""PCM16 at 24 kHz: two bytes a sample, 24 samples a millisecond."""

# --- events (server -> us) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionCreated:
    session_id: str
    expires_at_s: int | None


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    input_format: str
    output_format: str
    input_rate_hz: int | None
    output_rate_hz: int | None


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class InputCommitted:
    item_id: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class OutputItemAdded:
    response_id: str
    item_id: str
    item_type: str
    role: str | None


# Hot path: not frozen (a frozen dataclass pays object.__setattr__ per field, ~1 us a message);
# treated as immutable all the same.
@dataclass(slots=True)
class AudioDelta:
    response_id: str
    item_id: str
    audio: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AudioDone:
    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class AgentTranscriptDelta:
    """``response.output_audio_transcript.delta``: a piece of what the agent is saying."""

    item_id: str
    delta: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AgentTranscript:
    """``response.output_audio_transcript.done``: what the agent said (not necessarily what was heard)."""

    response_id: str
    item_id: str
    transcript: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CallerTranscript:
    """``conversation.item.input_audio_transcription.completed``, with its usage (billed apart)."""

    item_id: str
    transcript: str = field(repr=False)
    usage_tokens: int = 0
    """``usage.type == "tokens"``: the total tokens."""
    usage_seconds: float = 0.0
    """``usage.type == "duration"``: the seconds of audio."""


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """``response.function_call_arguments.done``: the model calls a function (``arguments``: JSON text).

    Also sent when the response is cut short: act on it once ``response.done`` says completed."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class McpEvent:
    """An MCP event (``mcp_list_tools.*``, ``response.mcp_call.*``): OpenAI calls the server itself."""

    type: str
    item_id: str | None
    failed: bool


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one response, as ``response.done.response.usage`` reports it."""

    input_tokens: int = 0
    output_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    cached_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.input_text_tokens + other.input_text_tokens,
            self.input_audio_tokens + other.input_audio_tokens,
            self.cached_tokens + other.cached_tokens,
            self.output_text_tokens + other.output_text_tokens,
            self.output_audio_tokens + other.output_audio_tokens,
        )


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str
    reason: str | None
    usage: Usage


class ErrorKind(StrEnum):
    """What an ``error`` event means for the call (realtime-ga.md §8), decided here, once."""

    FATAL = "fatal"  # configuration or account: end the call, never retry
    RETRYABLE = "retryable"  # this session is over: open a new one
    REJECTED = "our event rejected"  # a malformed client event: our bug, the session goes on
    TRUNCATE_TOO_LONG = "truncate too long"  # truncate past the generated audio: not applied
    BENIGN = "benign"  # expected races (cancel with nothing active...): the session goes on
    OTHER = "other"  # not classified: logged, the session goes on


@dataclass(frozen=True, slots=True)
class Error:
    """The server's ``error`` event. ``message`` is the server's text, safe to log (it never holds audio)."""

    error_type: str
    code: str | None
    message: str
    param: str | None
    event_id: str | None
    kind: ErrorKind = ErrorKind.OTHER


@dataclass(frozen=True, slots=True)
class RateLimits:
    """``rate_limits.updated`` (at each response's start and end): the account's token budget, now.

    ``tokens_remaining`` / ``tokens_limit`` / ``reset_s`` are those of the ``tokens`` limit (None if the
    event has none)."""

    tokens_remaining: int | None
    tokens_limit: int | None
    reset_s: float | None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed event the bridge does not act on."""

    type: str


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str


Event: TypeAlias = (
    SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | ResponseCreated
    | OutputItemAdded
    | AudioDelta
    | AudioDone
    | AgentTranscriptDelta
    | AgentTranscript
    | CallerTranscript
    | ItemTruncated
    | FunctionCall
    | McpEvent
    | ResponseDone
    | Error
    | RateLimits
    | Unknown
    | Invalid
)

FATAL_ERROR_CODES = frozenset(
    {"beta_api_shape_disabled", "invalid_model", "invalid_api_key", "insufficient_quota"}
)
"""Configuration or account errors: no new session would fare better (livekit's ``_FATAL_ERROR_CODES``)."""
RETRYABLE_ERROR_CODES = frozenset({"session_expired"})
"""The session is over (older duration caps said so with this code): a new one may go on."""
REJECTED_ERROR_CODES = frozenset(
    {"unknown_parameter", "missing_required_parameter", "invalid_value", "invalid_type"}
)
BENIGN_ERROR_CODES = frozenset(
    {
        "response_cancel_not_active",
        "conversation_already_has_active_response",
        "input_audio_buffer_commit_empty",
    }
)
_BENIGN_MESSAGES = (
    "Only model output audio messages can be truncated",
    "Error committing input audio buffer",
)
_TRUNCATE_TOO_LONG_MESSAGE = "Audio content of "


def classify_error(code: str | None, message: str) -> ErrorKind:
    """The :class:`ErrorKind` of an ``error`` event: by ``code``, by ``message`` when the code is null."""
    if code in FATAL_ERROR_CODES:
        return ErrorKind.FATAL
    if code in RETRYABLE_ERROR_CODES:
        return ErrorKind.RETRYABLE
    if code in REJECTED_ERROR_CODES:
        return ErrorKind.REJECTED
    if message.startswith(_TRUNCATE_TOO_LONG_MESSAGE):
        return ErrorKind.TRUNCATE_TOO_LONG
    if code in BENIGN_ERROR_CODES or message.startswith(_BENIGN_MESSAGES):
        return ErrorKind.BENIGN
    return ErrorKind.OTHER


FATAL_CLOSE_CODES = frozenset({3000, 4000})
"""The server closes with 3000 after an authentication error and 4000 after a model or beta-shape error
(each right after the ``error`` event that says why): a new socket would be refused the same way."""
FATAL_HANDSHAKE_STATUSES = frozenset({400, 401, 403, 404})
"""HTTP answers to the upgrade (from the API or a proxy) that a retry cannot change; 429 and 5xx can."""


def close_is_fatal(code: int | None, http_status: int | None = None) -> bool:
    """Is a closed (or refused) model socket final, or worth opening again?"""
    return code in FATAL_CLOSE_CODES or http_status in FATAL_HANDSHAKE_STATUSES


# --- commands (us -> server) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateSession:
    session: Mapping[str, Any]


# Hot path: not frozen (a frozen dataclass pays object.__setattr__ per field, ~1 us a message);
# treated as immutable all the same.
@dataclass(slots=True)
class AppendAudio:
    audio: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CreateResponse:
    instructions: str | None = None


@dataclass(frozen=True, slots=True)
class CancelResponse:
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class TruncateItem:
    item_id: str
    audio_end_ms: int
    content_index: int = 0


@dataclass(frozen=True, slots=True)
class DeleteItem:
    """``conversation.item.delete``: an item nobody heard leaves the conversation."""

    item_id: str


@dataclass(frozen=True, slots=True)
class CreateItem:
    """``conversation.item.create``: a message or a function output appended to the conversation."""

    item: Mapping[str, Any] = field(repr=False)


Command: TypeAlias = (
    UpdateSession | AppendAudio | CreateResponse | CancelResponse | TruncateItem | CreateItem | DeleteItem
)


def serialize(command: Command, event_id: str | None = None) -> str:
    """The JSON text frame of a GA client event."""
    body: dict[str, Any]
    match command:
        case AppendAudio(audio=audio):
            # The hot path (50 a second per call): base64 needs no JSON escaping, so skip the encoder.
            audio_text = binascii.b2a_base64(audio, newline=False).decode("ascii")
            head = "{" if event_id is None else f'{{"event_id":{fields.dumps_str(event_id)},'
            return f'{head}"type":"input_audio_buffer.append","audio":"{audio_text}"}}'
        case UpdateSession(session=session):
            body = {"type": "session.update", "session": dict(session)}
        case CreateResponse(instructions=instructions):
            body = {"type": "response.create"}
            if instructions is not None:
                body["response"] = {"instructions": instructions}
        case CancelResponse(response_id=response_id):
            body = {"type": "response.cancel"}
            if response_id is not None:
                body["response_id"] = response_id
        case CreateItem(item=item):
            body = {"type": "conversation.item.create", "item": dict(item)}
        case DeleteItem(item_id=item_id):
            body = {"type": "conversation.item.delete", "item_id": item_id}
        case TruncateItem(item_id=item_id, audio_end_ms=audio_end_ms, content_index=content_index):
            body = {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": content_index,
                "audio_end_ms": audio_end_ms,
            }
    if event_id is not None:
        body = {"event_id": event_id, **body}
    return json.dumps(body, separators=(",", ":"))


# --- parsing -------------------------------------------------------------------------------------------


def _count(obj: object, key: str) -> int:
    if isinstance(obj, dict):
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def _usage(raw: object) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    inp = raw.get("input_token_details")
    out = raw.get("output_token_details")
    return Usage(
        input_tokens=_count(raw, "input_tokens"),
        output_tokens=_count(raw, "output_tokens"),
        input_text_tokens=_count(inp, "text_tokens"),
        input_audio_tokens=_count(inp, "audio_tokens"),
        cached_tokens=_count(inp, "cached_tokens"),
        output_text_tokens=_count(out, "text_tokens"),
        output_audio_tokens=_count(out, "audio_tokens"),
    )


def _audio_format(audio: Mapping[str, Any], side: str) -> tuple[str, int | None]:
    part = audio.get(side)
    fmt = part.get("format") if isinstance(part, dict) else None
    if not isinstance(fmt, dict):
        return "", None
    rate = fmt.get("rate")
    return str(fmt.get("type", "")), rate if isinstance(rate, int) else None


def _session_updated(msg: Mapping[str, Any]) -> SessionUpdated:
    session = fields.obj(msg, "session", "session.updated")
    audio = session.get("audio")
    audio = audio if isinstance(audio, dict) else {}
    in_fmt, in_rate = _audio_format(audio, "input")
    out_fmt, out_rate = _audio_format(audio, "output")
    return SessionUpdated(in_fmt, out_fmt, in_rate, out_rate)


def _audio_delta(msg: Mapping[str, Any]) -> AudioDelta:
    delta = msg.get("delta")
    if not isinstance(delta, str):
        raise FieldError("response.output_audio.delta.delta must be a base64 string")
    try:
        audio = binascii.a2b_base64(delta, strict_mode=True)
    except (binascii.Error, ValueError):
        raise FieldError("response.output_audio.delta.delta is not valid base64") from None
    if len(audio) % 2:
        raise FieldError("response.output_audio.delta carries an odd number of PCM16 bytes")
    where = "response.output_audio.delta"
    return AudioDelta(fields.text(msg, "response_id", where), fields.text(msg, "item_id", where), audio)


def _response_done(msg: Mapping[str, Any]) -> ResponseDone:
    response = fields.obj(msg, "response", "response.done")
    details = response.get("status_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    return ResponseDone(
        response_id=fields.text(response, "id", "response.done.response"),
        status=fields.text(response, "status", "response.done.response"),
        reason=reason if isinstance(reason, str) else None,
        usage=_usage(response.get("usage")),
    )


def _error(msg: Mapping[str, Any]) -> Error:
    err = fields.obj(msg, "error", "error")
    code = fields.maybe_text(err, "code")
    message = fields.maybe_text(err, "message") or ""
    return Error(
        error_type=fields.maybe_text(err, "type") or "",
        code=code,
        message=message,
        param=fields.maybe_text(err, "param"),
        event_id=fields.maybe_text(err, "event_id"),
        kind=classify_error(code, message),
    )


def _output_item_added(msg: Mapping[str, Any]) -> OutputItemAdded:
    item = fields.obj(msg, "item", "response.output_item.added")
    where = "response.output_item.added"
    return OutputItemAdded(
        response_id=fields.text(msg, "response_id", where),
        item_id=fields.text(item, "id", where + ".item"),
        item_type=fields.text(item, "type", where + ".item"),
        role=fields.maybe_text(item, "role"),
    )


def _decode(kind: str, msg: Mapping[str, Any]) -> Event:
    match kind:
        case "response.output_audio.delta":
            return _audio_delta(msg)
        case "session.created":
            session = fields.obj(msg, "session", kind)
            expires = session.get("expires_at")
            return SessionCreated(str(session.get("id", "")), expires if isinstance(expires, int) else None)
        case "session.updated":
            return _session_updated(msg)
        case "input_audio_buffer.speech_started":
            return SpeechStarted(
                fields.text(msg, "item_id", kind), fields.integer(msg, "audio_start_ms", kind)
            )
        case "input_audio_buffer.speech_stopped":
            item_id = fields.text(msg, "item_id", kind)
            return SpeechStopped(item_id, fields.integer(msg, "audio_end_ms", kind))
        case "input_audio_buffer.committed":
            return InputCommitted(fields.text(msg, "item_id", kind))
        case "response.created":
            return ResponseCreated(fields.text(fields.obj(msg, "response", kind), "id", kind + ".response"))
        case "response.output_item.added":
            return _output_item_added(msg)
        case "response.output_audio.done":
            return AudioDone(fields.text(msg, "response_id", kind), fields.text(msg, "item_id", kind))
        case "response.output_audio_transcript.delta":
            return AgentTranscriptDelta(fields.text(msg, "item_id", kind), fields.text(msg, "delta", kind))
        case "response.output_audio_transcript.done":
            return AgentTranscript(
                fields.text(msg, "response_id", kind),
                fields.text(msg, "item_id", kind),
                fields.text(msg, "transcript", kind),
            )
        case "conversation.item.input_audio_transcription.completed":
            usage = msg.get("usage")
            tokens, seconds = 0, 0.0
            if isinstance(usage, dict):
                tokens = _count(usage, "total_tokens")
                raw_seconds = usage.get("seconds")
                if isinstance(raw_seconds, int | float) and not isinstance(raw_seconds, bool):
                    seconds = max(0.0, float(raw_seconds))
            item_id, transcript = fields.text(msg, "item_id", kind), fields.text(msg, "transcript", kind)
            return CallerTranscript(item_id, transcript, tokens, seconds)
        case "conversation.item.truncated":
            return ItemTruncated(fields.text(msg, "item_id", kind), fields.integer(msg, "audio_end_ms", kind))
        case "response.done":
            return _response_done(msg)
        case "response.function_call_arguments.done":
            return FunctionCall(
                fields.text(msg, "response_id", kind),
                fields.text(msg, "item_id", kind),
                fields.text(msg, "call_id", kind),
                fields.text(msg, "name", kind),
                fields.text(msg, "arguments", kind),
            )
        case (
            "mcp_list_tools.in_progress" | "mcp_list_tools.completed" | "mcp_list_tools.failed"
            | "response.mcp_call.in_progress" | "response.mcp_call.completed" | "response.mcp_call.failed"
        ):  # fmt: skip
            return McpEvent(kind, fields.maybe_text(msg, "item_id"), kind.endswith(".failed"))
        case "error":
            return _error(msg)
        case "rate_limits.updated":
            return _rate_limits(msg)
        case _:
            return Unknown(kind[:80])


def parse(text: str | bytes) -> Event:
    """Turn one websocket message from the Realtime server into an event. Never raises."""
    if isinstance(text, bytes):
        return Invalid("binary frame (the Realtime API sends JSON text frames)")
    try:
        msg = fields.loads(text)
    except ValueError:
        return Invalid("not JSON")
    except RecursionError:
        return Invalid("JSON nested too deeply")
    if not isinstance(msg, dict):
        return Invalid("not a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        return Invalid("no type field")
    try:
        return _decode(kind, msg)
    except FieldError as exc:
        return Invalid(str(exc))


def session_config(
    *,
    instructions: str,
    voice: str | Mapping[str, str],
    turn_detection: Mapping[str, Any] | None,
    transcription_model: str | None,
    noise_reduction: str | None,
) -> dict[str, Any]:
    """The GA ``session`` object for ``session.update``: PCM16 24 kHz both ways, audio out."""
    return {
        "type": "realtime",
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24_000},
                "noise_reduction": {"type": noise_reduction} if noise_reduction else None,
                "transcription": {"model": transcription_model} if transcription_model else None,
                "turn_detection": dict(turn_detection) if turn_detection is not None else None,
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24_000}, "voice": voice},
        },
    }


def _rate_limits(msg: Mapping[str, Any]) -> RateLimits:
    limits = msg.get("rate_limits")
    if not isinstance(limits, list):
        raise fields.FieldError("rate_limits.updated: rate_limits is not a list")
    for limit in limits:
        if isinstance(limit, dict) and limit.get("name") == "tokens":
            remaining, total, reset = limit.get("remaining"), limit.get("limit"), limit.get("reset_seconds")
            return RateLimits(
                remaining if isinstance(remaining, int) else None,
                total if isinstance(total, int) else None,
                float(reset) if isinstance(reset, int | float) else None,
            )
    return RateLimits(None, None, None)
