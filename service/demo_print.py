"""What ``python -m service.demo`` prints: the call's timeline, the service's summary line, and what the
call's record (as the service wrote it to its database) says it cost.

The timeline is in the caller's stream time. It is put together from what each side saw: the caller
simulator's record (what was said, heard, cleared, and the TwiML of ``<Connect action>``), the Realtime
simulator's sockets (drops, reconnects, replays, truncations, function calls), the tool server's
requests, and the service's own call record (each tool call's start and duration). The service's times
are real time; at ``--speed`` N a real millisecond is N stream milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.core.cost import LINES
from service.sim.caller import CallRecord, ClearRecord
from service.sim.realtime_server import SimConnection, Truncation
from service.sim.script import load_clip
from service.sim.tools import ToolRequest

Row = tuple[float, str]
"""(stream ms, what happened)"""
OUTPUT_CHARS = 90
"""A tool's answer is shown up to this many characters."""


@dataclass(frozen=True, slots=True)
class StreamClock:
    """Wall clock (epoch seconds) to the caller's stream ms.

    The caller simulator keeps its stream clock to itself (``place_call`` only returns the record at
    the end), so the origin is taken from the Realtime simulator: the moment the service's first model
    socket was accepted. The service opens that socket when Twilio's media socket is accepted, a
    handshake later than the caller's ``start``: about 2 ms of real time late on a local run.
    """

    origin: float  # epoch seconds at stream ms 0
    speed: float

    def stream_ms(self, epoch_s: float) -> float:
        return (epoch_s - self.origin) * 1000 * self.speed

    def epoch_s(self, stream_ms: float) -> float:
        return self.origin + stream_ms / 1000 / self.speed


@dataclass(frozen=True, slots=True)
class Drop:
    """A model socket dropped by the demo (``--drop-model-at``)."""

    stream_ms: float
    epoch_s: float
    index: int  # the simulator connection dropped (0-based)
    code: int
    abort: bool

    @property
    def how(self) -> str:
        return "TCP reset" if self.abort else f"close {self.code}"


# --- model sockets ------------------------------------------------------------------------------------


def _replayed(conn: SimConnection) -> tuple[list[str], bool]:
    """The roles of the turns replayed to a session (``conversation.item.create``), and whether it was
    asked to go on (a ``response.create`` without instructions; the greeting's has some)."""
    roles: list[str] = []
    resumed = False
    for event in conn.client_events:
        if event.get("type") == "conversation.item.create":
            item = event.get("item")
            roles.append(str(item.get("role", "?")) if isinstance(item, dict) else "?")
        elif event.get("type") == "response.create":
            response = event.get("response")
            resumed |= not (isinstance(response, dict) and response.get("instructions"))
    return roles, resumed


def _replay_text(conn: SimConnection) -> str:
    roles, resumed = _replayed(conn)
    users, agents = roles.count("user"), roles.count("assistant")
    text = f"{len(roles)} turn(s) replayed ({users} caller, {agents} agent)"
    return text + (", asked to continue (response.create)" if resumed else ", not asked to continue")


def _lost_to_server(conn: SimConnection) -> bool:
    """Ended by the model side (a drop, a fault, the session limit, a fatal error), not by the service."""
    return conn.ended_by is not None


def _successor(conn: SimConnection, connections: Sequence[SimConnection]) -> SimConnection | None:
    return next((c for c in connections if c.index > conn.index), None)


