"""``python -m service calls …``: the call records from the command line.

    python -m service calls [list] [--number N] [--agent A] [--since DATE] [--until DATE]
                                   [--direction inbound|outbound] [--limit 50 | --all]
    python -m service calls show SID [--json] [--picture out/call.svg]
    python -m service calls export [--format jsonl|csv] [--out FILE] [the list's filters]
    python -m service db upgrade | current

The database is ``DATABASE_URL`` (the environment, else ``.env`` in the working directory, else
``sqlite:///dialtone.db``) or ``--database-url``; nothing else is read (no Twilio or OpenAI settings).
Dates are ``YYYY-MM-DD`` (UTC; ``--until`` includes that day) or ISO 8601 times. Errors are one line on
stderr: exit status 2 for a bad URL (or a SQLite file that is not there) or argument, 1 for a database
that cannot be read or an unknown SID.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from dotenv import dotenv_values
from sqlalchemy.exc import SQLAlchemyError

from service.core.cost import LINES
from service.records.db import DEFAULT_URL, CallFilter, Database, describe_error
from service.records.errors import DatabaseUnavailable, NotFound, RecordsConfigError, RecordsError
from service.records.picture import write_picture

__all__ = ["CSV_FIELDS", "database_url", "main"]

CSV_FIELDS = (
    "call_sid", "id", "direction", "from", "to", "agent", "model", "started_at", "ended_at", "duration_s",
    "end_reason", "turns", "barge_ins", "reconnects", "reconnect_ms", "rollovers", "first_audio_ms",
    "tool_calls", "input_tokens", "output_tokens", "cached_tokens", "transcription_seconds", "cost_usd",
    "cost_unknown", "prices_date", "transcript",
)  # fmt: skip
"""The CSV export's columns (lists joined with ``;``, the transcript as JSON)."""


def database_url(env: Mapping[str, str], cwd: Path | None = None) -> str:
    """``DATABASE_URL`` from ``env``, else from ``.env`` in ``cwd``, else the default."""
    url = env.get("DATABASE_URL", "").strip()
    if url:
        return url
    dotenv = (cwd or Path.cwd()) / ".env"
    if dotenv.is_file():
        url = (dotenv_values(dotenv).get("DATABASE_URL") or "").strip()
    return url or DEFAULT_URL


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = _parser().parse_args(_default_action(list(sys.argv[1:] if argv is None else argv)))
    url = args.database_url or database_url(os.environ if env is None else env)
    try:
        with _database(url, must_exist=args.group == "calls" or args.action == "current") as db:
            if args.group == "db":
                return _db_command(db, args.action, out)
            db.check_schema()
            if args.action == "show":
                return _show(db, args, out, err)
            if args.action == "export":
                return _export(db, args, out)
            return _list(db, args, out)
    except RecordsConfigError as exc:
        err.write(f"error: {exc}\n")
        return 2
    except (DatabaseUnavailable, NotFound) as exc:
        err.write(f"error: {exc}\n")
        return 1
    except RecordsError as exc:
        err.write(f"error: {exc}\n")
        return 1
    except SQLAlchemyError as exc:
        err.write(f"error: database: {describe_error(exc)}\n")
        return 1
    except BrokenPipeError:  # `… | head`
        return 0
    except OSError as exc:
        err.write(f"error: {exc.strerror or exc}: {exc.filename or ''}\n")
        return 1


# --- arguments ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="Dialtone's call records.")
    parser.add_argument(
        "--database-url", help="overrides DATABASE_URL (default: env, .env, sqlite:///dialtone.db)"
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="{calls,db}")
    calls = groups.add_parser("calls", help="list, show and export call records")
    actions = calls.add_subparsers(dest="action", required=True, metavar="{list,show,export}")

    listing = actions.add_parser("list", help="the calls, newest first, and their totals")
    _filters(listing)
    listing.add_argument("--limit", type=int, default=50, help="rows shown (default 50; totals count all)")
    listing.add_argument("--all", action="store_true", help="show every matching call")

    show = actions.add_parser("show", help="one call: transcript and timeline")
    show.add_argument("sid", help="the CallSid (or the record id)")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    show.add_argument("--picture", type=Path, metavar="OUT.svg", help="write the call's timeline as SVG")

    export = actions.add_parser("export", help="the records as JSON lines or CSV, oldest first")
    _filters(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--out", type=Path, metavar="FILE", help="write to FILE (default: standard output)")

    db = groups.add_parser("db", help="the database's schema")
    db.add_argument("action", choices=("upgrade", "current"), help="migrate to the latest schema, or show it")
    return parser


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--number", help="the caller's or the called number")
    parser.add_argument("--agent", help="the agent's key")
    parser.add_argument("--direction", help="inbound or outbound (Twilio's values, e.g. outbound-api)")
    parser.add_argument("--since", type=_since, metavar="DATE", help="calls started on or after (UTC)")
    parser.add_argument("--until", type=_until, metavar="DATE", help="calls started before the end of (UTC)")


def _default_action(argv: list[str]) -> list[str]:
    """``calls`` alone, or with the list's options only, means ``calls list``."""
    for i, arg in enumerate(argv):
        if arg == "calls":
            rest = argv[i + 1 :]
            if not rest or (rest[0] not in ("list", "show", "export") and rest[0] not in ("-h", "--help")):
                return [*argv[: i + 1], "list", *rest]
            return argv
        if arg == "db":
            return argv
    return argv


def _moment(text: str, *, end_of_day: bool) -> datetime:
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if end_of_day else moment
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD) or an ISO 8601 time: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _since(text: str) -> datetime:
    return _moment(text, end_of_day=False)


