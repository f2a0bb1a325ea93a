"""The call records in a real SQLite database: migrations, the JSON shape, the store through an outage,
the command line, the picture, and the state the processes share.

An outage is a real one: another connection holds SQLite's write lock (``BEGIN EXCLUSIVE``), so every
write of the store fails with "database is locked" until it lets go (chmod cannot stop root, who runs CI).
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.core.cost import cost_usd
from service.core.record import CallRecord, TimelineEvent, ToolCallRecord, TurnRecord
from service.records import (
    CallFilter,
    Database,
    Pricing,
    RecordsConfigError,
    RecordStore,
    StateUnavailable,
    pricing_from_env,
    record_to_json,
)
from service.records.cli import CSV_FIELDS, database_url, main
from service.records.db import describe_error, parse_url, safe_url
from service.records.models import metadata
from service.records.picture import timeline_svg
from service.records.shape import SCHEMA_FIELDS
from service.wire.realtime import Usage

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC).timestamp()
SECRET_WORDS = "my card number is four two four two"  # a caller's words: never in a log below WARNING
ISSUE_NAMES = {
    "call_sid", "agent", "direction", "started_at", "ended_at", "end_reason", "model", "usage", "cost_usd",
    "transcript", "tool_calls", "barge_ins", "reconnects", "duration_s", "from", "to", "first_audio_ms",
    "reconnect_ms", "rollovers", "timeline", "summary",
}  # fmt: skip


def make_record(sid: str | None = "CA" + "1" * 32, **changes: Any) -> CallRecord:
    record = CallRecord(
        call_sid=sid,
        direction="inbound",
        caller="+15550001111",
        called="+15551230001",
        agent="default",
        model="gpt-realtime-2.1",
        duration_s=42.5,
        end_reason="caller hung up",
        transcript=(
            TurnRecord("agent", "Hello, how can I help?", 0.6),
            TurnRecord("caller", SECRET_WORDS, 3.1),
            TurnRecord("tool", '{"q": "card"}', 3.2),
            TurnRecord("agent", "Thank you. Let me read that back to you slowly.", 3.4, True, "Thank you."),
            TurnRecord("caller", "Stop, that's fine.", 6.2),
        ),
        timeline=(
            TimelineEvent(1.2, "caller_started"),
            TimelineEvent(3.0, "caller_stopped"),
            TimelineEvent(3.7, "agent_heard", {"latency_ms": 700}),
            TimelineEvent(5.1, "caller_started"),
            TimelineEvent(5.1, "barge_in", {"heard_ms": 1400, "truncated": 1}),
            TimelineEvent(6.0, "caller_stopped"),
            TimelineEvent(10.0, "model_lost"),
            TimelineEvent(11.2, "model_back", {"reconnect_ms": 1200}),
            TimelineEvent(20.0, "rollover", {"forced": False}),
            TimelineEvent(42.5, "ended", {"reason": "caller hung up"}),
        ),
        tool_calls=(ToolCallRecord("lookup_order", "call_1", 4.0, 350, "ok"),),
        barge_ins=1,
        reconnect_ms=(1200,),
        rollovers=1,
        first_audio_ms=(700,),
        usage=Usage(10_000, 3_000, 2_000, 8_000, 5_000, 1_000, 2_000),
        transcription_seconds=20.0,
        transcription_tokens=0,
        summary={"call_sid": sid, "turns": 5, "first_audio_ms": [700]},
    )
    return replace(record, **changes)


def sqlite_url(tmp_path: Path, name: str = "calls.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def fast_store(url: str | Database, **options: Any) -> RecordStore:
    """A store that retries quickly and whose migrations are done."""
    options.setdefault("retry_min_s", 0.02)
    options.setdefault("retry_max_s", 0.1)
    options.setdefault("heartbeat_s", None)
    store = RecordStore(url, **options)
    assert store.wait_ready(10)
    return store


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[RecordStore]:
    store = fast_store(url)
    yield store
    store.close()


class Lock:
    """Another connection holding SQLite's write lock: every write elsewhere fails "database is locked"."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def locked_store(tmp_path: Path, **options: Any) -> tuple[RecordStore, Lock]:
    url = sqlite_url(tmp_path)
    store = fast_store(Database(url, sqlite_timeout_s=0.05), **options)
    return store, Lock(tmp_path / "calls.db")


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- schema ---------------------------------------------------------------------------------------


