"""The database: its URL, its engine, its schema (alembic), and the reads and writes of call records.

``DATABASE_URL`` is a SQLAlchemy URL: ``sqlite:///dialtone.db`` (the default; a path relative to the
working directory, ``sqlite:////abs/path.db`` for an absolute one) or ``postgresql://user:pw@host/db``
(the psycopg 3 driver is used; ``postgres://`` is accepted too). Nothing else is supported: the writes
use each backend's ``INSERT … ON CONFLICT``.

SQLite: WAL journal (readers never block the writer), a busy timeout, and transactions begun by us:
``BEGIN IMMEDIATE`` for writes, so that a read-then-write (the live-call count, the migrations) is
serialised across processes instead of failing on upgrade. PostgreSQL: a pool with pre-ping (a
restarted server costs one failed attempt, not a dead pool), migrations under an advisory lock.

Errors carry one line: never the URL's password, never a statement's parameters (``hide_parameters``).
An in-memory SQLite URL (``sqlite://``) is one shared connection: for single-threaded tests only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, create_engine, event, func, make_url, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement

from service.records.errors import DatabaseUnavailable, RecordsConfigError
from service.records.models import CallRow
from service.records.shape import doc_to_row, row_to_doc

__all__ = [
    "DEFAULT_URL",
    "CallFilter",
    "Database",
    "Totals",
    "describe_error",
    "is_transient",
    "parse_url",
    "safe_url",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///dialtone.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATE_LOCK = 0x4469616C  # "Dial": the advisory lock key held while migrating
_WRITE = "dialtone_write"


def parse_url(raw: str) -> URL:
    """The SQLAlchemy URL of ``raw`` (psycopg 3 for PostgreSQL); RecordsConfigError if unusable."""
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        raise RecordsConfigError(
            "DATABASE_URL is not a database URL (expected sqlite:///path/to/file.db or "
            "postgresql://user:password@host:5432/dbname)"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        url = url.set(drivername=f"postgresql+{driver or 'psycopg'}")
    elif backend != "sqlite":
        raise RecordsConfigError(
            f"DATABASE_URL: unsupported database {backend!r} (use sqlite:///… or postgresql://…)"
        )
    return url


def safe_url(url: URL | str) -> str:
    """The URL without its password, for messages."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return "<not a URL>"
    return url.render_as_string(hide_password=True)


def describe_error(exc: BaseException) -> str:
    """One line naming the driver's error, without the statement or its parameters."""
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write is worth retrying: the database is down, locked, unreachable or restarting."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@dataclass(frozen=True, slots=True)
class CallFilter:
    """What ``calls list`` / ``calls export`` select. ``since`` inclusive, ``until`` exclusive (aware UTC)."""

    number: str | None = None
    """The caller's or the called number (either)."""
    agent: str | None = None
    direction: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    call_sid: str | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if self.number:
            clauses.append(or_(CallRow.from_number == self.number, CallRow.to_number == self.number))
        if self.agent:
            clauses.append(CallRow.agent == self.agent)
        if self.direction:
            clauses.append(CallRow.direction == self.direction)
        if self.since is not None:
            clauses.append(CallRow.started_at >= self.since)
        if self.until is not None:
            clauses.append(CallRow.started_at < self.until)
        if self.call_sid:
            clauses.append(CallRow.call_sid == self.call_sid)
        return clauses


@dataclass(frozen=True, slots=True)
class Totals:
    count: int
    duration_s: float
    cost_usd: float
    """The sum of the known costs."""
    cost_unknown: int
    """Calls whose cost is missing or partial (a model or transcription without a price)."""