def _until(text: str) -> datetime:
    return _moment(text, end_of_day=True)


def _where(args: argparse.Namespace) -> CallFilter:
    return CallFilter(
        number=args.number, agent=args.agent, direction=args.direction, since=args.since, until=args.until
    )


@contextmanager
def _database(url: str, *, must_exist: bool) -> Iterator[Database]:
    db = Database(url, must_exist=must_exist)
    try:
        yield db
    finally:
        db.dispose()


# --- commands -------------------------------------------------------------------------------------


def _db_command(db: Database, action: str, out: TextIO) -> int:
    if action == "upgrade":
        try:
            db.migrate()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"database {db.name}: {describe_error(exc)}") from None
    try:
        current = db.revision()
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"database {db.name}: {describe_error(exc)}") from None
    out.write(f"{db.name}: schema {current or 'none'} (latest {db.head()})\n")
    return 0


def _list(db: Database, args: argparse.Namespace, out: TextIO) -> int:
    where = _where(args)
    docs = db.find_calls(where, limit=None if args.all else max(args.limit, 0))
    totals = db.totals(where)
    header = (
        "STARTED (UTC)",
        "CALL SID",
        "DIR",
        "FROM",
        "TO",
        "AGENT",
        "DURATION",
        "END",
        "TURNS",
        "BARGE",
        "COST",
    )
    rows = [header]
    for doc in docs:
        rows.append(
            (
                doc["started_at"][:19].replace("T", " "),
                doc["call_sid"] or f"({doc['id'][:12]})",
                _short_direction(doc["direction"]),
                doc["from"] or "-",
                doc["to"] or "-",
                doc["agent"] or "-",
                _duration(doc["duration_s"]),
                doc["end_reason"] or "-",
                str(len(doc["transcript"])),
                str(doc["barge_ins"]),
                _money(doc["cost_usd"], doc["cost"]),
            )
        )
    _table(rows, out, right={6, 8, 9, 10})
    shown = f" ({len(docs)} shown)" if len(docs) < totals.count else ""
    unknown = f", {totals.cost_unknown} without a full price" if totals.cost_unknown else ""
    out.write(
        f"total: {totals.count} call{'s' if totals.count != 1 else ''}{shown}, "
        f"{totals.duration_s / 60:.1f} minutes, ${totals.cost_usd:.4f}{unknown}\n"
    )
    return 0


def _show(db: Database, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    doc = db.get_call(args.sid)
    if doc is None:
        raise NotFound(f"no call {args.sid!r} in {db.name}")
    if args.json:
        out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(render_call(doc))
    if args.picture is not None:
        path = write_picture(doc, args.picture)
        (err if args.json else out).write(f"picture: {path}\n")
    return 0


def _export(db: Database, args: argparse.Namespace, out: TextIO) -> int:
    docs = db.iter_calls(_where(args))
    if args.out is None:
        _write_export(docs, args.format, out)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="") as file:
        _write_export(docs, args.format, file)
    return 0


def _write_export(docs: Iterable[dict[str, Any]], fmt: str, out: TextIO) -> None:
    if fmt == "jsonl":
        for doc in docs:
            out.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")
        return
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for doc in docs:
        writer.writerow(csv_row(doc))


def csv_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    usage = doc.get("usage") or {}
    cost = doc.get("cost") or {}
    return {
        "call_sid": doc["call_sid"],
        "id": doc["id"],
        "direction": doc["direction"],
        "from": doc["from"],
        "to": doc["to"],
        "agent": doc["agent"],
        "model": doc["model"],
        "started_at": doc["started_at"],
        "ended_at": doc["ended_at"],
        "duration_s": doc["duration_s"],
        "end_reason": doc["end_reason"],
        "turns": len(doc["transcript"]),
        "barge_ins": doc["barge_ins"],
        "reconnects": doc["reconnects"],
        "reconnect_ms": ";".join(str(v) for v in doc["reconnect_ms"]),
        "rollovers": doc["rollovers"],
        "first_audio_ms": ";".join(str(v) for v in doc["first_audio_ms"]),
        "tool_calls": ";".join(f"{t['name']}:{t['outcome']}" for t in doc["tool_calls"]),
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "cached_tokens": usage.get("cached_tokens"),
        "transcription_seconds": usage.get("transcription_seconds"),
        "cost_usd": doc["cost_usd"],
        "cost_unknown": ";".join(cost.get("unknown") or []),
        "prices_date": cost.get("prices_date"),
        "transcript": json.dumps(doc["transcript"], ensure_ascii=False),
    }