def test_migrations_create_the_schema_the_models_describe(url: str) -> None:
    db = Database(url)
    assert db.revision() is None
    db.migrate()
    db.migrate()  # idempotent
    assert db.revision() == db.head() == "0001"
    names = set(inspect(db.engine).get_table_names())
    assert {"calls", "stream_tokens", "call_decisions", "instances", "alembic_version"} <= names
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    db.dispose()


def migrate_at_once(databases: list[Database]) -> list[BaseException]:
    """Migrate each database from a thread of its own, all at once; what they raised."""
    errors: list[BaseException] = []

    def migrate(db: Database) -> None:
        try:
            db.migrate()
        except BaseException as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_migrations_of_one_new_file_all_succeed(url: str) -> None:
    databases = [Database(url) for _ in range(4)]
    assert migrate_at_once(databases) == []
    assert databases[0].revision() == "0001"
    for db in databases:
        db.dispose()


def test_the_store_migrates_at_start_up(url: str) -> None:
    with RecordStore(url, heartbeat_s=None) as store:
        assert store.wait_ready(10)
        assert store.db.revision() == "0001"


# --- the JSON shape -------------------------------------------------------------------------------


def test_record_json_has_the_names_the_issue_asks_for() -> None:
    doc = record_to_json(make_record(), T0, T0 + 42.5, record_id="abc")
    assert tuple(doc) == SCHEMA_FIELDS
    assert set(doc) >= ISSUE_NAMES
    assert doc["started_at"] == "2026-11-20T10:00:00.000Z"
    assert doc["ended_at"] == "2026-11-20T10:00:42.500Z"
    assert datetime.fromisoformat(doc["started_at"]).tzinfo is not None
    assert [t["role"] for t in doc["transcript"]] == ["agent", "caller", "agent", "caller"]  # no tool turn
    cut = doc["transcript"][2]
    assert cut == {
        "role": "agent",
        "text": "Thank you. Let me read that back to you slowly.",
        "t_s": 3.4,
        "interrupted": True,
        "heard_text": "Thank you.",
    }
    assert doc["tool_calls"] == [
        {"name": "lookup_order", "call_id": "call_1", "t_s": 4.0, "duration_ms": 350, "outcome": "ok"}
    ]
    assert doc["reconnects"] == 1 and doc["reconnect_ms"] == [1200]
    assert doc["barge_ins"] == 1 and doc["rollovers"] == 1 and doc["first_audio_ms"] == [700]
    assert doc["timeline"][4] == {"t_s": 5.1, "kind": "barge_in", "heard_ms": 1400, "truncated": 1}
    assert doc["usage"]["cached_tokens"] == 5_000
    assert doc["usage"]["transcription_seconds"] == 20.0
    assert doc["cost_usd"] == doc["cost"]["total"]
    assert json.loads(json.dumps(doc)) == doc  # JSON values only


def test_record_json_of_a_call_the_core_ran() -> None:
    from callkit import Driver

    driver = Driver().live()
    driver.hangup(5.0)
    doc = record_to_json(driver.call.record(5.0), T0, T0 + 5.0)
    assert doc["call_sid"].startswith("CA")
    assert doc["agent"] == "default"
    assert doc["model"] == "gpt-realtime-2.1"
    assert doc["timeline"][-1]["kind"] == "ended"
    assert json.loads(json.dumps(doc)) == doc