class Database:
    """One engine on ``DATABASE_URL``; safe to share between threads (not across ``fork``)."""

    def __init__(self, url: str | URL, *, must_exist: bool = False, sqlite_timeout_s: float = 5.0) -> None:
        self.url = parse_url(url) if isinstance(url, str) else url
        self.backend = self.url.get_backend_name()
        kwargs: dict[str, Any] = {"hide_parameters": True, "json_serializer": _json}
        if self.backend == "sqlite":
            path = self.sqlite_path
            if path is None:
                kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
            else:
                if must_exist and not path.is_file():
                    raise RecordsConfigError(
                        f"no database file at {path} (DATABASE_URL={safe_url(self.url)})"
                    )
                if not path.parent.is_dir():
                    raise RecordsConfigError(f"DATABASE_URL: no directory {path.parent} for the SQLite file")
                kwargs.update(connect_args={"timeout": sqlite_timeout_s})
        else:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=10)
            kwargs.update(connect_args={"connect_timeout": 5})
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (NoSuchModuleError, ImportError, ArgumentError) as exc:
            raise RecordsConfigError(f"DATABASE_URL {safe_url(self.url)}: {describe_error(exc)}") from None
        if self.backend == "sqlite":
            _sqlite_transactions(self.engine, wal=self.sqlite_path is not None)
        insert = postgresql.insert if self.backend == "postgresql" else sqlite.insert
        self._insert_call = insert(CallRow).on_conflict_do_nothing(index_elements=["id"])

    def __repr__(self) -> str:
        return f"Database({safe_url(self.url)!r})"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file (None for an in-memory database)."""
        if self.backend != "sqlite" or self.url.database in (None, "", ":memory:"):
            return None
        return Path(self.url.database or "")

    @property
    def name(self) -> str:
        return safe_url(self.url)

    def dispose(self) -> None:
        self.engine.dispose()

    # --- transactions --------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # --- schema ----------------------------------------------------------------------------------

    def alembic_config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option(
            "sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%")
        )
        return config

    def head(self) -> str | None:
        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def revision(self) -> str | None:
        """The schema's revision in the database (None: no Dialtone schema)."""
        with self.read() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def migrate(self) -> None:
        """``alembic upgrade head`` in one transaction, serialised across processes (idempotent)."""
        config = self.alembic_config()
        plugins = logging.getLogger("alembic.runtime.plugins")  # a line per plugin at INFO: noise
        if plugins.level == logging.NOTSET:
            plugins.setLevel(logging.WARNING)
        with self.write() as conn:
            if self.backend == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATE_LOCK)))
            else:
                conn.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: other processes wait for us
            before = MigrationContext.configure(conn).get_current_revision()
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            after = MigrationContext.configure(conn).get_current_revision()
        if before != after:
            log.info("records: database %s schema upgraded from %s to %s", self.name, before or "none", after)

    def check_schema(self) -> None:
        """DatabaseUnavailable unless the database answers and its schema is the current one."""
        try:
            current = self.revision()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"database {self.name}: {describe_error(exc)}") from None
        head = self.head()
        if current is None:
            raise DatabaseUnavailable(
                f"database {self.name} has no Dialtone schema yet (run `python -m service db upgrade`)"
            )
        if current != head:
            raise DatabaseUnavailable(
                f"database {self.name} schema is at {current}, this version needs {head} "
                "(run `python -m service db upgrade`)"
            )

    # --- call records ----------------------------------------------------------------------------

    def insert_calls(self, docs: Sequence[Mapping[str, Any]], instance: str) -> int:
        """Insert ``record_to_json`` documents (an ``id`` already there is skipped); rows inserted."""
        if not docs:
            return 0
        rows = [doc_to_row(doc, instance) for doc in docs]
        with self.write() as conn:  # executemany of one cached statement (compiling 100 VALUES costs ~60 ms)
            result = conn.execution_options(preserve_rowcount=True).execute(self._insert_call, rows)
        return max(result.rowcount, 0)

    def get_call(self, key: str) -> dict[str, Any] | None:
        """The record of CallSid ``key`` (the latest, if several) or with record id ``key``."""
        query = (
            select(CallRow)
            .where(or_(CallRow.call_sid == key, CallRow.id == key))
            .order_by(CallRow.started_at.desc())
            .limit(1)
        )
        with self.read() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else row_to_doc(row)

    def find_calls(
        self, where: CallFilter = CallFilter(), limit: int | None = None, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Matching records, newest first."""
        query = select(CallRow).where(*where.clauses()).order_by(CallRow.started_at.desc(), CallRow.id)
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.read() as conn:
            return [row_to_doc(row) for row in conn.execute(query).mappings()]

    def iter_calls(self, where: CallFilter = CallFilter(), batch: int = 500) -> Iterator[dict[str, Any]]:
        """Matching records, oldest first, fetched ``batch`` at a time (an export of any size)."""
        query = select(CallRow).where(*where.clauses()).order_by(CallRow.started_at, CallRow.id)
        with self.read() as conn:
            result = conn.execution_options(yield_per=batch).execute(query).mappings()
            for row in result:
                yield row_to_doc(row)

    def totals(self, where: CallFilter = CallFilter()) -> Totals:
        query = select(
            func.count(),
            func.coalesce(func.sum(CallRow.duration_s), 0.0),
            func.coalesce(func.sum(CallRow.cost_usd), 0.0),
            func.count().filter(or_(CallRow.cost_usd.is_(None), CallRow.cost_complete.is_(False))),
        ).where(*where.clauses())
        with self.read() as conn:
            count, duration, cost, unknown = conn.execute(query).one()
        return Totals(int(count), float(duration or 0.0), round(float(cost or 0.0), 6), int(unknown))

    def count_calls(self) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(CallRow)).scalar_one())


def _json(value: Any) -> str:
    """The JSON columns' text (orjson: about 3x the standard library on a record's transcript)."""
    return orjson.dumps(value).decode()


def _sqlite_transactions(engine: Engine, *, wal: bool) -> None:
    """We emit BEGIN ourselves (pysqlite's own is lazy and skips DDL): IMMEDIATE for writes."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