# --- the text of one call -------------------------------------------------------------------------


def render_call(doc: Mapping[str, Any]) -> str:
    """``calls show``: the call's facts, cost, transcript, tool calls and timeline, as text."""
    lines: list[str] = []
    add = lines.append
    sid = doc["call_sid"] or "(no CallSid)"
    add(f"Call {sid}  {doc['direction']}  {doc['from'] or '?'} -> {doc['to'] or '?'}")
    add(f"  agent {doc['agent'] or '-'}  model {doc['model']}")
    add(f"  started {doc['started_at']}  ended {doc['ended_at']}  duration {_duration(doc['duration_s'])}")
    add(f"  end: {doc['end_reason'] or '-'}")
    first = ", ".join(f"{ms} ms" for ms in doc["first_audio_ms"]) or "-"
    reconnects = ", ".join(f"{ms} ms" for ms in doc["reconnect_ms"])
    reconnects = f" ({reconnects})" if reconnects else ""
    add(f"  barge-ins {doc['barge_ins']}  reconnects {doc['reconnects']}{reconnects}")
    add(f"  rollovers {doc['rollovers']}")
    add(f"  first audio: {first}")
    usage = doc.get("usage") or {}
    tokens = usage.get("transcription_tokens")
    add(
        f"  usage: input {usage.get('input_tokens', 0)} (text {usage.get('input_text_tokens', 0)}, audio "
        f"{usage.get('input_audio_tokens', 0)}, cached {usage.get('cached_tokens', 0)}), output "
        f"{usage.get('output_tokens', 0)} (text {usage.get('output_text_tokens', 0)}, audio "
        f"{usage.get('output_audio_tokens', 0)})"
    )
    add(
        f"  transcription: {usage.get('transcription_seconds', 0)} s{f', {tokens} tokens' if tokens else ''}"
        f" ({usage.get('transcription_model') or 'model not recorded'})"
    )
    cost = doc.get("cost") or {}
    parts = [
        f"{line.replace('_', ' ')} {_money(cost.get(line))}" for line in LINES if cost.get(line) is not None
    ]
    unknown = cost.get("unknown") or []
    add(
        f"  cost: {_money(doc['cost_usd'], cost)} (prices of {cost.get('prices_date', '?')})"
        + (f": {', '.join(parts)}" if parts else "")
        + (f"; no price for: {', '.join(unknown)}" if unknown else "")
    )
    add("")
    add("Transcript")
    if not doc["transcript"]:
        add("  (nothing said)")
    for turn in doc["transcript"]:
        mark = ""
        if turn.get("interrupted"):
            heard = turn.get("heard_text")
            mark = (
                f"   [cut by the caller; heard: {json.dumps(heard, ensure_ascii=False)}]"
                if heard
                else ("   [cut by the caller]")
            )
        add(f"  [{_clock(turn['t_s'])}] {turn['role']:<6}  {turn['text'] or '(no text)'}{mark}")
    if doc["tool_calls"]:
        add("")
        add("Tool calls")
        for tool in doc["tool_calls"]:
            duration = f"{tool['duration_ms']} ms" if tool.get("duration_ms") is not None else "-"
            add(f"  [{_clock(tool['t_s'])}] {tool['name']}  {duration}  {tool['outcome']}")
    add("")
    add("Timeline")
    if not doc["timeline"]:
        add("  (no events)")
    for event in doc["timeline"]:
        detail = "  ".join(f"{k}={v}" for k, v in event.items() if k not in ("t_s", "kind"))
        add(f"  [{_clock(event['t_s'])}] {event['kind']}{'  ' + detail if detail else ''}")
    return "\n".join(lines) + "\n"


def _table(rows: Sequence[Sequence[str]], out: TextIO, right: set[int]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        out.write("  ".join(cells).rstrip() + "\n")


def _clock(t_s: float) -> str:
    minutes, seconds = divmod(max(float(t_s), 0.0), 60)
    return f"{int(minutes):02d}:{seconds:04.1f}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(float(seconds)), 60)
    return f"{minutes}:{rest:02d}"


def _money(value: Any, cost: Mapping[str, Any] | None = None) -> str:
    if not isinstance(value, int | float):
        return "?"
    partial = "+?" if cost is not None and cost.get("unknown") else ""
    return f"${value:.4f}{partial}"


def _short_direction(direction: str) -> str:
    return "in" if direction == "inbound" else "out" if direction.startswith("outbound") else direction