def _loss_rows(
    record: CallRecord,
    connections: Sequence[SimConnection],
    clock: StreamClock,
    drop: Drop | None,
    reconnect_ms: list[int],
) -> tuple[list[Row], set[int]]:
    """Rows for each model socket the model side ended and its replacement, and the indexes in
    ``record.clears`` of the clears the service sent because of the loss (not barge-ins)."""
    rows: list[Row] = []
    lost_clears: set[int] = set()
    # Pairs each loss with the service's reconnect_ms in order (a loss before the session was
    # configured is not counted by the service: the demo only provokes one).
    for loss, conn in enumerate(c for c in connections if _lost_to_server(c) and c.closed_at is not None):
        assert conn.closed_at is not None
        is_drop = drop is not None and conn.index == drop.index
        lost_at = drop.epoch_s if drop is not None and is_drop else conn.closed_at
        lost_ms = clock.stream_ms(lost_at)
        if not is_drop:
            how = "TCP reset" if conn.aborted else f"close {conn.close_code}"
            rows.append((lost_ms, f"model   socket closed by the model side ({how}, {conn.ended_by})"))
        new = _successor(conn, connections)
        if new is None:
            rows.append((lost_ms, "model   no new socket was accepted after the loss"))
            continue
        accept_ms = (new.accepted_at - lost_at) * 1000
        ready_ms = reconnect_ms[loss] if loss < len(reconnect_ms) else None
        ready = "no session ready" if ready_ms is None else f"session ready {ready_ms} ms after the loss"
        what = "drop" if is_drop else "loss"
        at = clock.stream_ms(new.accepted_at)
        rows.append(
            (at, f"model   new socket accepted {accept_ms:.0f} ms after the {what}, {ready} (real time)")
        )
        rows.append((at, f"model   {_replay_text(new)}"))
        window_ms = max(accept_ms, float(ready_ms or 0)) * clock.speed + 100  # stream ms, generous
        lost_clears |= {
            i for i, c in enumerate(record.clears) if lost_ms <= c.stream_ms <= lost_ms + window_ms
        }
    return rows, lost_clears


def _rollover_rows(record: CallRecord, connections: Sequence[SimConnection], clock: StreamClock) -> list[Row]:
    """A socket the service closed before the end of the call while its successor was already open."""
    rows: list[Row] = []
    call_end = clock.epoch_s(record.duration_ms)
    for conn in connections:
        new = _successor(conn, connections)
        if _lost_to_server(conn) or conn.closed_at is None or new is None:
            continue
        if new.accepted_at < conn.closed_at < call_end:
            opened_ms = (conn.closed_at - new.accepted_at) * 1000
            rows.append(
                (
                    clock.stream_ms(conn.closed_at),
                    f"model   session rolled over to a socket opened {opened_ms:.0f} ms before; "
                    + _replay_text(new),
                )
            )
    return rows


def _clear_rows(record: CallRecord, connections: Sequence[SimConnection], lost_clears: set[int]) -> list[Row]:
    """Twilio clears (barge-in, or the lost answer of a dropped session) and the model's truncations,
    each truncation placed at the barge-in that caused it (in order)."""
    rows: list[Row] = []
    barge_ins: list[ClearRecord] = []
    for i, clear in enumerate(record.clears):
        heard = f"{clear.played_ms:.0f} ms of that answer was heard"
        if i in lost_clears:
            thrown = f"{clear.discarded_ms:.0f} ms queued thrown away"
            rows.append((clear.stream_ms, f"twilio  clear (model lost): {heard}, {thrown}"))
        else:
            barge_ins.append(clear)
            rows.append((clear.stream_ms, f"twilio  clear (barge-in): {heard}"))
    truncations: list[Truncation] = [t for conn in connections for t in conn.truncations]
    for i, cut in enumerate(truncations):
        at = barge_ins[min(i, len(barge_ins) - 1)].stream_ms if barge_ins else 0.0
        rows.append(
            (at, f"model   item truncated at {cut.audio_end_ms} ms of {cut.generated_ms} ms generated")
        )
    return rows


# --- tools and the end ---------------------------------------------------------------------------------