def test_cost_in_the_record_uses_the_store_pricing(url: str) -> None:
    pricing = pricing_from_env({"TWILIO_PRICE_PER_MINUTE": "0.0085"})
    with fast_store(url, pricing=pricing) as store:
        store.put(make_record(), T0, T0 + 42.5, transcription_model="gpt-realtime-whisper")
        assert store.flush()
        doc = store.db.get_call("CA" + "1" * 32)
    assert doc is not None
    expected = cost_usd(
        "gpt-realtime-2.1", make_record().usage, 20.0, 0, "gpt-realtime-whisper", 0.0085, 42.5
    )
    assert doc["cost"] == expected.to_json()
    assert doc["cost"]["twilio"] == pytest.approx(0.0085)
    assert doc["cost_usd"] == pytest.approx(expected.total)
    assert doc["usage"]["transcription_model"] == "gpt-realtime-whisper"


# --- the store ------------------------------------------------------------------------------------


def test_put_then_get_round_trips_the_document(store: RecordStore) -> None:
    record = make_record()
    assert store.put(record, T0, T0 + 42.5)
    assert store.flush()
    doc = store.db.get_call(record.call_sid or "")
    assert doc is not None
    expected = record_to_json(record, T0, T0 + 42.5, cost=store.pricing.cost(record), record_id=doc["id"])
    assert doc == expected
    assert store.db.get_call(doc["id"]) == doc  # by record id too
    assert store.stats().written == 1


def test_a_record_without_a_call_sid_is_kept(store: RecordStore) -> None:
    assert store.put(make_record(None), T0, T0 + 1)
    assert store.flush()
    [doc] = store.db.find_calls()
    assert doc["call_sid"] is None


def test_list_filters_and_totals(store: RecordStore) -> None:
    day = 86_400.0
    store.put(make_record("CA01", caller="+15550000001", agent="sales"), T0, T0 + 60)
    store.put(
        make_record("CA02", called="+15550000002", agent="support", duration_s=120.0), T0 + day, T0 + day
    )
    store.put(make_record("CA03", direction="outbound-api", agent="sales"), T0 + 2 * day, T0 + 2 * day)
    store.put(make_record("CA04", model="unknown-model"), T0 + 3 * day, T0 + 3 * day)
    assert store.flush()
    db = store.db

    def sids(where: CallFilter) -> list[str | None]:
        return [d["call_sid"] for d in db.find_calls(where)]

    assert sids(CallFilter()) == ["CA04", "CA03", "CA02", "CA01"]  # newest first
    assert sids(CallFilter(number="+15550000001")) == ["CA01"]
    assert sids(CallFilter(number="+15550000002")) == ["CA02"]
    assert sids(CallFilter(agent="sales")) == ["CA03", "CA01"]
    assert sids(CallFilter(direction="outbound-api")) == ["CA03"]
    since = datetime.fromtimestamp(T0 + day, UTC)
    until = datetime.fromtimestamp(T0 + 3 * day, UTC)
    assert sids(CallFilter(since=since, until=until)) == ["CA03", "CA02"]
    assert [d["call_sid"] for d in db.find_calls(limit=2)] == ["CA04", "CA03"]
    assert [d["call_sid"] for d in db.iter_calls(batch=1)] == ["CA01", "CA02", "CA03", "CA04"]
    totals = db.totals()
    assert totals.count == 4
    assert totals.duration_s == pytest.approx(42.5 * 3 + 120.0)
    known = [d["cost_usd"] for d in db.find_calls() if d["cost_usd"] is not None]
    assert len(known) == 3
    assert totals.cost_usd == pytest.approx(sum(known))
    assert totals.cost_unknown == 4  # the unknown model, and no transcription price on any of them
    assert db.totals(CallFilter(agent="sales")).count == 2


def test_a_write_retried_after_an_ambiguous_failure_inserts_once(store: RecordStore) -> None:
    doc = record_to_json(make_record(), T0, T0 + 1, record_id="f" * 32)
    assert store.db.insert_calls([doc], "test") == 1
    assert store.db.insert_calls([doc], "test") == 0
    assert store.db.count_calls() == 1


