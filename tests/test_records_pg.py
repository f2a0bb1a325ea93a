"""The call records and the shared state on a real PostgreSQL server.

Where the server comes from, in order:

1. ``DATABASE_URL_PG``: a server you run (``.ci/postgres.sh`` starts one and prints this variable). The
   tests make a database of their own on it (``CREATE DATABASE dialtone_test_<random>``, dropped at the
   end): the role needs CREATEDB; nothing else on the server is touched;
2. else a throwaway server these tests start from the system's binaries (``apt-get install postgresql``).

The outage test always uses a throwaway server (it stops it and starts it again). Without PostgreSQL the
tests skip, saying why; under CI (``CI`` set) they fail instead: there they must run.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from test_records import SECRET_WORDS, T0, make_record, migrate_at_once, wait_for

from service.records import CallFilter, Database, RecordStore, StateUnavailable, record_to_json
from service.records.cli import main
from service.records.db import parse_url
from service.records.models import metadata
from service.records.pgserver import PostgresUnavailable, TempPostgres

IN_CI = bool(os.environ.get("CI"))
HOW = 'set DATABASE_URL_PG (e.g. `eval "$(bash .ci/postgres.sh)"`) or `apt-get install postgresql`'


def unavailable(why: str) -> None:
    message = f"PostgreSQL tests need a server: {why}; {HOW}"
    if IN_CI:
        pytest.fail(message + " (CI must run them)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def server() -> Iterator[TempPostgres]:
    try:
        pg = TempPostgres()
    except PostgresUnavailable as exc:
        unavailable(str(exc))
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database on DATABASE_URL_PG's server, else on a throwaway server."""
    given = os.environ.get("DATABASE_URL_PG", "").strip()
    if not given:
        yield request.getfixturevalue("server").url
        return
    admin = create_engine(parse_url(given), isolation_level="AUTOCOMMIT")
    name = f"dialtone_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        unavailable(f"DATABASE_URL_PG: cannot create a test database ({type(exc).__name__}: {exc})")
    yield parse_url(given).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def fresh(pg_url: str) -> Iterator[str]:
    """The module's database, emptied of our tables before each test."""
    engine = create_engine(parse_url(pg_url))
    with engine.begin() as conn:
        for table in ("calls", "stream_tokens", "call_decisions", "instances", "alembic_version"):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()
    return pg_url


def pg_store(url: str, **options: Any) -> RecordStore:
    options.setdefault("retry_min_s", 0.05)
    options.setdefault("retry_max_s", 0.2)
    options.setdefault("heartbeat_s", None)
    store = RecordStore(url, **options)
    assert store.wait_ready(30)
    return store


def test_migrations_on_postgresql(fresh: str) -> None:
    db = Database(fresh)
    assert db.backend == "postgresql" and db.url.drivername == "postgresql+psycopg"
    db.migrate()
    db.migrate()
    assert db.revision() == "0001"
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        kinds = dict(
            conn.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'calls'"
                )
            ).all()
        )
    assert kinds["transcript"] == "jsonb"
    assert kinds["started_at"] == "timestamp with time zone"
    db.dispose()


def test_concurrent_migrations_are_serialised(fresh: str) -> None:
    databases = [Database(fresh) for _ in range(4)]
    assert migrate_at_once(databases) == []
    for db in databases:
        db.dispose()


def test_round_trip_filters_and_totals(fresh: str) -> None:
    with pg_store(fresh) as store:
        record = make_record("CA01", agent="sales")
        store.put(record, T0, T0 + 42.5)
        store.put(make_record("CA02", caller="+15559999999"), T0 + 86_400, T0 + 86_400)
        assert store.flush(30)
        doc = store.db.get_call("CA01")
        assert doc is not None
        assert doc == record_to_json(
            record, T0, T0 + 42.5, cost=store.pricing.cost(record), record_id=doc["id"]
        )
        assert [d["call_sid"] for d in store.db.find_calls(CallFilter(number="+15559999999"))] == ["CA02"]
        assert [d["call_sid"] for d in store.db.find_calls(CallFilter(agent="sales"))] == ["CA01"]
        totals = store.db.totals()
        assert totals.count == 2 and totals.duration_s == pytest.approx(85.0)


def test_cli_on_postgresql(fresh: str) -> None:
    with pg_store(fresh) as store:
        store.put(make_record("CA01"), T0, T0 + 42.5)
        assert store.flush(30)
    out, err = io.StringIO(), io.StringIO()
    assert main(["calls", "show", "CA01", "--json"], env={"DATABASE_URL": fresh}, stdout=out, stderr=err) == 0
    assert json.loads(out.getvalue())["transcript"][1]["text"] == SECRET_WORDS
    out = io.StringIO()
    assert (
        main(["calls", "export", "--format", "csv"], env={"DATABASE_URL": fresh}, stdout=out, stderr=err) == 0
    )
    assert out.getvalue().count("\n") == 2


