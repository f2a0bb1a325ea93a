"""The call records' store: ``put`` never waits; a writer thread saves, and outlives database outages.

    store = RecordStore(os.environ.get("DATABASE_URL", DEFAULT_URL), pricing=pricing_from_env(os.environ))
    ...
    store.put(call.record(now), started_at=wall_start, ended_at=wall_end,   # O(1), never blocks, never
              transcription_model=agent.transcription_model)                 # raises on a database error
    ...
    store.close()          # at shutdown: writes what it can within the timeout, logs the rest whole

Why a thread (not asyncio): the drivers (sqlite3, psycopg, SQLAlchemy's engine) are blocking, and an
async stack would add drivers and still push SQLite into a thread pool. One daemon thread per process
does all the database work (migrations, inserts, the shared-state heartbeat); the event loop only
appends to a deque under a lock held for a few instructions. The writer needs the GIL to shape a record
and bind it (about 0.4 + 0.15 ms per record, bench/records.py) and hands it over after each record, so
the event loop waits at most about one switch interval (5 ms) while records are being written, and a
call ends only once.

``put`` enqueues the record as it is (pure, frozen data); the writer prices it, shapes it
(``record_to_json``) and inserts records in batches (one transaction each). When the database fails
with a transient error (down, locked, unreachable) the batch is kept and retried with exponential
backoff (``retry_min_s`` doubling to ``retry_max_s``); one WARNING when an outage starts, one when it
ends. The queue is bounded (``max_queue`` records; a 3-minute call's record takes about 40 KB in memory,
so the default 5,000 is some 200 MB at most, and 15 minutes of outage at 1,000 concurrent calls): a
record that does not fit is logged whole as JSON at ERROR, as is every record still unsaved when
``close`` gives up, and a record the database refuses for good (not transient). Those are the only
places a transcript is logged.

Migrations (``alembic upgrade head``) run in the writer first, so a store starts even while its
database is down; ``wait_ready`` waits for them. With several worker processes, make one store per
process after the fork (an engine is not fork-safe); migrating concurrently is safe (serialised).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL
from sqlalchemy.exc import SQLAlchemyError

from service.core.analysis import AnalysisResult
from service.core.record import CallRecord
from service.records.db import Database, describe_error, is_transient
from service.records.errors import RecordsError, StateUnavailable
from service.records.pricing import Pricing
from service.records.shape import record_to_json
from service.records.state import SharedState

__all__ = ["RecordStore", "StoreStats", "instance_id"]

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0


def instance_id() -> str:
    """``host:pid:random``: this process, distinguishable from any other writer of the database."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class _Item:
    record_id: str
    record: CallRecord
    started_at: float
    ended_at: float
    transcription_model: str | None
    analysis: AnalysisResult | None = None


@dataclass(frozen=True, slots=True)
class StoreStats:
    queued: int
    """Records waiting in memory (the queue and the batch being written)."""
    written: int
    not_kept: int
    """Records logged whole instead (queue full, refused, or unsaved at close)."""
    outage: bool
    ready: bool
    """Migrations done."""


