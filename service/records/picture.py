"""A picture of one call: its timeline as SVG, from the record's JSON document (no dependency).

Lanes, left to right in stream time (seconds since the media stream was accepted):

- **caller**: what the caller said (the server VAD's speech started/stopped), the text in a tooltip;
- **agent**: the agent's answers as heard, from their first audio; the first-audio latency above each;
  an answer cut by the caller ends in a red mark, with what was heard; an end that the record does not
  give (an answer that played out) is estimated from its text (~15 characters a second) and drawn pale;
- **events**: tool calls (name, duration, outcome), model sockets lost and back (the reconnect time),
  session rollovers, keypad presses;
- red lines across the lanes: barge-ins (how much of the answer was heard, truncations).

    svg = timeline_svg(doc)
    write_picture(doc, Path("out/call.svg"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["timeline_svg", "write_picture"]

WIDTH = 1200
LEFT = 90
RIGHT = 30
TOP = 84
LANE_H = 46
LANE_GAP = 14
CHARS_PER_S = 15.0
"""Speaking rate used to estimate an answer's end when the record does not give it."""
_NICE_STEPS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
COLORS = {
    "caller": "#2b7bb9",
    "agent": "#3a9d5d",
    "barge": "#d62728",
    "tool": "#8e5ea2",
    "tool_bad": "#c0392b",
    "reconnect": "#7f7f7f",
    "rollover": "#e08e0b",
    "text": "#222222",
    "grid": "#e6e6e6",
}


@dataclass(frozen=True, slots=True)
class Span:
    start: float
    end: float
    label: str = ""
    title: str = ""
    estimated: bool = False
    cut: bool = False
    latency_ms: int | None = None


