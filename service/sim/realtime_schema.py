"""What the simulated GA Realtime server accepts from a client, and how it words a refusal.

Every client event is checked against the GA schema before it is acted on; the first problem found
becomes the ``error`` event the real server sends (``code``, ``message``, ``param``), and the event
is then ignored as a whole. The wording was captured from the GA server (September 2026) unless a
line says it is inferred. State-dependent refusals (no active response, unknown item, ...) are made
where the state is, in :mod:`service.sim.realtime_connection` and :mod:`service.sim.realtime_conversation`.

- :func:`parse_event`: a WebSocket message -> a JSON object, or the :class:`Problem` of a message
  that is not one.
- :func:`validate_event`: a JSON object -> the first :class:`Problem` with it, or None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

MODEL_RATE_HZ = 24_000  # the one rate of ``audio/pcm``

#: The ``type`` values the GA server lists when it rejects an unknown one (captured).
SUPPORTED_TYPES = (
    "session.update", "session.close", "input_audio_buffer.append", "session.input_audio_buffer.append",
    "input_audio_buffer.commit", "input_audio_buffer.clear", "conversation.item.create",
    "conversation.item.truncate", "conversation.item.delete", "conversation.item.retrieve",
    "response.create", "response.cancel",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Problem:
    """One ``error`` event's ``error`` object (without the client's ``event_id``)."""

    code: str | None
    message: str
    param: str | None = None
    type: str = "invalid_request_error"


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
    """``'a'``, ``'a' and 'b'``, ``'a', 'b', and 'c'`` (the GA wording for two values: 'near_field' and
    'far_field', as reported against the live API)."""
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


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
_NAME_PATTERN = "^[a-zA-Z0-9_-]+$"
_MAX_NAME = 64


def _tool_name(value: Any, path: str) -> Problem | None:
    """A function or server name: letters, digits, ``_`` and ``-``, at most 64 (the wording of the
    OpenAI API's string checks; inferred for Realtime)."""
    if not isinstance(value, str):
        return _invalid_type(path, "a string", value)
    if len(value) > _MAX_NAME:
        message = (
            f"Invalid '{path}': string too long. Expected a string with maximum length {_MAX_NAME}, "
            f"but got a string with length {len(value)} instead."
        )
        return Problem("string_above_max_length", message, path)
    if not re.fullmatch(_NAME_PATTERN, value):
        message = (
            f"Invalid '{path}': string does not match pattern. "
            f"Expected a string that matches the pattern '{_NAME_PATTERN}'."
        )
        return Problem("invalid_value", message, path)
    return None


def _json_object(value: Any, path: str) -> Problem | None:
    return None if isinstance(value, dict) else _invalid_type(path, "an object", value)


#: The built-in connectors an ``mcp`` tool may name instead of a ``server_url`` (SDK 3.54).
MCP_CONNECTORS = (
    "connector_dropbox", "connector_gmail", "connector_googlecalendar", "connector_googledrive",
    "connector_microsoftteams", "connector_outlookcalendar", "connector_outlookemail", "connector_sharepoint",
)  # fmt: skip
_MCP_FILTER = _obj({"read_only": _bool, "tool_names": _list(_str)})


def _allowed_tools(value: Any, path: str) -> Problem | None:
    return _list(_str)(value, path) if isinstance(value, list) else _MCP_FILTER(value, path)


def _require_approval(value: Any, path: str) -> Problem | None:
    if isinstance(value, str):
        return _enum("always", "never")(value, path)
    return _obj({"always": _MCP_FILTER, "never": _MCP_FILTER})(value, path)


_MCP_FIELDS = _obj({
    "type": _any, "server_label": _tool_name, "server_url": _str, "connector_id": _enum(*MCP_CONNECTORS),
    "tunnel_id": _str, "authorization": _str, "headers": _nullable(_metadata),
    "allowed_tools": _nullable(_allowed_tools), "require_approval": _nullable(_require_approval),
    "server_description": _str, "defer_loading": _bool,
}, ("server_label",))  # fmt: skip


def _mcp_tool(value: Any, path: str) -> Problem | None:
    """An ``mcp`` tool: its fields, then exactly one of ``server_url`` / ``connector_id`` /
    ``tunnel_id`` (wording inferred)."""
    if problem := _MCP_FIELDS(value, path):
        return problem
    given = [key for key in ("server_url", "connector_id", "tunnel_id") if key in value]
    if not given:
        p = _join(path, "server_url")
        message = (
            f"Missing required parameter: one of '{p}' or '{_join(path, 'connector_id')}' must be provided."
        )
        return Problem("missing_required_parameter", message, p)
    if len(given) > 1:
        p = _join(path, given[1])
        message = f"Invalid '{p}': only one of {_quoted_list(tuple(given))} may be provided."
        return Problem("invalid_value", message, p)
    return None


_TOOL = _by_type({
    "function": _obj(
        {"type": _any, "name": _tool_name, "description": _str, "parameters": _json_object}, ("name",)
    ),
    "mcp": _mcp_tool,
})  # fmt: skip
_FORCED_TOOL = _by_type({
    "function": _obj({"type": _any, "name": _str}, ("name",)),
    "mcp": _obj({"type": _any, "server_label": _str, "name": _nullable(_str)}, ("server_label",)),
})  # fmt: skip


def _tool_choice(value: Any, path: str) -> Problem | None:
    """``"none"``, ``"auto"``, ``"required"``, or a forced function / MCP tool."""
    return (
        _enum("none", "auto", "required")(value, path)
        if isinstance(value, str)
        else _FORCED_TOOL(value, path)
    )


_MODALITIES = _list(_enum("text", "audio"))
_SESSION = _obj({
    "type": _enum("realtime", "transcription"), "model": _str, "instructions": _str,
    "output_modalities": _MODALITIES, "max_output_tokens": _max_tokens, "tools": _list(_TOOL),
    "tool_choice": _tool_choice, "tracing": _any, "truncation": _any, "prompt": _any, "include": _any,
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
    "tool_choice": _tool_choice, "prompt": _any, "reasoning": _any, "parallel_tool_calls": _bool,
    "audio": _obj({"output": _obj({"format": _FORMAT, "voice": _voice})}),
})  # fmt: skip
_TEXT_PART = _obj({"type": _any, "text": _str})
_AUDIO_PART = _obj({"type": _any, "audio": _str, "transcript": _nullable(_str)})
#: The content parts each role may carry (GA: the assistant's are ``output_*``; wording inferred).
_CONTENT_BY_ROLE: dict[str, Validator] = {
    "user": _by_type({
        "input_text": _TEXT_PART, "input_audio": _AUDIO_PART,
        "input_image": _obj({"type": _any, "image_url": _str, "detail": _enum("auto", "low", "high")}),
    }),
    "assistant": _by_type({"output_text": _TEXT_PART, "output_audio": _AUDIO_PART}),
    "system": _by_type({"input_text": _TEXT_PART}),
}  # fmt: skip
_MESSAGE_FIELDS = _obj({
    "type": _any, "id": _str, "object": _str, "status": _str,
    "role": _enum("user", "assistant", "system"), "content": _list(_any),
}, ("role", "content"))  # fmt: skip


def _message(value: Any, path: str) -> Problem | None:
    """A message item: its fields, then each content part against the parts its role may carry."""
    if problem := _MESSAGE_FIELDS(value, path):
        return problem
    return _list(_CONTENT_BY_ROLE[value["role"]])(value["content"], _join(path, "content"))


_ITEM = _by_type({
    "message": _message,
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


def parse_event(message: str | bytes) -> Json | Problem:
    """A client message as a JSON object, or the problem with it."""
    if isinstance(message, bytes):
        text = "Expected a text WebSocket message; binary frames are not supported."
        return Problem("invalid_event", text)
    try:
        event = json.loads(message)
    except (ValueError, RecursionError):
        return Problem("invalid_json", "Invalid event: failed to parse JSON value.")
    if not isinstance(event, dict):
        # inferred wording: the capture shows only the non-JSON case
        return Problem("invalid_json", "Invalid event: expected a JSON object.")
    return event


def validate_event(event: Json) -> Problem | None:
    """The first problem with a client event (its ``type``, then its fields), or None."""
    kind = event.get("type")
    if "type" not in event:
        return Problem("missing_required_parameter", "Missing required parameter: 'type'.", "type")
    if not isinstance(kind, str) or kind not in SUPPORTED_TYPES:
        return _invalid_value("type", kind, SUPPORTED_TYPES)
    return _EVENTS[kind](event, "")
