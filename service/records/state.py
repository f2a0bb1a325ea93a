"""State the service's processes share through the database: a small synchronous API.

Every method is one short transaction; from the event loop call it in a thread
(``await asyncio.to_thread(state.claim_stream_token, sid, expiry_s)``). A database that does not answer
raises :class:`~service.records.errors.StateUnavailable` (one line, no secrets): the caller decides
whether to fail open or closed. Times are epoch seconds (``now_s`` defaults to ``time.time()``): the
wall clock is the one clock that processes and hosts share.

(a) Stream tokens, single use across processes::

    state.claim_stream_token(call_sid, expiry_s)   # True once per CallSid until expiry_s

(b) The call-control decision of a CallSid (what the action URL should do when the stream ends)::

    state.put_decision(call_sid, {"action": "transfer", "to": "+1555…"}, ttl_s=600)
    state.get_decision(call_sid)    # the dict, or None (none, or expired)
    state.take_decision(call_sid)   # the same, and deleted: at most one reader gets it

(c) Live calls across workers and instances (MAX_CALLS)::

    if state.try_start_call(max_calls):   # atomically: live calls everywhere < max_calls, then +1 here
        ...
        state.end_call()                  # -1 here (never raises; the heartbeat repairs a failed one)
    state.heartbeat()                     # every few seconds (RecordStore's writer does it): this
                                          # instance's count, as this process knows it, and "alive"
    state.live_calls()                    # the sum over instances heard from within stale_s

An instance that dies stops counting once its heartbeat is older than ``stale_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from service.records.db import Database, describe_error
from service.records.errors import StateUnavailable
from service.records.models import DecisionRow, InstanceRow, StreamTokenRow
from service.records.shape import plain

__all__ = ["DEFAULT_STALE_S", "SharedState"]

log = logging.getLogger(__name__)

DEFAULT_STALE_S = 30.0
"""An instance not heard from for this long is not counted (heartbeats come every 10 s by default)."""
_PG_CALLS_LOCK = 0x4469616D  # advisory lock key serialising try_start_call on PostgreSQL
_T = TypeVar("_T")


class SharedState:
    def __init__(self, db: Database, instance: str) -> None:
        self.db = db
        self.instance = instance
        self._lock = threading.Lock()
        self._live = 0
        self._started_s = time.time()

    @property
    def local_live_calls(self) -> int:
        """Live calls of this process, as it counts them."""
        return self._live

    # --- (a) stream tokens ----------------------------------------------------------------------

    def claim_stream_token(self, call_sid: str, expiry_s: float, now_s: float | None = None) -> bool:
        """True the first time ``call_sid`` is claimed (anywhere), False while that claim is unexpired."""
        now = _now(now_s)
        values = {
            "call_sid": call_sid,
            "expires_s": float(expiry_s),
            "claimed_s": now,
            "instance": self.instance,
        }
        insert = self._insert()(StreamTokenRow).values(values)
        statement = insert.on_conflict_do_update(
            index_elements=["call_sid"],
            set_={k: insert.excluded[k] for k in ("expires_s", "claimed_s", "instance")},
            where=StreamTokenRow.expires_s <= now,
        ).returning(StreamTokenRow.call_sid)

        def claim(conn: Connection) -> bool:  # a row back: inserted, or an expired claim replaced
            return conn.execute(statement).first() is not None

        return self._run("claim a stream token", claim)

    # --- (b) call decisions ---------------------------------------------------------------------

    def put_decision(
        self, call_sid: str, decision: Mapping[str, Any], ttl_s: float, now_s: float | None = None
    ) -> None:
        """Store (or replace) the decision of ``call_sid`` for ``ttl_s`` seconds."""
        now = _now(now_s)
        values = {
            "call_sid": call_sid,
            "decision": plain(dict(decision)),
            "expires_s": now + ttl_s,
            "updated_s": now,
            "instance": self.instance,
        }
        insert = self._insert()(DecisionRow).values(values)
        statement = insert.on_conflict_do_update(
            index_elements=["call_sid"],
            set_={k: insert.excluded[k] for k in ("decision", "expires_s", "updated_s", "instance")},
        )
        self._run("store a call decision", lambda conn: conn.execute(statement))

    def get_decision(self, call_sid: str, now_s: float | None = None) -> dict[str, Any] | None:
        now = _now(now_s)
        query = select(DecisionRow.decision).where(
            DecisionRow.call_sid == call_sid, DecisionRow.expires_s > now
        )

        def get(conn: Connection) -> dict[str, Any] | None:
            found: dict[str, Any] | None = conn.execute(query).scalar_one_or_none()
            return found

        return self._run("read a call decision", get, write=False)

    def take_decision(self, call_sid: str, now_s: float | None = None) -> dict[str, Any] | None:
        """The unexpired decision of ``call_sid``, deleted as it is read: one reader gets it."""
        now = _now(now_s)
        statement = (
            delete(DecisionRow)
            .where(DecisionRow.call_sid == call_sid)
            .returning(DecisionRow.decision, DecisionRow.expires_s)
        )

        def take(conn: Connection) -> dict[str, Any] | None:
            row = conn.execute(statement).first()
            if row is None or row.expires_s <= now:
                return None
            decision: dict[str, Any] = row.decision
            return decision

        return self._run("take a call decision", take)

    # --- (c) live calls -------------------------------------------------------------------------

    def try_start_call(
        self, max_calls: int | None, now_s: float | None = None, stale_s: float = DEFAULT_STALE_S
    ) -> bool:
        """Count one more live call here if the live calls of all instances are below ``max_calls``."""
        now = _now(now_s)

        def start(conn: Connection) -> bool:
            if self.db.backend == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_PG_CALLS_LOCK)))
            if max_calls is not None:
                total = conn.execute(
                    select(func.coalesce(func.sum(InstanceRow.live_calls), 0)).where(
                        InstanceRow.heartbeat_s > now - stale_s, InstanceRow.instance != self.instance
                    )
                ).scalar_one()
                if int(total) + self._live >= max_calls:
                    return False
            self._upsert_instance(conn, self._live + 1, now)
            return True

        with self._lock:
            started = self._run("count a live call", start)
            if started:
                self._live += 1
            return started

    def try_admit(
        self, max_calls: int, local_live: int, now_s: float | None = None, stale_s: float = DEFAULT_STALE_S
    ) -> bool:
        """One more call on this instance (this host: all its worker processes), if it has room.

        Atomically: the live calls the other processes of this host last reported, plus ``local_live``
        (this process's own count, which the caller keeps), must be below ``max_calls``; then this
        process reports ``local_live + 1``. (``try_start_call`` counts every instance of the database.)"""
        now = _now(now_s)
        host = self.instance.split(":", 1)[0] + ":"

        def admit(conn: Connection) -> bool:
            if self.db.backend == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_PG_CALLS_LOCK)))
            others = conn.execute(
                select(func.coalesce(func.sum(InstanceRow.live_calls), 0)).where(
                    InstanceRow.heartbeat_s > now - stale_s,
                    InstanceRow.instance != self.instance,
                    InstanceRow.instance.startswith(host, autoescape=True),
                )
            ).scalar_one()
            if int(others) + local_live >= max_calls:
                return False
            self._upsert_instance(conn, local_live + 1, now)
            return True

        with self._lock:
            admitted = self._run("admit a call", admit)
            if admitted:
                self._live = local_live + 1
            return admitted

    def end_call(self, now_s: float | None = None) -> None:
        """One live call fewer here. Never raises: a failed update is repaired by the next heartbeat."""
        with self._lock:
            self._live = max(self._live - 1, 0)
            try:
                self._run(
                    "count a call's end", lambda conn: self._upsert_instance(conn, self._live, _now(now_s))
                )
            except StateUnavailable as exc:
                log.warning("%s (the next heartbeat will correct the count)", exc)

    def heartbeat(self, live_calls: int | None = None, now_s: float | None = None) -> None:
        """This instance is alive with ``live_calls`` (default: the count kept by try_start_call/end_call)."""
        with self._lock:
            if live_calls is not None:
                self._live = max(live_calls, 0)
            count = self._live
            self._run("heartbeat", lambda conn: self._upsert_instance(conn, count, _now(now_s)))

    def live_calls(self, now_s: float | None = None, stale_s: float = DEFAULT_STALE_S) -> int:
        """Live calls over all instances heard from within ``stale_s``."""
        query = select(func.coalesce(func.sum(InstanceRow.live_calls), 0)).where(
            InstanceRow.heartbeat_s > _now(now_s) - stale_s
        )
        return int(self._run("count live calls", lambda conn: conn.execute(query).scalar_one(), write=False))

    def instances(self, now_s: float | None = None, stale_s: float = DEFAULT_STALE_S) -> dict[str, int]:
        """Live calls by instance heard from within ``stale_s``."""
        query = select(InstanceRow.instance, InstanceRow.live_calls).where(
            InstanceRow.heartbeat_s > _now(now_s) - stale_s
        )
        rows = self._run("list instances", lambda conn: conn.execute(query).all(), write=False)
        return {row.instance: int(row.live_calls) for row in rows}

    def leave(self) -> None:
        """Forget this instance (at a clean shutdown)."""
        statement = delete(InstanceRow).where(InstanceRow.instance == self.instance)
        self._run("leave", lambda conn: conn.execute(statement))

    # --- housekeeping ---------------------------------------------------------------------------

    def prune(self, now_s: float | None = None, instances_after_s: float = 86_400.0) -> int:
        """Delete expired tokens and decisions, and instances silent for a day. Rows deleted."""
        now = _now(now_s)

        def prune(conn: Connection) -> int:
            deleted = conn.execute(delete(StreamTokenRow).where(StreamTokenRow.expires_s <= now)).rowcount
            deleted += conn.execute(delete(DecisionRow).where(DecisionRow.expires_s <= now)).rowcount
            deleted += conn.execute(
                delete(InstanceRow).where(InstanceRow.heartbeat_s <= now - instances_after_s)
            ).rowcount
            return max(deleted, 0)

        return self._run("prune", prune)

    # --- plumbing -------------------------------------------------------------------------------

    def _insert(self) -> Any:
        """The backend's ``insert`` (with ``on_conflict_do_update`` / ``on_conflict_do_nothing``)."""
        return postgresql.insert if self.db.backend == "postgresql" else sqlite.insert

    def _upsert_instance(self, conn: Connection, live_calls: int, now: float) -> None:
        found = conn.execute(
            update(InstanceRow)
            .where(InstanceRow.instance == self.instance)
            .values(live_calls=live_calls, heartbeat_s=now)
        ).rowcount
        if found == 0:
            conn.execute(
                self._insert()(InstanceRow)
                .values(
                    instance=self.instance, live_calls=live_calls, heartbeat_s=now, started_s=self._started_s
                )
                .on_conflict_do_nothing(index_elements=["instance"])
            )

    def _run(self, what: str, work: Callable[[Connection], _T], *, write: bool = True) -> _T:
        try:
            if write:
                with self.db.write() as conn:
                    return work(conn)
            with self.db.read() as conn:
                return work(conn)
        except SQLAlchemyError as exc:
            raise StateUnavailable(f"shared state: cannot {what}: {describe_error(exc)}") from None


def _now(now_s: float | None) -> float:
    return time.time() if now_s is None else now_s
