"""The call records' store: what ``put`` costs the call path, and how many records a second get written.

    .venv/bin/python -m bench.records [--records 2000] [--pg URL | --no-pg]     # ~30 s

1. ``put``: the time of one ``store.put(record, …)`` (the call path's whole cost), the database up, then
   down (SQLite's write lock held by another connection: every write fails "database is locked").
2. Throughput: N records put at once, the time until all are written (``flush``): records/s, for a SQLite
   file and PostgreSQL (``--pg URL``, else ``DATABASE_URL_PG``, else a throwaway server from the system's
   binaries if there are any), with batches of 100 (the default) and of 1 (a transaction per record).
3. The event loop while the writer works: an asyncio loop ticking every 1 ms while 500 records are put
   from it and written by the writer thread; the worst and p99 lateness of a tick (the GIL the writer
   holds while it shapes records and builds statements).

The record is a 3-minute call's: 40 turns of ~120 characters, 120 timeline events, 3 tool calls.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from service.core.record import CallRecord, TimelineEvent, ToolCallRecord, TurnRecord
from service.records import Database, RecordStore
from service.records.pgserver import PostgresUnavailable, TempPostgres
from service.wire.realtime import Usage

T0 = 1_800_000_000.0


def typical_record(i: int) -> CallRecord:
    cut = {n for n in range(40) if n % 7 == 3}
    turns = tuple(
        TurnRecord(
            "caller" if n % 2 else "agent",
            f"turn {n} of call {i}: " + "words " * 20,
            n * 4.5,
            n in cut,
            "words words" if n in cut else None,
        )
        for n in range(40)
    )
    kinds = ("caller_started", "caller_stopped", "agent_heard")
    timeline = tuple(
        TimelineEvent(n * 1.5, kinds[n % 3], {"latency_ms": 650} if n % 3 == 2 else {}) for n in range(120)
    )
    return CallRecord(
        call_sid=f"CA{i:032d}",
        direction="inbound",
        caller="+15550001111",
        called="+15551230001",
        agent="default",
        model="gpt-realtime-2.1",
        duration_s=180.0,
        end_reason="caller hung up",
        transcript=turns,
        timeline=timeline,
        tool_calls=tuple(ToolCallRecord("lookup", f"call_{n}", n * 30.0, 240, "ok") for n in range(3)),
        barge_ins=5,
        reconnect_ms=(),
        rollovers=0,
        first_audio_ms=tuple(650 + n for n in range(20)),
        usage=Usage(60_000, 9_000, 12_000, 48_000, 40_000, 2_000, 7_000),
        transcription_seconds=90.0,
        transcription_tokens=0,
        summary={"call_sid": f"CA{i:032d}", "turns": 40},
    )


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


def bench_put(folder: Path, n: int) -> None:
    path = folder / "put.db"
    db = Database(f"sqlite:///{path}", sqlite_timeout_s=0.05)
    store = RecordStore(db, heartbeat_s=None, max_queue=n * 3)
    store.wait_ready(10)
    records = [typical_record(i) for i in range(n)]
    for label in ("database up", "database down"):
        lock = None
        if label == "database down":
            lock = sqlite3.connect(path, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
        times = []
        for record in records:
            started = time.perf_counter_ns()
            store.put(record, T0, T0 + 180)
            times.append((time.perf_counter_ns() - started) / 1000)
        median, p99, worst = statistics.median(times), quantile(times, 0.99), max(times)
        print(
            f"  put, {label:13}: median {median:6.1f} µs  p99 {p99:7.1f} µs  max {worst:8.1f} µs  ({n} puts)"
        )
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()
        store.flush(120)
    store.close()


def bench_throughput(url: str, label: str, n: int, batch_size: int) -> None:
    store = RecordStore(url, heartbeat_s=None, batch_size=batch_size, max_queue=n)
    store.wait_ready(30)
    records = [typical_record(i) for i in range(n)]
    started = time.perf_counter()
    for record in records:
        store.put(record, T0, T0 + 180)
    put_s = time.perf_counter() - started
    assert store.flush(600), "not flushed"
    total_s = time.perf_counter() - started
    written = store.stats().written
    store.close()
    rate = written / total_s
    print(
        f"  {label:10} batch {batch_size:3}: {rate:7.0f} records/s  ({written} in {total_s:.2f} s;"
        f" the puts took {put_s * 1000:.0f} ms)"
    )


async def loop_lag(url: str, n: int) -> None:
    store = RecordStore(url, heartbeat_s=None, max_queue=n)
    store.wait_ready(30)
    records = [typical_record(i) for i in range(n)]
    lags: list[float] = []
    stop = False

    async def ticker() -> None:
        while not stop:
            due = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            lags.append(max(time.perf_counter() - due, 0.0) * 1000)

    baseline_task = asyncio.create_task(ticker())
    await asyncio.sleep(1.0)
    baseline = list(lags)
    lags.clear()
    for record in records:
        store.put(record, T0, T0 + 180)
        await asyncio.sleep(0)
    await asyncio.to_thread(store.flush, 120)
    stop = True
    await baseline_task
    store.close()
    for label, values in (("idle", baseline), ("writer busy", lags)):
        p99, worst = quantile(values, 0.99), max(values)
        print(f"  tick lateness, {label:12}: p99 {p99:5.2f} ms  max {worst:5.2f} ms  ({len(values)} ticks)")
    print(f"  ({n} records put and written while busy)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--pg", help="a PostgreSQL URL (default: DATABASE_URL_PG, else a throwaway server)")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    n = args.records
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("1. put() on the call path")
        bench_put(folder, n)
        print("2. records written per second")
        targets: list[tuple[str, str]] = [("sqlite", f"sqlite:///{folder / 'throughput.db'}")]
        server = None
        if not args.no_pg:
            pg_url = args.pg or os.environ.get("DATABASE_URL_PG")
            if not pg_url:
                try:
                    server = TempPostgres()
                    pg_url = server.url
                except PostgresUnavailable as exc:
                    print(f"  (no PostgreSQL: {exc})")
            if pg_url:
                targets.append(("postgresql", pg_url))
        try:
            for label, url in targets:
                for batch_size in (100, 1):
                    db = Database(url)
                    db.migrate()
                    with db.write() as conn:
                        conn.exec_driver_sql("DELETE FROM calls")
                    db.dispose()
                    bench_throughput(url, label, n if batch_size > 1 else min(n, 500), batch_size)
            print("3. the event loop while the writer writes (SQLite)")
            asyncio.run(loop_lag(f"sqlite:///{folder / 'lag.db'}", min(n, 500)))
        finally:
            if server is not None:
                server.close()


if __name__ == "__main__":
    main()