class RecordStore:
    """Call records to the database, off the call path; the shared state (``.state``) on the same one."""

    def __init__(
        self,
        url: str | URL | Database,
        *,
        pricing: Pricing | None = None,
        max_queue: int = 5_000,
        batch_size: int = 100,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        heartbeat_s: float | None = 10.0,
        instance: str | None = None,
        migrate: bool = True,
        live_calls: Callable[[], int] | None = None,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")
        self.db = url if isinstance(url, Database) else Database(url)
        self.pricing = pricing or Pricing()
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.heartbeat_s = heartbeat_s
        self.instance = instance or instance_id()
        self.state = SharedState(self.db, self.instance)
        self._live_calls = live_calls  # what each heartbeat reports (default: the state's own count)
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[_Item] = deque()
        self._batch: list[dict[str, Any]] = []
        self._in_hand = 0
        self._closing = False
        self._closed = False
        self._deadline = float("inf")
        self._wake = threading.Event()
        self._ready = threading.Event()
        if not migrate:
            self._ready.set()
        self._need_migrate = migrate
        self._outage_since: float | None = None
        self._written = 0
        self._not_kept = 0
        self._thread = threading.Thread(target=self._run, name="records-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"RecordStore({self.db.name!r}, instance={self.instance!r})"

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- the call path ----------------------------------------------------------------------------

    def put(
        self,
        record: CallRecord,
        started_at: float,
        ended_at: float,
        *,
        transcription_model: str | None = None,
        analysis: AnalysisResult | None = None,
    ) -> bool:
        """Queue a call's record (wall-clock epoch seconds). O(1), never blocks on the database.
        ``analysis``: the post-call analysis, when the agent has one (kept in the record, priced).

        False when it could not be kept (the queue is full, or the store is closed): it was logged whole.
        """
        item = _Item(uuid.uuid4().hex, record, started_at, ended_at, transcription_model, analysis)
        with self._cond:
            if not self._closing and len(self._items) < self.max_queue:
                self._items.append(item)
                self._cond.notify()
                return True
            reason = (
                "the store is closed" if self._closing else f"the queue is full ({self.max_queue} records)"
            )
        doc = self._shape(item)
        self._give_up([doc] if doc is not None else [], reason)
        return False

    # --- control ----------------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait for the migrations (True when done)."""
        return self._ready.wait(timeout_s)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued record is written (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._items or self._batch or self._in_hand:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def stats(self) -> StoreStats:
        with self._cond:
            return StoreStats(
                queued=len(self._items) + len(self._batch) + self._in_hand,
                written=self._written,
                not_kept=self._not_kept,
                outage=self._outage_since is not None,
                ready=self._ready.is_set(),
            )

    def close(self, timeout_s: float = 5.0) -> int:
        """Write what can be written within ``timeout_s``, log the rest whole (ERROR). Records not kept."""
        with self._cond:
            if self._closed:
                return 0
            not_kept_before = self._not_kept
            self._closed = self._closing = True
            self._deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._wake.set()
        atexit.unregister(self.close)
        self._thread.join(timeout_s + 1.0)
        if self._thread.is_alive():  # stuck in a database call: what it holds is logged (maybe also saved)
            with self._cond:
                items, batch = list(self._items), list(self._batch)
                self._items.clear()
            left = batch + [doc for i in items if (doc := self._shape(i)) is not None]
            self._give_up(left, "the database did not answer before shutdown")
        elif self._outage_since is None:
            with contextlib.suppress(StateUnavailable):
                self.state.leave()
        self.db.dispose()
        return self._not_kept - not_kept_before

    # --- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.retry_min_s
        next_heartbeat = time.monotonic()
        next_prune = time.monotonic() + PRUNE_EVERY_S
        while True:
            self._take(next_heartbeat if self.heartbeat_s else None)
            if self._closing and time.monotonic() >= self._deadline:
                break
            try:
                if self._need_migrate:
                    self.db.migrate()
                    self._need_migrate = False
                self._ready.set()
                if self._batch:
                    self._write_batch()
                now = time.monotonic()
                if self.heartbeat_s and now >= next_heartbeat and not self._closing:
                    self.state.heartbeat(self._live_calls() if self._live_calls is not None else None)
                    next_heartbeat = now + self.heartbeat_s
                    if now >= next_prune:
                        self.state.prune()
                        next_prune = now + PRUNE_EVERY_S
                self._back()
                delay = self.retry_min_s
            except (SQLAlchemyError, RecordsError) as exc:
                self._down(exc)
                wait = delay
                if self._closing:
                    wait = min(wait, max(self._deadline - time.monotonic(), 0.0))
                if self._wake.wait(wait):
                    self._wake.clear()  # the close's wake-up: one prompt attempt, then the backoff again
                delay = min(delay * 2, self.retry_max_s)
                continue
            except Exception:  # a bug must not stop the writer: the records stay queued
                log.exception("records: writer error")
                self._wake.wait(self.retry_max_s)
                self._wake.clear()
                continue
            with self._cond:
                if self._closing and not self._items and not self._batch:
                    break
        with self._cond:
            items, batch = list(self._items), list(self._batch)
            self._batch.clear()
            self._items.clear()
            self._cond.notify_all()
        left = batch + [doc for i in items if (doc := self._shape(i)) is not None]
        if left:
            self._give_up(left, "the database is still unavailable at shutdown")

    def _take(self, heartbeat_at: float | None) -> None:
        """Fill the batch from the queue, waiting for a record, the heartbeat or the close."""
        with self._cond:
            while not self._batch and not self._items and not self._closing and not self._need_migrate:
                if heartbeat_at is None:
                    self._cond.wait()
                    continue
                remaining = heartbeat_at - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)
            take = [
                self._items.popleft()
                for _ in range(min(self.batch_size - len(self._batch), len(self._items)))
            ]
            self._in_hand = len(take)
        shaped: list[dict[str, Any]] = []
        for item in take:  # outside the lock; the GIL handed over after each record (the loop waits for it)
            doc = self._shape(item)
            if doc is not None:
                shaped.append(doc)
            time.sleep(0)
        with self._cond:
            self._batch.extend(shaped)
            self._in_hand = 0

    def _write_batch(self) -> None:
        try:
            self.db.insert_calls(self._batch, self.instance)
            written = len(self._batch)
        except SQLAlchemyError as exc:
            if is_transient(exc):
                raise
            written = self._write_one_by_one()
        with self._cond:
            self._written += written
            self._batch.clear()
            self._cond.notify_all()

    def _write_one_by_one(self) -> int:
        """A batch refused for good: find the records the database refuses, and log those whole."""
        written = 0
        for doc in list(self._batch):
            try:
                self.db.insert_calls([doc], self.instance)
                written += 1
            except SQLAlchemyError as exc:
                if is_transient(exc):
                    raise
                self._give_up([doc], f"the database refused it: {describe_error(exc)}")
        return written

    def _down(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "records: database %s unavailable (%s): records held in memory (%d, at most %d); retrying",
                self.db.name,
                describe_error(exc),
                self.stats().queued,
                self.max_queue,
            )

    def _back(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "records: database %s back after %.1f s; held records written (%d in all so far)",
                self.db.name,
                time.monotonic() - self._outage_since,
                self._written,
            )
            self._outage_since = None

    # --- records that cannot be kept --------------------------------------------------------------

    def _shape(self, item: _Item) -> dict[str, Any] | None:
        """The record's document; None (the record logged as it is, at ERROR) if it cannot be shaped."""
        try:
            return record_to_json(
                item.record,
                item.started_at,
                item.ended_at,
                cost=self.pricing.cost(item.record, item.transcription_model, item.analysis),
                record_id=item.record_id,
                transcription_model=item.transcription_model,
                analysis=item.analysis,
                analysis_price=self.pricing.analysis_cost(item.analysis),
            )
        except Exception:
            log.exception(
                "records: call %s could not be shaped; the record whole: %r", item.record.call_sid, item
            )
            with self._cond:
                self._not_kept += 1
            return None

    def _give_up(self, docs: list[dict[str, Any]], reason: str) -> None:
        for doc in docs:
            log.error(
                "records: call %s not saved (%s); the record whole: %s",
                doc.get("call_sid"),
                reason,
                json.dumps(doc, ensure_ascii=False, separators=(",", ":")),
            )
        with self._cond:
            self._not_kept += len(docs)