def test_records_survive_the_store(url: str) -> None:
    with fast_store(url) as first:
        first.put(make_record("CA-A"), T0, T0 + 1)
    with fast_store(url) as second:
        assert second.db.get_call("CA-A") is not None


def test_no_transcript_in_logs_below_warning(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # sqlalchemy.engine logs its statements at INFO: parameters hidden
    caplog.set_level(logging.DEBUG, logger="service.records")
    store = fast_store(url)
    store.put(make_record(), T0, T0 + 1)
    assert store.flush()
    store.close()
    assert caplog.records  # something was logged (the migrations at least)...
    assert not [r for r in caplog.records if SECRET_WORDS in r.getMessage()]  # ...never the words


# --- an outage ------------------------------------------------------------------------------------


def test_put_never_waits_while_the_database_is_down(tmp_path: Path) -> None:
    store, lock = locked_store(tmp_path)
    record = make_record()
    try:
        store.put(record, T0, T0 + 1)
        wait_for(lambda: store.stats().outage)
        times = []
        for _ in range(2000):
            started = time.perf_counter()
            assert store.put(record, T0, T0 + 1)
            times.append(time.perf_counter() - started)
        times.sort()
        # O(1) and non-blocking: a deque append under a lock; a blocking write would take the busy timeout.
        assert times[len(times) // 2] < 0.0005, times[len(times) // 2]
        assert times[int(len(times) * 0.99)] < 0.005, times[int(len(times) * 0.99)]
        assert store.stats().outage
        assert store.db.count_calls() == 0  # readers still read (WAL): nothing written
    finally:
        lock.release()
    assert store.flush(30)
    assert store.db.count_calls() == 2001
    assert not store.stats().outage
    store.close()


def test_an_outage_warns_once_and_the_held_records_are_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.records")
    store, lock = locked_store(tmp_path)
    for i in range(5):
        assert store.put(make_record(f"CA{i:02d}"), T0 + i, T0 + i + 1)
    wait_for(lambda: store.stats().outage)
    time.sleep(0.3)  # several retries (backoff 0.02 s to 0.1 s)
    assert store.stats().queued == 5
    lock.release()
    assert store.flush(30)
    assert store.db.count_calls() == 5
    store.close()
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    back = [r for r in caplog.records if "back after" in r.getMessage()]
    assert len(down) == 1 and down[0].levelno == logging.WARNING
    assert len(back) == 1
    assert "database is locked" in down[0].getMessage()
    assert SECRET_WORDS not in down[0].getMessage()


def test_a_full_queue_logs_the_record_it_cannot_keep_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.records")
    store, lock = locked_store(tmp_path, max_queue=3, batch_size=1)
    try:
        results = [store.put(make_record(f"CA{i}"), T0, T0 + 1) for i in range(6)]
        # The writer holds one in its batch; the queue holds three more; the rest do not fit.
        wait_for(lambda: store.stats().outage)
        results += [store.put(make_record(f"CB{i}"), T0, T0 + 1) for i in range(2)]
        assert results.count(False) >= 2
        assert store.stats().queued <= 4
    finally:
        lock.release()
    assert store.flush(30)
    kept = {d["call_sid"] for d in store.db.find_calls()}
    lost = [r for r in caplog.records if r.levelno == logging.ERROR and "not saved" in r.getMessage()]
    assert len(kept) + len(lost) == 8  # every record is in the database or whole in the log
    for record in lost:
        doc = json.loads(record.getMessage().split("the record whole: ", 1)[1])
        assert doc["call_sid"] not in kept
        assert doc["transcript"][1]["text"] == SECRET_WORDS
        assert tuple(doc) == SCHEMA_FIELDS
    assert store.stats().not_kept == len(lost)
    store.close()


def test_close_logs_what_it_could_not_write_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.records")
    store, lock = locked_store(tmp_path)
    try:
        store.put(make_record("CA-X"), T0, T0 + 1)
        store.put(make_record("CA-Y"), T0, T0 + 1)
        wait_for(lambda: store.stats().outage)
        started = time.monotonic()
        assert store.close(timeout_s=0.3) == 2
        assert time.monotonic() - started < 3.0
    finally:
        lock.release()
    lost = [r for r in caplog.records if "not saved" in r.getMessage()]
    assert [json.loads(r.getMessage().split("the record whole: ", 1)[1])["call_sid"] for r in lost] == [
        "CA-X",
        "CA-Y",
    ]
    assert all(r.levelno == logging.ERROR for r in lost)
    assert not store.put(make_record("CA-Z"), T0, T0 + 1)  # closed: logged whole, not kept
    assert store.db.count_calls() == 0


def test_close_writes_what_it_can_when_the_database_comes_back(tmp_path: Path) -> None:
    store, lock = locked_store(tmp_path)
    store.put(make_record("CA-L"), T0, T0 + 1)
    wait_for(lambda: store.stats().outage)
    threading.Timer(0.2, lock.release).start()
    assert store.close(timeout_s=5.0) == 0
    db = Database(sqlite_url(tmp_path))
    assert db.get_call("CA-L") is not None
    db.dispose()


def test_the_store_starts_while_its_database_is_down(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    sqlite3.connect(path).close()
    lock = Lock(path)
    store = RecordStore(
        Database(f"sqlite:///{path}", sqlite_timeout_s=0.05), retry_min_s=0.02, heartbeat_s=None
    )
    try:
        assert store.put(make_record(), T0, T0 + 1)
        assert not store.wait_ready(0.3)  # migrations wait for the database too
    finally:
        lock.release()
    assert store.wait_ready(10)
    assert store.flush(10)
    assert store.db.count_calls() == 1
    store.close()


# --- configuration --------------------------------------------------------------------------------


def test_database_urls() -> None:
    assert parse_url("postgresql://u:pw@db/x").drivername == "postgresql+psycopg"
    assert parse_url("postgres://u@db/x").drivername == "postgresql+psycopg"
    assert parse_url("sqlite:///dialtone.db").database == "dialtone.db"
    assert safe_url("postgresql://u:hunter2@db/x") == "postgresql://u:***@db/x"
    with pytest.raises(RecordsConfigError, match="not a database URL"):
        parse_url("dialtone.db")
    with pytest.raises(RecordsConfigError, match="unsupported database 'mysql'"):
        parse_url("mysql://u@db/x")
    with pytest.raises(RecordsConfigError, match="no directory"):
        Database("sqlite:////no/such/dir/calls.db")


def test_database_url_from_env_then_dotenv_then_default(tmp_path: Path) -> None:
    assert database_url({"DATABASE_URL": "sqlite:///a.db"}, tmp_path) == "sqlite:///a.db"
    assert database_url({}, tmp_path) == "sqlite:///dialtone.db"
    (tmp_path / ".env").write_text("OPENAI_API_KEY=x\nDATABASE_URL=sqlite:///b.db\n", encoding="utf-8")
    assert database_url({}, tmp_path) == "sqlite:///b.db"


def test_errors_never_show_the_statement_parameters(url: str) -> None:
    db = Database(url)
    db.migrate()
    doc = record_to_json(make_record(), T0, T0 + 1, record_id="r1")
    lock = Lock(Path(url.removeprefix("sqlite:///")))
    db_fast = Database(url, sqlite_timeout_s=0.05)
    with pytest.raises(Exception) as caught:
        db_fast.insert_calls([doc], "test")
    lock.release()
    assert describe_error(caught.value) == "OperationalError: database is locked"
    assert SECRET_WORDS not in str(caught.value)


def test_pricing_from_env() -> None:
    pricing = pricing_from_env(
        {
            "TWILIO_PRICE_PER_MINUTE": "0.0085",
            "TRANSCRIPTION_PRICES": "gpt-4o-mini-transcribe=3/1M, w=0.006/min",
        }
    )
    assert pricing.twilio_per_minute == 0.0085
    assert pricing.table.transcription["gpt-4o-mini-transcribe"].per_million_tokens == 3.0
    assert pricing.table.transcription["w"].per_minute == 0.006
    assert pricing.table.transcription["gpt-realtime-whisper"].per_minute == 0.017
    assert pricing_from_env({}) == Pricing()
    with pytest.raises(RecordsConfigError) as caught:
        pricing_from_env({"TWILIO_PRICE_PER_MINUTE": "cheap", "TRANSCRIPTION_PRICES": "x=1/hour"})
    assert "TWILIO_PRICE_PER_MINUTE" in str(caught.value) and "TRANSCRIPTION_PRICES" in str(caught.value)


# --- the command line -----------------------------------------------------------------------------


def run_cli(*argv: str, url: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), env={"DATABASE_URL": url}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def filled(store: RecordStore, url: str) -> str:
    store.put(make_record("CA01", agent="sales"), T0, T0 + 42.5)
    store.put(make_record("CA02", caller="+15559999999"), T0 + 86_400, T0 + 86_400 + 42.5)
    assert store.flush()
    return url


def test_cli_list_with_filters_and_totals(filled: str) -> None:
    code, out, err = run_cli("calls", url=filled)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("STARTED (UTC)")
    assert "CA02" in lines[1] and "CA01" in lines[2]
    assert lines[-1].startswith("total: 2 calls, 1.4 minutes, $")
    code, out, _ = run_cli("calls", "list", "--agent", "sales", url=filled)
    assert "CA01" in out and "CA02" not in out and "total: 1 call," in out
    code, out, _ = run_cli("calls", "--number", "+15559999999", url=filled)
    assert "CA02" in out and "CA01" not in out
    code, out, _ = run_cli("calls", "--since", "2026-11-21", url=filled)
    assert "CA02" in out and "CA01" not in out
    code, out, _ = run_cli("calls", "--until", "2026-11-20", url=filled)
    assert "CA01" in out and "CA02" not in out
    code, out, _ = run_cli("calls", "--limit", "1", url=filled)
    assert "total: 2 calls (1 shown)" in out


def test_cli_show_prints_the_transcript_and_the_timeline(filled: str, tmp_path: Path) -> None:
    code, out, err = run_cli(
        "calls", "show", "CA01", "--picture", str(tmp_path / "pic" / "call.svg"), url=filled
    )
    assert (code, err) == (0, "")
    assert "[00:03.4] agent   Thank you. Let me read that back to you slowly." in out
    assert '[cut by the caller; heard: "Thank you."]' in out
    assert f"[00:03.1] caller  {SECRET_WORDS}" in out
    assert "[00:05.1] barge_in  heard_ms=1400  truncated=1" in out
    assert "lookup_order  350 ms  ok" in out
    assert "first audio: 700 ms" in out
    assert "picture: " in out
    ET.parse(tmp_path / "pic" / "call.svg")  # well-formed


def test_cli_show_json_prints_the_record(filled: str) -> None:
    code, out, _ = run_cli("calls", "show", "CA01", "--json", url=filled)
    assert code == 0
    doc = json.loads(out)
    assert tuple(doc) == SCHEMA_FIELDS and doc["call_sid"] == "CA01"


def test_cli_export_jsonl_and_csv(filled: str, tmp_path: Path) -> None:
    code, out, _ = run_cli("calls", "export", url=filled)
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [d["call_sid"] for d in docs] == ["CA01", "CA02"]  # oldest first
    target = tmp_path / "out" / "calls.csv"
    code, out, _ = run_cli(
        "calls", "export", "--format", "csv", "--out", str(target), "--agent", "sales", url=filled
    )
    assert (code, out) == (0, "")
    import csv

    rows = list(csv.DictReader(target.open(encoding="utf-8")))
    assert tuple(rows[0]) == CSV_FIELDS
    assert [r["call_sid"] for r in rows] == ["CA01"]
    assert json.loads(rows[0]["transcript"])[1]["text"] == SECRET_WORDS
    assert rows[0]["first_audio_ms"] == "700" and rows[0]["tool_calls"] == "lookup_order:ok"


def test_cli_errors_are_one_line(tmp_path: Path, filled: str) -> None:
    code, out, err = run_cli("calls", "show", "CA404", url=filled)
    assert code == 1 and out == "" and err.startswith("error: no call 'CA404'") and err.count("\n") == 1
    code, _, err = run_cli("calls", url=sqlite_url(tmp_path, "missing.db"))
    assert code == 2 and "no database file at" in err and err.count("\n") == 1
    assert not (tmp_path / "missing.db").exists()  # a look does not create it
    code, _, err = run_cli("calls", url="not a url")
    assert code == 2 and "DATABASE_URL is not a database URL" in err and err.count("\n") == 1
    code, _, err = run_cli("calls", url="postgresql://u:hunter2@127.0.0.1:1/x")
    assert code == 1 and "hunter2" not in err and err.count("\n") == 1
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    code, _, err = run_cli("calls", url=f"sqlite:///{empty}")
    assert code == 1 and "no Dialtone schema" in err


def test_cli_db_upgrade_and_current(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path, "new.db")
    code, out, _ = run_cli("db", "upgrade", url=url)
    assert code == 0 and "schema 0001 (latest 0001)" in out
    code, out, _ = run_cli("db", "current", url=url)
    assert code == 0 and "schema 0001" in out


def test_python_m_service_needs_only_the_database_url(filled: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": filled}  # no Twilio or OpenAI settings
    result = subprocess.run(
        [sys.executable, "-m", "service", "calls", "show", "CA01"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Transcript" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "service", "calls", "show", "CA404"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr


# --- the picture ----------------------------------------------------------------------------------


def test_the_picture_has_lanes_and_markers() -> None:
    doc = record_to_json(make_record(), T0, T0 + 42.5)
    svg = timeline_svg(doc)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for word in ("caller", "agent", "events", "barge-in", "lookup_order 350 ms ok", "reconnect 1200 ms",
                 "rollover", "700 ms", "ended: caller hung up"):  # fmt: skip
        assert word in texts, word
    titles = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}title"))
    assert "heard: Thank you." in titles
    assert "barge-in, 1400 ms heard, 1 truncated" in titles


def test_the_picture_of_an_empty_call() -> None:
    doc = record_to_json(make_record(transcript=(), timeline=(), tool_calls=(), duration_s=0.0), T0, T0)
    ET.fromstring(timeline_svg(doc))


# --- shared state ---------------------------------------------------------------------------------


@pytest.fixture
def two(url: str) -> Iterator[tuple[RecordStore, RecordStore]]:
    a, b = fast_store(url), fast_store(url)
    yield a, b
    a.close()
    b.close()


def test_a_stream_token_is_claimed_once_across_stores(two: tuple[RecordStore, RecordStore]) -> None:
    a, b = two
    now = 1_000.0
    assert a.state.claim_stream_token("CA1", expiry_s=now + 300, now_s=now)
    assert not b.state.claim_stream_token("CA1", expiry_s=now + 300, now_s=now + 1)
    assert not a.state.claim_stream_token("CA1", expiry_s=now + 300, now_s=now + 299)
    assert b.state.claim_stream_token("CA1", expiry_s=now + 900, now_s=now + 300)  # expired: claimable
    assert not a.state.claim_stream_token("CA1", expiry_s=now + 900, now_s=now + 301)
    assert a.state.claim_stream_token("CA2", expiry_s=now + 300, now_s=now)


def test_racing_claims_across_stores_one_wins(two: tuple[RecordStore, RecordStore]) -> None:
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim(store: RecordStore) -> None:
        barrier.wait()
        wins.append(store.state.claim_stream_token("CA-RACE", expiry_s=time.time() + 60))

    threads = [threading.Thread(target=claim, args=(two[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1


CLAIMER = """
import sys, time
from service.records import Database
from service.records.state import SharedState
state = SharedState(Database(sys.argv[1]), sys.argv[2])
print(sum(state.claim_stream_token(f"CA{i}", time.time() + 60) for i in range(40)))
"""


def test_racing_claims_across_processes_one_wins_each(url: str) -> None:
    Database(url).migrate()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, f"p{i}"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for i in range(3)
    ]
    wins = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(wins) == 40  # each of the 40 CallSids claimed exactly once


def test_decisions_with_expiry(two: tuple[RecordStore, RecordStore]) -> None:
    a, b = two
    now = 5_000.0
    a.state.put_decision("CA1", {"action": "transfer", "to": "+15550000000"}, ttl_s=60, now_s=now)
    assert b.state.get_decision("CA1", now_s=now + 1) == {"action": "transfer", "to": "+15550000000"}
    assert b.state.get_decision("CA1", now_s=now + 60) is None  # expired
    assert b.state.get_decision("CA404", now_s=now) is None
    a.state.put_decision("CA1", {"action": "hangup"}, ttl_s=60, now_s=now + 10)  # replaced
    assert b.state.take_decision("CA1", now_s=now + 11) == {"action": "hangup"}
    assert a.state.take_decision("CA1", now_s=now + 11) is None  # taken once
    a.state.put_decision("CA2", {"action": "hangup"}, ttl_s=1, now_s=now)
    assert a.state.take_decision("CA2", now_s=now + 2) is None  # expired: not handed out


def test_live_calls_across_instances(two: tuple[RecordStore, RecordStore]) -> None:
    a, b = two
    now = 10_000.0
    assert a.state.try_start_call(3, now_s=now)
    assert a.state.try_start_call(3, now_s=now)
    assert b.state.try_start_call(3, now_s=now)
    assert not b.state.try_start_call(3, now_s=now)  # 3 live in all
    assert a.state.live_calls(now_s=now) == 3
    assert b.state.instances(now_s=now) == {a.instance: 2, b.instance: 1}
    a.state.end_call(now_s=now + 1)
    assert b.state.try_start_call(3, now_s=now + 1)
    assert b.state.local_live_calls == 2
    # a stops heartbeating: after stale_s its calls no longer count
    b.state.heartbeat(now_s=now + 40)
    assert b.state.live_calls(now_s=now + 40, stale_s=30) == 2
    assert b.state.try_start_call(3, now_s=now + 40, stale_s=30)
    a.state.heartbeat(live_calls=0, now_s=now + 41)  # a's own count, as it knows it
    assert a.state.live_calls(now_s=now + 41) == 3
    a.state.leave()
    assert a.instance not in b.state.instances(now_s=now + 41)
    assert b.state.try_start_call(None, now_s=now + 42)  # no limit


def test_racing_starts_never_exceed_the_limit(two: tuple[RecordStore, RecordStore]) -> None:
    started: list[bool] = []
    barrier = threading.Barrier(10)

    def start(store: RecordStore) -> None:
        barrier.wait()
        started.append(store.state.try_start_call(4))

    threads = [threading.Thread(target=start, args=(two[i % 2],)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert started.count(True) == 4
    assert two[0].state.live_calls() == 4


def test_the_writer_heartbeats_and_prunes(url: str) -> None:
    store = fast_store(url, heartbeat_s=0.05)
    store.state.claim_stream_token("CA-OLD", expiry_s=1.0, now_s=0.0)
    wait_for(lambda: store.instance in store.state.instances())
    assert store.state.prune() == 1  # the expired token
    store.close()
    reader = Database(url)
    from service.records.state import SharedState

    assert SharedState(reader, "reader").instances() == {}  # a clean close leaves
    reader.dispose()


def test_shared_state_raises_one_line_when_the_database_is_down(tmp_path: Path) -> None:
    store, lock = locked_store(tmp_path)
    try:
        with pytest.raises(
            StateUnavailable, match="cannot claim a stream token: OperationalError: database is"
        ):
            store.state.claim_stream_token("CA1", time.time() + 60)
        store.state.end_call()  # never raises
    finally:
        lock.release()
        store.close()