def _short(text: str, limit: int = OUTPUT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _compact(raw: str | None) -> str:
    """A JSON text on one line without spaces after separators (as is when it is not JSON)."""
    if raw is None:
        return "(none)"
    try:
        return json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return raw


def tool_rows(
    doc: Mapping[str, Any] | None,
    connections: Sequence[SimConnection],
    requests: Sequence[ToolRequest],
    speed: float,
) -> list[Row]:
    """One row per tool call of the call's record (its start and duration as the service measured them,
    in real time), with the model's arguments and what the tool server (for an HTTP tool) and the model
    got back."""
    if doc is None:
        return []
    calls = {c.call_id: c for conn in connections for c in conn.function_calls}
    by_call_id = {str(r.json.get("call_id")): r for r in requests if r.json is not None}
    rows: list[Row] = []
    for tool in doc.get("tool_calls") or []:
        at = float(tool["t_s"]) * 1000 * speed
        model_call = calls.get(str(tool["call_id"]))
        arguments = _compact(model_call.arguments) if model_call is not None else "?"
        duration = "?" if tool.get("duration_ms") is None else f"{tool['duration_ms']} ms"
        request = by_call_id.get(str(tool["call_id"]))
        how = f"POST {request.path} -> {request.status} ({request.verdict}), " if request is not None else ""
        rows.append(
            (
                at,
                f"tool    {tool['name']}({arguments}): {how}{tool['outcome']} in {duration} (real time)",
            )
        )
        if model_call is not None:
            rows.append((at, f"tool    {tool['name']} -> model: {_short(_compact(model_call.output))}"))
    return rows


def end_rows(record: CallRecord, doc: Mapping[str, Any] | None) -> list[Row]:
    """How the stream ended, and what ``<Connect action>`` then told Twilio to do."""
    end = record.end_reason
    if record.end_reason == "server_closed":
        end += f" (close {record.close_code}: the service ended the stream)"
    if doc is not None and doc.get("end_reason"):
        end += f"; the service's record says: {doc['end_reason']}"
    rows: list[Row] = [(record.duration_ms, f"call    ended: {end}")]
    action = record.action
    if action is not None:
        verbs = "".join(f"<{v.name}/>" for v in action.verbs) or "(no verbs)"
        rows.append(
            (record.duration_ms, f"twilio  <Connect action> {action.method} -> {action.status}: {verbs}")
        )
    return rows


def timeline(
    record: CallRecord,
    connections: Sequence[SimConnection] = (),
    *,
    clock: StreamClock | None = None,
    drop: Drop | None = None,
    summary: Mapping[str, Any] | None = None,
    doc: Mapping[str, Any] | None = None,
    requests: Sequence[ToolRequest] = (),
) -> list[Row]:
    """(stream ms, what happened), in order. The model sockets' rows need the ``clock``; the tool
    calls' rows the call's record ``doc``."""
    rows: list[Row] = []
    runs = record.heard_runs
    for start, name in record.says:
        clip = load_clip(name)
        end = start + clip.duration_ms
        rows.append((start, f"caller  says {clip.text!r} ({clip.duration_ms} ms)"))
        later = [r for r in runs if r[0] >= end]
        if later:
            rows.append(
                (
                    later[0][0],
                    f"agent   first audio heard {later[0][0] - end:.0f} ms after the caller stopped",
                )
            )
    for start, end in runs:
        rows.append((start, f"agent   audio plays for {end - start:.0f} ms"))
    lost_clears: set[int] = set()
    if clock is not None:
        reconnect_ms = [int(ms) for ms in (summary or {}).get("reconnect_ms") or []]
        loss_rows, lost_clears = _loss_rows(record, connections, clock, drop, reconnect_ms)
        rows += loss_rows + _rollover_rows(record, connections, clock)
    if drop is not None:
        rows.append(
            (drop.stream_ms, f"model   socket dropped ({drop.how}){_activity(record, drop.stream_ms)}")
        )
    rows += _clear_rows(record, connections, lost_clears)
    rows += tool_rows(doc, connections, requests, clock.speed if clock is not None else record.speed)
    rows = sorted(rows, key=lambda row: row[0])
    return rows + end_rows(record, doc)  # last, whatever the rounding


def _activity(record: CallRecord, stream_ms: float) -> str:
    """What the caller heard or said at ``stream_ms``, for the drop row."""
    for start, name in record.says:
        if start <= stream_ms < start + load_clip(name).duration_ms:
            return " while the caller was speaking"
    if any(start <= stream_ms < end for start, end in record.heard_runs):
        return " while the agent was heard"
    return ""


# --- the service's words ------------------------------------------------------------------------------


def summary_text(s: Mapping[str, Any]) -> str:
    """The service's summary line as a sentence (missing fields show as ?)."""

    def get(key: str) -> Any:
        return s.get(key, "?")

    reconnect_ms = s.get("reconnect_ms") or []
    reconnects = f"{get('reconnects')} reconnect(s)"
    if reconnect_ms:
        reconnects += " (" + ", ".join(f"{ms} ms" for ms in reconnect_ms) + " from loss to new session)"
    return (
        f"Service summary: {get('duration_s')} s, {get('frames_in')} frames in, {get('frames_out')} frames "
        f"out, {get('turns')} turn(s), {get('barge_ins')} barge-in(s), {get('truncations')} truncation(s), "
        f"{get('tool_calls')} tool call(s) ({get('tool_errors')} failed), "
        f"{reconnects}, {get('rollovers')} rollover(s), {get('gap_dropped_ms')} ms of caller audio "
        f"dropped while reconnecting, first audio after turn end (played) {get('first_audio_ms')} ms, "
        f"tokens in/out {get('input_tokens')}/{get('output_tokens')}, ended: {get('end_reason')} "
        f"(phase {get('phase')})\n"
    )


def _usd(value: Any) -> str:
    return f"${value:.6f}" if isinstance(value, int | float) else "?"


def record_text(doc: Mapping[str, Any], database: str, speed: float = 1.0) -> str:
    """The call's record as the service wrote it to ``database``: its transcript (the record's times are
    real time: shown here in stream time, at ``speed``), its usage and its cost, line by line
    (``service.core.cost.LINES``), as the service priced it."""
    out = [f"Call record {doc.get('call_sid')} (read back from {database}):"]
    for turn in doc.get("transcript") or []:
        text, cut = turn["text"], ""
        if turn.get("interrupted"):  # what the caller heard of it (the record's estimate)
            text, cut = turn.get("heard_text") or text, "   [interrupted: the rest was not heard]"
        at = float(turn["t_s"]) * speed
        out.append(f"  {at:7.2f} s  {turn['role']:<6}  {text or '(no text)'}{cut}")
    usage = doc.get("usage") or {}
    transcribed = f"{usage.get('transcription_seconds') or 0} s"
    if usage.get("transcription_tokens"):
        transcribed = f"{usage['transcription_tokens']} tokens"
    out.append(
        f"  usage: {usage.get('input_tokens', '?')} tokens in ({usage.get('input_audio_tokens', '?')} audio, "
        f"{usage.get('cached_tokens', '?')} cached), {usage.get('output_tokens', '?')} out "
        f"({usage.get('output_audio_tokens', '?')} audio); the caller's speech transcribed: {transcribed} "
        f"({usage.get('transcription_model') or 'model not recorded'})"
    )
    cost = doc.get("cost") or {}
    out.append(
        f"Cost of the call (model {cost.get('model', '?')}, prices of {cost.get('prices_date', '?')}):"
    )
    for line in LINES:
        if cost.get(line) is not None:
            out.append(f"  {line.replace('_', ' '):<16} {_usd(cost[line])}")
    unknown = cost.get("unknown") or []
    total = _usd(doc.get("cost_usd")) + (" (plus lines without a price)" if unknown else "")
    out.append(f"  {'total':<16} {total}")
    if unknown:
        out.append(f"  no price for: {', '.join(unknown)}")
    if cost.get("twilio") is None:
        out.append("  (Twilio's minutes not counted: no Twilio price configured)")
    return "\n".join(out) + "\n"