def test_a_record_the_database_refuses_is_logged_whole_and_the_rest_written(
    fresh: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="service.records")
    with pg_store(fresh, batch_size=10) as store:
        store.put(make_record("CA-OK-1"), T0, T0 + 1)
        store.put(make_record("CA" + "9" * 80), T0, T0 + 1)  # longer than the column: refused for good
        store.put(make_record("CA-OK-2"), T0, T0 + 1)
        assert store.flush(30)
        assert {d["call_sid"] for d in store.db.find_calls()} == {"CA-OK-1", "CA-OK-2"}
    [refused] = [r for r in caplog.records if "not saved" in r.getMessage()]
    assert "StringDataRightTruncation" in refused.getMessage()
    assert json.loads(refused.getMessage().split("the record whole: ", 1)[1])["call_sid"] == "CA" + "9" * 80


def test_shared_state_across_stores(fresh: str) -> None:
    a, b = pg_store(fresh), pg_store(fresh)
    try:
        now = 1_000.0
        assert a.state.claim_stream_token("CA1", now + 300, now_s=now)
        assert not b.state.claim_stream_token("CA1", now + 300, now_s=now + 1)
        assert b.state.claim_stream_token("CA1", now + 900, now_s=now + 300)
        a.state.put_decision("CA1", {"action": "transfer", "to": "+15550000000"}, ttl_s=60, now_s=now)
        assert b.state.get_decision("CA1", now_s=now + 1) == {"action": "transfer", "to": "+15550000000"}
        assert b.state.get_decision("CA1", now_s=now + 61) is None
        assert b.state.take_decision("CA1", now_s=now + 2) is not None
        assert a.state.take_decision("CA1", now_s=now + 2) is None
        assert a.state.try_start_call(2, now_s=now)
        assert b.state.try_start_call(2, now_s=now)
        assert not a.state.try_start_call(2, now_s=now)
        assert a.state.live_calls(now_s=now) == 2
        b.state.end_call(now_s=now)
        assert a.state.try_start_call(2, now_s=now)
    finally:
        a.close()
        b.close()


def test_racing_claims_and_starts(fresh: str) -> None:
    stores = [pg_store(fresh), pg_store(fresh)]
    claims: list[bool] = []
    starts: list[bool] = []
    barrier = threading.Barrier(12)

    def race(store: RecordStore) -> None:
        barrier.wait()
        claims.append(store.state.claim_stream_token("CA-RACE", time.time() + 60))
        starts.append(store.state.try_start_call(5))

    threads = [threading.Thread(target=race, args=(stores[i % 2],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert claims.count(True) == 1
        assert starts.count(True) == 5
        assert stores[0].state.live_calls() == 5
    finally:
        for store in stores:
            store.close()


def test_a_stopped_server_loses_no_record(server: TempPostgres, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.records")
    engine = create_engine(parse_url(server.url))
    with engine.begin() as conn:
        for table in ("calls", "stream_tokens", "call_decisions", "instances", "alembic_version"):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()
    store = pg_store(server.url)
    store.put(make_record("CA-BEFORE"), T0, T0 + 1)
    assert store.flush(30)
    server.stop()
    try:
        times = []
        for i in range(200):
            started = time.perf_counter()
            assert store.put(make_record(f"CA-DOWN-{i}"), T0, T0 + 1)
            times.append(time.perf_counter() - started)
        # Never waits for the server (a connect attempt would, every time). The median, not the worst: one
        # put in 200 may meet a garbage collection of the whole test process (seen: 0.3 s in CI).
        assert sorted(times)[len(times) // 2] < 0.005
        wait_for(lambda: store.stats().outage, 30)
        with pytest.raises(StateUnavailable):
            store.state.claim_stream_token("CA-X", time.time() + 60)
        time.sleep(0.5)  # retries with backoff
    finally:
        server.start()
    assert store.flush(60)
    assert store.db.count_calls() == 201
    assert not store.stats().outage
    store.close()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "unavailable" in m]) == 1
    assert len([m for m in messages if "back after" in m]) == 1
    assert not [m for m in messages if SECRET_WORDS in m]


def test_json_keys_come_back_in_the_document_order(fresh: str) -> None:
    with pg_store(fresh) as store:
        record = make_record("CA01")
        store.put(record, T0, T0 + 1)
        assert store.flush(30)
        doc = store.db.get_call("CA01")
    assert doc is not None
    expected = record_to_json(record, T0, T0 + 1, cost=store.pricing.cost(record), record_id=doc["id"])
    assert doc.pop("summary") == expected.pop("summary")  # free-form: in JSONB's key order
    assert json.dumps(doc) == json.dumps(expected)  # JSONB sorts keys: the reader puts ours back in order
