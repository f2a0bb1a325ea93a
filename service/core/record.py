"""What a call leaves behind: its record (who, what was said and heard, what happened when, usage).

Pure data, built by :meth:`service.core.call.Call.record` when the call ends; the runtime adds the wall
clock (the core has none) and hands it to the records store, the post-call webhook and the metrics. Times
in the timeline are seconds since the stream's socket was accepted.

Timeline kinds: ``caller_started`` / ``caller_stopped`` (the server VAD), ``agent_heard`` (an answer's
first audio played: ``latency_ms`` from the caller's end of speech), ``barge_in`` (``heard_ms`` of the
item cut, ``truncated``), ``model_lost`` / ``model_back`` (``reconnect_ms``), ``rollover``,
``tool_started`` / ``tool_done`` (``name``, ``outcome``, ``duration_ms``), ``keypad`` (digits count only),
``ended`` (``reason``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.wire import realtime


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    t_s: float
    kind: str
    detail: Mapping[str, Any] = field(default_factory=dict)


class Timeline:
    """The call's events as they happen (the core's own clock; 0 is the stream's accept)."""

    def __init__(self) -> None:
        self.origin = 0.0
        self.events: list[TimelineEvent] = []

    def note(self, now: float, kind: str, **detail: Any) -> None:
        self.events.append(TimelineEvent(round(now - self.origin, 3), kind, detail))


@dataclass(frozen=True, slots=True)
class TurnRecord:
    role: str
    """``caller`` or ``agent`` (or ``tool`` for a tool call and its output, kept for the context)."""
    text: str
    started_s: float
    interrupted: bool = False
    heard_text: str | None = None
    """For an interrupted agent turn: the part the caller heard (an estimate, see conversation.py)."""


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    name: str
    call_id: str
    started_s: float
    duration_ms: int | None
    outcome: str
    """``ok``, ``timeout``, ``refused``, ``http_<status>``, ``not_json``, ``too_large``, ``bad_arguments``,
    ``cancelled``, ``error``; built-in call control: ``ok`` or what went wrong."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_sid: str | None
    direction: str
    caller: str
    called: str
    agent: str | None
    model: str
    duration_s: float
    end_reason: str | None
    transcript: tuple[TurnRecord, ...]
    timeline: tuple[TimelineEvent, ...]
    tool_calls: tuple[ToolCallRecord, ...]
    barge_ins: int
    reconnect_ms: tuple[int, ...]
    rollovers: int
    first_audio_ms: tuple[int, ...]
    usage: realtime.Usage
    transcription_seconds: float
    """Seconds of caller audio transcribed (input transcription is billed apart, per minute or token)."""
    transcription_tokens: int
    summary: Mapping[str, Any]
