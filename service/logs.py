"""Logging: JSON lines when not on a TTY, readable text on one; the current CallSid on every record.

    configure_logging("INFO")                 # once, at start-up
    with bind_call(call_sid):                 # every record logged inside carries call_id
        logger.info("stream started")

The call id lives in a context variable, so each asyncio task (one per call) keeps its own. Values passed
as ``secrets`` are replaced by ``[redacted]`` in every formatted line, as a last line of defence: the
code itself never logs payloads or secrets.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["CallIdFilter", "JsonFormatter", "TextFormatter", "bind_call", "call_id_var", "configure_logging"]

call_id_var: ContextVar[str | None] = ContextVar("call_id", default=None)

REDACTED = "[redacted]"
_MIN_SECRET_CHARS = 6
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "call_id",
    "taskName",
    "call_tag",
}


@contextmanager
def bind_call(call_sid: str | None) -> Iterator[None]:
    """Tag every record logged in this block (and in tasks it creates) with ``call_id``."""
    token = call_id_var.set(call_sid)
    try:
        yield
    finally:
        call_id_var.reset(token)


class CallIdFilter(logging.Filter):
    """Adds ``record.call_id`` (None outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.call_id = call_id_var.get()
        return True


class _RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = None, *, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self._secrets = tuple(s for s in secrets if len(s) >= _MIN_SECRET_CHARS)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class JsonFormatter(_RedactingFormatter):
    """One JSON object per line: ts, level, logger, call_id, msg, any ``extra=`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "call_id": getattr(record, "call_id", None),
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self.redact(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(_RedactingFormatter):
    """``HH:MM:SS.mmm LEVEL logger [call] message``."""

    def __init__(self, *, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(call_tag)s %(message)s", secrets=secrets)
        self.default_time_format = "%H:%M:%S"

    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None)
        record.call_tag = f" [{call_id}]" if call_id else ""
        return self.redact(super().format(record))


def configure_logging(
    level: str, stream: TextIO | None = None, *, secrets: Iterable[str] = (), json_lines: bool | None = None
) -> logging.Handler:
    """Install one handler on the root logger (replacing one installed before) and return it.

    ``json_lines`` defaults to "the stream is not a TTY".
    """
    out = sys.stderr if stream is None else stream
    if json_lines is None:
        isatty = getattr(out, "isatty", None)
        json_lines = not (callable(isatty) and isatty())
    handler = logging.StreamHandler(out)
    handler.set_name("dialtone")
    handler.addFilter(CallIdFilter())
    formatter: logging.Formatter = (
        JsonFormatter(secrets=secrets) if json_lines else TextFormatter(secrets=secrets)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "dialtone"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
