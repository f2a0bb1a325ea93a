"""Reading fields out of a peer's decoded JSON object, for the wire modules (:mod:`service.wire.twilio`,
:mod:`service.wire.realtime`). Each reader raises :class:`FieldError` naming the field; the wire module turns
that into its ``Invalid`` event, so no message is ever quoted back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson


def loads(text: str | bytes) -> Any:
    """``json.loads``, three times faster on the hot path (orjson, strict RFC 8259).

    What orjson refuses (a lone surrogate, NaN, nesting past 1024 levels...) goes to the standard
    library, so that what is accepted and what raises (``ValueError``, ``RecursionError``) is exactly
    what ``json.loads`` decides.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def dumps_str(value: str) -> str:
    """A JSON string literal (with its quotes), for serializers that build the rest by hand."""
    return orjson.dumps(value).decode()


class FieldError(Exception):
    """A field is missing or has the wrong type. The message names the field, never its value."""


def text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise FieldError(f"{where}.{key} must be a string")
    return value


def text_or(obj: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    """A string field that may be absent (``default``), but not of another type."""
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise FieldError(f"{where}.{key} must be a string")
    return value


def maybe_text(obj: Mapping[str, Any], key: str) -> str | None:
    """A string, or None for anything else (for optional fields that are informative only)."""
    value = obj.get(key)
    return value if isinstance(value, str) else None


def integer(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"{where}.{key} must be an integer")
    return value


def obj(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise FieldError(f"{where}.{key} must be an object")
    return value
