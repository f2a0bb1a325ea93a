"""The record's JSON shape (``record_to_json``), and its rows in the ``calls`` table.

One document per call, the same from ``calls show --json``, ``calls export`` and the store::

    {"id": "9f…", "call_sid": "CA…", "direction": "inbound", "from": "+1555…", "to": "+1555…",
     "agent": "default", "model": "gpt-realtime-2.1",
     "started_at": "2026-11-29T10:00:00.000Z", "ended_at": "2026-11-29T10:03:00.250Z",
     "duration_s": 180.25, "end_reason": "caller hung up",
     "transcript": [{"role": "caller"|"agent", "text": "…", "t_s": 1.2, "interrupted": false,
                     "heard_text": null}],
     "tool_calls": [{"name", "call_id", "t_s", "duration_ms", "outcome"}],
     "barge_ins": 1, "reconnects": 0, "reconnect_ms": [], "rollovers": 0, "first_audio_ms": [640, 710],
     "usage": {"input_tokens", "output_tokens", "input_text_tokens", "input_audio_tokens", "cached_tokens",
               "output_text_tokens", "output_audio_tokens", "transcription_model",
               "transcription_seconds", "transcription_tokens"},
     "cost_usd": 0.1234, "cost": {Cost.to_json()},
     "timeline": [{"t_s": 0.8, "kind": "caller_started"}, {"t_s": 3.1, "kind": "barge_in", "heard_ms": 1200,
                   "truncated": 1}, …],
     "summary": {…the call's summary line…},
     "analysis": null | {"model": "gpt-4.1-mini", "summary": "…", "success": true | false | null,
                         "fields": {"party_size": 4, …}, "usage": {"input_tokens", "cached_tokens",
                         "output_tokens", "reasoning_tokens"}, "cost_usd": 0.0004, "response_id": "resp_…"}
                 | {"model": "gpt-4.1-mini", "error": "HTTP 500 server_error", "usage": null,
                    "cost_usd": null}}

Times: ``started_at`` / ``ended_at`` ISO 8601 UTC (milliseconds, ``Z``); ``t_s`` seconds since the
media stream was accepted (the core's clock). The transcript holds the caller's and the agent's turns;
tool calls are in ``tool_calls`` (their arguments and outputs are not kept).

``analysis``: the post-call analysis (``null`` when the agent has none); its cost is the ``analysis`` line
of ``cost`` and part of ``cost_usd``. In the ``calls`` table it is kept in the ``summary`` column's JSON,
under ``"analysis"`` (no column of its own), and taken out again by ``row_to_doc``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from service.core.analysis import Analysis, AnalysisResult, analysis_cost
from service.core.cost import LINES, Cost, TextCost, cost_usd
from service.core.record import CallRecord

__all__ = [
    "SCHEMA_FIELDS", "analysis_to_json", "doc_to_row", "from_iso", "iso", "plain", "record_to_json",
    "row_to_doc",
]  # fmt: skip

SCHEMA_FIELDS = (
    "id", "call_sid", "direction", "from", "to", "agent", "model", "started_at", "ended_at", "duration_s",
    "end_reason", "transcript", "tool_calls", "barge_ins", "reconnects", "reconnect_ms", "rollovers",
    "first_audio_ms", "usage", "cost_usd", "cost", "timeline", "summary", "analysis",
)  # fmt: skip
"""The document's keys, in order."""
SPEAKERS = frozenset({"caller", "agent"})
_OWN = frozenset({"t_s", "kind"})


