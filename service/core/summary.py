"""What a call counts as it runs, and the one summary line it leaves. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.core.actions import ActionStats
from service.core.uplink import UplinkStats
from service.wire import realtime

SHUTDOWN_REASON = "service shutting down"

_KINDS = (
    ("caller hung up", "caller_hangup"),
    ("twilio socket closed", "twilio_closed"),
    ("agent ended the call", "agent_hangup"),
    ("transferred to ", "transfer"),
    (SHUTDOWN_REASON, "shutdown"),
    ("stream rejected", "rejected"),
    ("unsupported media format", "rejected"),
    ("no start message", "rejected"),
    ("model", "model_failure"),
)
END_KINDS = frozenset(kind for _, kind in _KINDS) | {"other"}
"""The few kinds of end (a metric's label: the reasons themselves are free text)."""


def end_kind(reason: str | None, decided: str | None = None) -> str:
    """The kind of an end reason; ``decided`` (the agent's: ``agent_hangup``, ``transfer``) wins."""
    if decided is not None:
        return decided
    if reason is None:
        return "other"
    return next((kind for prefix, kind in _KINDS if reason.startswith(prefix)), "other")


@dataclass(slots=True)
class CallStats:
    barge_ins: int = 0
    truncations: int = 0
    truncate_errors: int = 0
    dropped_deltas: int = 0
    invalid_twilio: int = 0
    invalid_realtime: int = 0
    responses: int = 0
    usage: realtime.Usage = field(default_factory=realtime.Usage)
    first_audio_ms: list[int] = field(default_factory=list)
    """Per response: caller's end of speech (or call start) to the echo of the start mark."""
    reconnect_ms: list[int] = field(default_factory=list)
    """Per model socket lost mid-call: loss to the new session's ``session.updated``."""
    rollovers: int = 0
    """Sessions replaced before their time limit (make before break)."""
    transcription_tokens: int = 0
    transcription_seconds: float = 0.0


def summary_line(
    *,
    call_sid: str | None,
    agent: str | None,
    phase: str,
    duration_s: float,
    frames_out: int,
    turns: int,
    uplink: UplinkStats,
    stats: CallStats,
    actions: ActionStats,
    end_reason: str | None,
    end_kind: str,
) -> dict[str, Any]:
    """The fields of the call's summary line: counts and timings, never text or audio."""
    return {
        "call_sid": call_sid,
        "agent": agent,
        "phase": phase,
        "duration_s": round(duration_s, 3),
        "frames_in": uplink.frames_in,
        "frames_out": frames_out,
        "caller_ms": uplink.caller_ms,
        "filled_ms": uplink.filled_ms,
        "media_gaps": uplink.media_gaps,
        "clock_resets": uplink.clock_resets,
        "bad_timestamps": uplink.bad_timestamps,
        "barge_ins": stats.barge_ins,
        "truncations": stats.truncations,
        "truncate_errors": stats.truncate_errors,
        "dropped_deltas": stats.dropped_deltas,
        "invalid_twilio": stats.invalid_twilio,
        "invalid_realtime": stats.invalid_realtime,
        "responses": stats.responses,
        "turns": turns,
        "first_audio_ms": stats.first_audio_ms,
        "reconnects": len(stats.reconnect_ms),
        "reconnect_ms": stats.reconnect_ms,
        "rollovers": stats.rollovers,
        "gap_dropped_ms": uplink.dropped_ms,
        "replayed_ms": uplink.replayed_ms,
        "input_tokens": stats.usage.input_tokens,
        "output_tokens": stats.usage.output_tokens,
        "cached_tokens": stats.usage.cached_tokens,
        "tool_calls": actions.tool_calls,
        "tool_errors": actions.tool_errors,
        "mcp_calls": actions.mcp_calls,
        "mcp_errors": actions.mcp_errors,
        "end_reason": end_reason,
        "end_kind": end_kind,
    }
