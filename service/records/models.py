"""The schema: one ``calls`` table, and the state the service's processes share (SQLAlchemy 2.0 models).

The migrations in ``migrations/versions`` create exactly this; ``tests/test_records.py`` checks that
the migrated database and these models agree (alembic's autogenerate compare finds nothing).

``calls``: one row per call record. The fields people search and add up are columns; what a call said
and did (transcript, timeline, tool calls, usage, cost, summary) are JSON (JSONB on PostgreSQL).
``id`` is a random key made when the record is queued, so a write retried after an ambiguous failure
inserts nothing twice (``ON CONFLICT DO NOTHING``); ``call_sid`` is indexed, not unique.

Shared state (epoch seconds, ``*_s`` columns, compared with the wall clock of the caller):

- ``stream_tokens``: a CallSid whose stream token was accepted, until the token expires (single use
  across processes and instances);
- ``call_decisions``: a small JSON decision per CallSid for the call-control action endpoint, with an
  expiry;
- ``instances``: each running process, its live calls and its last heartbeat (MAX_CALLS across workers).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "CallRow", "DecisionRow", "InstanceRow", "StreamTokenRow", "UTCDateTime", "metadata"]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

Json = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite keeps no zone: stored as naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = metadata


class CallRow(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    call_sid: Mapped[str | None] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(32))
    from_number: Mapped[str] = mapped_column(String(64))
    to_number: Mapped[str] = mapped_column(String(64))
    agent: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_s: Mapped[float] = mapped_column(Float)
    end_reason: Mapped[str | None] = mapped_column(String(64))
    turns: Mapped[int] = mapped_column(Integer)
    barge_ins: Mapped[int] = mapped_column(Integer)
    reconnects: Mapped[int] = mapped_column(Integer)
    rollovers: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    cost_complete: Mapped[bool] = mapped_column(Boolean)
    prices_date: Mapped[str] = mapped_column(String(16))
    instance: Mapped[str] = mapped_column(String(128))
    """The process that wrote the row (``host:pid:random``)."""
    transcript: Mapped[list[Any]] = mapped_column(Json)
    timeline: Mapped[list[Any]] = mapped_column(Json)
    tool_calls: Mapped[list[Any]] = mapped_column(Json)
    first_audio_ms: Mapped[list[Any]] = mapped_column(Json)
    reconnect_ms: Mapped[list[Any]] = mapped_column(Json)
    usage: Mapped[dict[str, Any]] = mapped_column(Json)
    cost: Mapped[dict[str, Any]] = mapped_column(Json)
    summary: Mapped[dict[str, Any]] = mapped_column(Json)

    __table_args__ = (
        Index(None, "call_sid"),
        Index(None, "started_at"),
        Index(None, "from_number"),
        Index(None, "to_number"),
        Index(None, "agent", "started_at"),
    )


class StreamTokenRow(Base):
    __tablename__ = "stream_tokens"

    call_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_s: Mapped[float] = mapped_column(Float, index=True)
    claimed_s: Mapped[float] = mapped_column(Float)
    instance: Mapped[str] = mapped_column(String(128))


class DecisionRow(Base):
    __tablename__ = "call_decisions"

    call_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    decision: Mapped[dict[str, Any]] = mapped_column(Json)
    expires_s: Mapped[float] = mapped_column(Float, index=True)
    updated_s: Mapped[float] = mapped_column(Float)
    instance: Mapped[str] = mapped_column(String(128))


class InstanceRow(Base):
    __tablename__ = "instances"

    instance: Mapped[str] = mapped_column(String(128), primary_key=True)
    live_calls: Mapped[int] = mapped_column(Integer)
    heartbeat_s: Mapped[float] = mapped_column(Float, index=True)
    started_s: Mapped[float] = mapped_column(Float)