def iso(epoch_s: float | datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``."""
    moment = epoch_s if isinstance(epoch_s, datetime) else datetime.fromtimestamp(epoch_s, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def plain(value: Any) -> Any:
    """``value`` as JSON values only (tuples as lists, non-finite floats as null, anything else as text)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return str(value)


def analysis_to_json(result: AnalysisResult | None, cost: TextCost | None) -> dict[str, Any] | None:
    if result is None:
        return None
    usage = None
    if result.usage is not None:
        usage = dataclasses.asdict(result.usage)
    cost_usd_ = cost.total if cost is not None else None
    if isinstance(result, Analysis):
        return {
            "model": result.model,
            "summary": result.summary,
            "success": result.success,
            "fields": dict(result.fields),
            "usage": usage,
            "cost_usd": cost_usd_,
            "response_id": result.response_id,
        }
    return {"model": result.model, "error": result.error, "usage": usage, "cost_usd": cost_usd_}


def record_to_json(
    record: CallRecord,
    started_at: float,
    ended_at: float,
    *,
    cost: Cost | None = None,
    record_id: str = "",
    transcription_model: str | None = None,
    analysis: AnalysisResult | None = None,
    analysis_price: TextCost | None = None,
) -> dict[str, Any]:
    """The call's document. ``started_at`` / ``ended_at``: epoch seconds (the runtime's wall clock).
    ``cost``: the call's, the analysis' line included (``Pricing.cost``); ``analysis_price``: the
    analysis' own (``Pricing.analysis_cost``). Both are priced from the default table when not given."""
    if analysis_price is None:
        analysis_price = analysis_cost(analysis)
    if cost is None:
        cost = cost_usd(
            record.model,
            record.usage,
            record.transcription_seconds,
            record.transcription_tokens,
            transcription_model,
            None,
            record.duration_s,
        ).with_analysis(analysis_price)
    usage = {
        **dataclasses.asdict(record.usage),
        "transcription_model": transcription_model,
        "transcription_seconds": record.transcription_seconds,
        "transcription_tokens": record.transcription_tokens,
    }
    doc: dict[str, Any] = {
        "id": record_id,
        "call_sid": record.call_sid,
        "direction": record.direction,
        "from": record.caller,
        "to": record.called,
        "agent": record.agent,
        "model": record.model,
        "started_at": iso(started_at),
        "ended_at": iso(ended_at),
        "duration_s": round(record.duration_s, 3),
        "end_reason": record.end_reason,
        "transcript": [
            {
                "role": turn.role,
                "text": turn.text,
                "t_s": turn.started_s,
                "interrupted": turn.interrupted,
                "heard_text": turn.heard_text if turn.interrupted else None,
            }
            for turn in record.transcript
            if turn.role in SPEAKERS
        ],
        "tool_calls": [
            {
                "name": tool.name,
                "call_id": tool.call_id,
                "t_s": tool.started_s,
                "duration_ms": tool.duration_ms,
                "outcome": tool.outcome,
            }
            for tool in record.tool_calls
        ],
        "barge_ins": record.barge_ins,
        "reconnects": len(record.reconnect_ms),
        "reconnect_ms": list(record.reconnect_ms),
        "rollovers": record.rollovers,
        "first_audio_ms": list(record.first_audio_ms),
        "usage": usage,
        "cost_usd": cost.total,
        "cost": cost.to_json(),
        "timeline": [
            {"t_s": event.t_s, "kind": event.kind, **{k: v for k, v in event.detail.items() if k not in _OWN}}
            for event in record.timeline
        ],
        "summary": dict(record.summary),
        "analysis": analysis_to_json(analysis, analysis_price),
    }
    return plain(doc)  # type: ignore[no-any-return]


def doc_to_row(doc: Mapping[str, Any], instance: str) -> dict[str, Any]:
    """The ``calls`` row of a document (its searchable fields as columns, the rest as JSON)."""
    usage = doc["usage"]
    cost = doc["cost"]
    return {
        "id": doc["id"],
        "call_sid": doc["call_sid"],
        "direction": doc["direction"],
        "from_number": doc["from"],
        "to_number": doc["to"],
        "agent": doc["agent"],
        "model": doc["model"],
        "started_at": from_iso(doc["started_at"]),
        "ended_at": from_iso(doc["ended_at"]),
        "duration_s": doc["duration_s"],
        "end_reason": doc["end_reason"],
        "turns": len(doc["transcript"]),
        "barge_ins": doc["barge_ins"],
        "reconnects": doc["reconnects"],
        "rollovers": doc["rollovers"],
        "input_tokens": int(usage.get("input_tokens", 0)),
        "output_tokens": int(usage.get("output_tokens", 0)),
        "cost_usd": doc["cost_usd"],
        "cost_complete": not cost.get("unknown") and doc["cost_usd"] is not None,
        "prices_date": str(cost.get("prices_date", "")),
        "instance": instance,
        "transcript": doc["transcript"],
        "timeline": doc["timeline"],
        "tool_calls": doc["tool_calls"],
        "first_audio_ms": doc["first_audio_ms"],
        "reconnect_ms": doc["reconnect_ms"],
        "usage": usage,
        "cost": cost,
        "summary": (
            doc["summary"] if doc.get("analysis") is None else {**doc["summary"], "analysis": doc["analysis"]}
        ),
    }


_TURN_KEYS = ("role", "text", "t_s", "interrupted", "heard_text")
_TOOL_KEYS = ("name", "call_id", "t_s", "duration_ms", "outcome")
_EVENT_KEYS = ("t_s", "kind")
_USAGE_KEYS = (
    "input_tokens", "output_tokens", "input_text_tokens", "input_audio_tokens", "cached_tokens",
    "output_text_tokens", "output_audio_tokens", "transcription_model", "transcription_seconds",
    "transcription_tokens",
)  # fmt: skip
_COST_KEYS = (
    "currency", "prices_date", "model", *LINES, "total", "model_known", "unknown", "cached_split_estimated",
    "twilio_minutes",
)  # fmt: skip


def _ordered(value: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``keys`` first, in that order, then the rest as they come (PostgreSQL's JSONB sorts the keys)."""
    return {**{k: value[k] for k in keys if k in value}, **{k: v for k, v in value.items() if k not in keys}}


def row_to_doc(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The document of a ``calls`` row (the inverse of ``doc_to_row``)."""
    summary = dict(row["summary"] or {})
    analysis = summary.pop("analysis", None)
    return {
        "id": row["id"],
        "call_sid": row["call_sid"],
        "direction": row["direction"],
        "from": row["from_number"],
        "to": row["to_number"],
        "agent": row["agent"],
        "model": row["model"],
        "started_at": iso(row["started_at"]),
        "ended_at": iso(row["ended_at"]),
        "duration_s": row["duration_s"],
        "end_reason": row["end_reason"],
        "transcript": [_ordered(turn, _TURN_KEYS) for turn in row["transcript"]],
        "tool_calls": [_ordered(tool, _TOOL_KEYS) for tool in row["tool_calls"]],
        "barge_ins": row["barge_ins"],
        "reconnects": row["reconnects"],
        "reconnect_ms": row["reconnect_ms"],
        "rollovers": row["rollovers"],
        "first_audio_ms": row["first_audio_ms"],
        "usage": _ordered(row["usage"], _USAGE_KEYS),
        "cost_usd": row["cost_usd"],
        "cost": _ordered(row["cost"], _COST_KEYS),
        "timeline": [_ordered(event, _EVENT_KEYS) for event in row["timeline"]],
        "summary": summary,
        "analysis": analysis,
    }