def timeline_svg(doc: Mapping[str, Any]) -> str:
    """The SVG of one call's record document (``record_to_json`` / ``calls show --json``)."""
    events: list[Mapping[str, Any]] = list(doc.get("timeline") or [])
    transcript: list[Mapping[str, Any]] = list(doc.get("transcript") or [])
    tools: list[Mapping[str, Any]] = list(doc.get("tool_calls") or [])
    end = _call_end(doc, events, transcript, tools)
    scale = (WIDTH - LEFT - RIGHT) / end

    def x(t: float) -> float:
        return round(LEFT + max(0.0, min(t, end)) * scale, 1)

    ended_at = next((float(e.get("t_s", end)) for e in events if e.get("kind") == "ended"), end)
    caller = _caller_spans(events, transcript, ended_at)  # nobody speaks after the call has ended
    agent = _agent_spans(events, transcript, ended_at)
    lanes = {"caller": TOP, "agent": TOP + LANE_H + LANE_GAP, "events": TOP + 2 * (LANE_H + LANE_GAP)}
    height = lanes["events"] + LANE_H + 70
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        _text(LEFT, 22, _headline(doc), size=14, weight="bold"),
        _text(LEFT, 42, _subline(doc), size=11, color="#555555"),
    ]
    # the time axis and its grid
    step = next((s for s in _NICE_STEPS if end / s <= 12), 3600)
    axis_y = lanes["events"] + LANE_H + 18
    tick = 0.0
    while tick <= end + 1e-9:
        grid = COLORS["grid"]
        out.append(f'<line x1="{x(tick)}" y1="{TOP - 6}" x2="{x(tick)}" y2="{axis_y - 10}" stroke="{grid}"/>')
        out.append(_text(x(tick), axis_y + 2, _clock(tick), anchor="middle", color="#555555"))
        tick += step
    out.append(
        _text(WIDTH - RIGHT, axis_y + 18, "seconds since the stream started", anchor="end", color="#888888")
    )
    for name, y in lanes.items():
        lane = f'x="{LEFT}" y="{y}" width="{WIDTH - LEFT - RIGHT}" height="{LANE_H}"'
        out.append(f'<rect {lane} fill="#fafafa" stroke="#dddddd"/>')
        out.append(_text(LEFT - 10, y + LANE_H / 2 + 4, name, anchor="end", weight="bold"))
    # speech
    for span in caller:
        out.append(_bar(x(span.start), x(span.end), lanes["caller"] + 8, LANE_H - 16, COLORS["caller"], span))
    for span in agent:
        y = lanes["agent"] + 8
        out.append(_bar(x(span.start), x(span.end), y, LANE_H - 16, COLORS["agent"], span))
        if span.cut:
            out.append(
                f'<line x1="{x(span.end)}" y1="{y - 4}" x2="{x(span.end)}" y2="{y + LANE_H - 12}" '
                f'stroke="{COLORS["barge"]}" stroke-width="3"/>'
            )
            said = span.label if len(span.label) <= 40 else span.label[:39] + "…"
            label = f'heard: "{said}"' if said else "cut before any was heard"
            out.append(
                _text(x(span.end) + 4, lanes["agent"] + LANE_H - 3, label, size=9, color=COLORS["barge"])
            )
        if span.latency_ms is not None:
            out.append(
                _text(x(span.start), lanes["agent"] + 6, f"{span.latency_ms} ms", size=9, color="#555555")
            )
    # barge-ins across the speech lanes
    for event in events:
        if event.get("kind") != "barge_in":
            continue
        t = float(event.get("t_s", 0.0))
        heard = event.get("heard_ms")
        truncated = int(event.get("truncated") or 0)
        label = f"barge-in, {heard} ms heard" + (f", {truncated} truncated" if truncated else "")
        out.append(
            f'<g><title>{escape(label)}</title><line x1="{x(t)}" y1="{lanes["caller"] - 4}" x2="{x(t)}" '
            f'y2="{lanes["agent"] + LANE_H + 4}" stroke="{COLORS["barge"]}" stroke-width="1.5" '
            f'stroke-dasharray="4,2"/></g>'
        )
        out.append(
            _text(
                x(t) + 3,
                lanes["caller"] - 6,
                "barge-in" + (" ✂" if truncated else ""),
                size=9,
                color=COLORS["barge"],
            )
        )
    out += _event_lane(events, tools, lanes["events"], x)
    # the end
    ended = next((e for e in events if e.get("kind") == "ended"), None)
    if ended is not None:
        t = float(ended.get("t_s", end))
        out.append(f'<line x1="{x(t)}" y1="{TOP - 6}" x2="{x(t)}" y2="{axis_y - 10}" stroke="#000000"/>')
        out.append(  # a row of its own, above the barge-in labels
            _text(
                x(t) - 3,
                TOP - 22,
                f"ended: {ended.get('reason') or doc.get('end_reason') or ''}",
                anchor="end",
                size=10,
            )
        )
    out.append(_legend(height - 16))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_picture(doc: Mapping[str, Any], path: Path) -> Path:
    """Write ``timeline_svg(doc)`` to ``path`` (its folder created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(timeline_svg(doc), encoding="utf-8")
    return path


# --- what is drawn ------------------------------------------------------------------------------


def _call_end(
    doc: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    transcript: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
) -> float:
    times = [float(e.get("t_s", 0.0)) for e in events] + [float(t.get("t_s", 0.0)) for t in transcript]
    times += [float(t.get("t_s", 0.0)) + (t.get("duration_ms") or 0) / 1000 for t in tools]
    times.append(float(doc.get("duration_s") or 0.0))
    return max([*times, 1.0]) * 1.02


def _caller_spans(
    events: Sequence[Mapping[str, Any]], transcript: Sequence[Mapping[str, Any]], end: float
) -> list[Span]:
    said = [t for t in transcript if t.get("role") == "caller"]
    spans: list[Span] = []
    start: float | None = None
    for event in events:
        kind, t = event.get("kind"), float(event.get("t_s", 0.0))
        if kind == "caller_started" and start is None:
            start = t
        elif kind == "caller_stopped" and start is not None:
            spans.append(Span(start, max(t, start + 0.05)))
            start = None
    if start is not None:
        spans.append(Span(start, end, estimated=True))
    if not spans:  # no VAD events: the transcript's turns, their length estimated
        spans = [
            Span(float(t.get("t_s", 0.0)), float(t.get("t_s", 0.0)) + _say_s(t), estimated=True) for t in said
        ]
    return _label_caller(spans, said)


def _agent_spans(
    events: Sequence[Mapping[str, Any]], transcript: Sequence[Mapping[str, Any]], end: float
) -> list[Span]:
    turns = [t for t in transcript if t.get("role") == "agent"]
    heard = [e for e in events if e.get("kind") == "agent_heard"]
    cuts = sorted(float(e.get("t_s", 0.0)) for e in events if e.get("kind") in ("barge_in", "model_lost"))
    spans: list[Span] = []
    for i, turn in enumerate(turns):
        begun = float(turn.get("t_s", 0.0))
        limit = float(turns[i + 1].get("t_s", end)) if i + 1 < len(turns) else end
        first = next((e for e in heard if begun - 0.05 <= float(e.get("t_s", 0.0)) < limit), None)
        start = float(first.get("t_s", begun)) if first is not None else begun
        latency = first.get("latency_ms") if first is not None else None
        text = str(turn.get("text") or "")
        if turn.get("interrupted"):
            cut_at = next((c for c in cuts if start <= c <= limit), None)
            heard_text = str(turn.get("heard_text") or "")
            title = f"agent (cut): {text}\nheard: {heard_text}"
            if cut_at is not None:
                spans.append(Span(start, cut_at, heard_text or text, title, cut=True, latency_ms=latency))
                continue
            stop = min(start + _say_s({"text": heard_text}), limit)
            spans.append(Span(start, stop, heard_text, title, estimated=True, cut=True, latency_ms=latency))
            continue
        stop = min(start + _say_s(turn), limit)
        spans.append(
            Span(start, max(stop, start + 0.1), text, f"agent: {text}", estimated=True, latency_ms=latency)
        )
    return spans


def _event_lane(
    events: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], y: float, x: Any
) -> list[str]:
    out: list[str] = []
    calls = [
        (float(t.get("t_s", 0.0)), t.get("duration_ms"), str(t.get("name")), str(t.get("outcome")))
        for t in tools
    ]
    if not calls:  # older records: the tool events of the timeline
        started: dict[Any, float] = {}
        for e in events:
            if e.get("kind") == "tool_started":
                started[e.get("name")] = float(e.get("t_s", 0.0))
            elif e.get("kind") == "tool_done":
                t0 = started.pop(e.get("name"), float(e.get("t_s", 0.0)))
                calls.append((t0, e.get("duration_ms"), str(e.get("name")), str(e.get("outcome"))))
    for t0, duration_ms, name, outcome in calls:
        t1 = t0 + (duration_ms or 0) / 1000
        color = COLORS["tool"] if outcome == "ok" else COLORS["tool_bad"]
        label = f"{name} {duration_ms if duration_ms is not None else '?'} ms {outcome}"
        box = f'x="{x(t0)}" y="{y + 6}" width="{max(x(t1) - x(t0), 3)}" height="14"'
        out.append(f'<g><title>{escape("tool " + label)}</title><rect {box} fill="{color}" rx="2"/></g>')
        if x(t0) + 5.6 * len(label) <= WIDTH - RIGHT:
            out.append(_text(x(t0), y + 32, label, size=9, color=color))
        else:  # near the right edge: written leftwards from the call's end
            out.append(_text(x(t1) + 3, y + 32, label, size=9, color=color, anchor="end"))
    lost: float | None = None
    for e in events:
        kind, t = e.get("kind"), float(e.get("t_s", 0.0))
        if kind == "model_lost":
            lost = t
        elif kind == "model_back":
            t0 = lost if lost is not None else t - (e.get("reconnect_ms") or 0) / 1000
            label = f"reconnect {e.get('reconnect_ms')} ms"
            out.append(
                f'<g><title>{escape(label)}</title><rect x="{x(t0)}" y="{y + 24}" '
                f'width="{max(x(t) - x(t0), 3)}" height="14" fill="{COLORS["reconnect"]}" '
                f'fill-opacity="0.5" stroke="{COLORS["reconnect"]}"/></g>'
            )
            out.append(_text(x(t0), y + LANE_H - 1, label, size=9, color="#444444"))
            lost = None
        elif kind == "rollover":
            out.append(
                _marker(
                    x(t), y + 10, COLORS["rollover"], "rollover" + (" (forced)" if e.get("forced") else "")
                )
            )
        elif kind == "keypad":
            out.append(_marker(x(t), y + 40, "#555555", f"keypad ({e.get('digits', '?')} digits)"))
    if lost is not None:
        out.append(_marker(x(lost), y + 30, COLORS["reconnect"], "model lost (not back)"))
    return out


# --- drawing ------------------------------------------------------------------------------------


def _bar(x0: float, x1: float, y: float, h: float, color: str, span: Span) -> str:
    width = max(x1 - x0, 2.0)
    opacity = "0.45" if span.estimated else "0.9"
    title = escape(span.title or span.label)
    label = ""
    chars = int(width / 6.2)
    if span.label and chars >= 4:
        text = span.label if len(span.label) <= chars else span.label[: chars - 1] + "…"
        label = _text(
            x0 + 3, y + h / 2 + 4, text, size=10, color="#ffffff" if not span.estimated else "#111111"
        )
    return (
        f'<g><title>{title}</title><rect x="{x0}" y="{y}" width="{round(width, 1)}" height="{h}" '
        f'fill="{color}" fill-opacity="{opacity}" rx="3"/>{label}</g>'
    )


def _marker(x: float, y: float, color: str, title: str) -> str:
    diamond = f"M {x} {y - 6} L {x + 6} {y} L {x} {y + 6} L {x - 6} {y} Z"
    label = _text(x + 8, y + 4, title, size=9, color=color)
    return f'<g><title>{escape(title)}</title><path d="{diamond}" fill="{color}"/>{label}</g>'


def _text(
    x: float,
    y: float,
    text: str,
    *,
    size: int = 11,
    color: str = COLORS["text"],
    anchor: str = "start",
    weight: str = "normal",
) -> str:
    return (
        f'<text x="{round(x, 1)}" y="{round(y, 1)}" font-size="{size}" fill="{color}" text-anchor="{anchor}" '
        f'font-weight="{weight}">{escape(text)}</text>'
    )


def _legend(y: float) -> str:
    items = [
        (COLORS["caller"], "caller speech"),
        (COLORS["agent"], "agent speech (pale: end estimated)"),
        (COLORS["barge"], "barge-in / cut"),
        (COLORS["tool"], "tool call"),
        (COLORS["reconnect"], "model reconnect"),
        (COLORS["rollover"], "rollover"),
    ]
    parts, x = [], float(LEFT)
    for color, label in items:
        parts.append(f'<rect x="{x}" y="{y - 9}" width="12" height="10" fill="{color}"/>')
        parts.append(_text(x + 16, y, label, size=10, color="#444444"))
        x += 30 + 6.2 * len(label)
    return "".join(parts)


def _headline(doc: Mapping[str, Any]) -> str:
    return " · ".join(
        [
            str(doc.get("call_sid") or doc.get("id")),
            str(doc.get("direction", "")),
            f"{doc.get('from') or '?'} → {doc.get('to') or '?'}",
            f"agent {doc.get('agent') or '-'}",
        ]
    )


def _subline(doc: Mapping[str, Any]) -> str:
    cost = doc.get("cost_usd")
    first = doc.get("first_audio_ms") or []
    parts = [
        str(doc.get("started_at", "")),
        f"{float(doc.get('duration_s') or 0):.1f} s",
        str(doc.get("model", "")),
        f"barge-ins {doc.get('barge_ins', 0)}",
        f"reconnects {doc.get('reconnects', 0)}",
        _first_audio(first),
        f"cost ${cost:.4f}" if isinstance(cost, int | float) else "cost unknown",
    ]
    return " · ".join(parts)  # the end reason is written at the end line


def _first_audio(ms: Sequence[int]) -> str:
    """Each turn's first-audio latency; beyond four turns, their median and worst (the line must fit)."""
    if not ms:
        return "first audio -"
    if len(ms) <= 4:
        return "first audio " + ", ".join(f"{m} ms" for m in ms)
    ordered = sorted(ms)
    return f"first audio median {ordered[len(ordered) // 2]} ms, max {ordered[-1]} ms ({len(ms)} turns)"


def _clock(t: float) -> str:
    if t >= 60:
        return f"{int(t // 60)}:{int(t % 60):02d}"
    return f"{t:g}s"


def _say_s(turn: Mapping[str, Any]) -> float:
    return max(len(str(turn.get("text") or "")) / CHARS_PER_S, 0.4)


def _label_caller(spans: list[Span], said: Sequence[Mapping[str, Any]]) -> list[Span]:
    """Each caller turn's text on the speech it came from: the last span that began before the turn's
    item was committed (the server commits it when the speech stops)."""
    labels: dict[int, Mapping[str, Any]] = {}
    for turn in said:
        t = float(turn.get("t_s", 0.0))
        before = [i for i, span in enumerate(spans) if span.start <= t + 0.05 and i not in labels]
        if before:
            labels[before[-1]] = turn
    out: list[Span] = []
    for i, span in enumerate(spans):
        said_here = labels.get(i)
        text = str(said_here.get("text") or "") if said_here is not None else ""
        out.append(Span(span.start, span.end, text, f"caller: {text}" if text else "caller", span.estimated))
    return out
