"""Call records and the shared state (stream tokens, call decisions, instances).

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("call_sid", sa.String(64), nullable=True),
        sa.Column("direction", sa.String(32), nullable=False),
        sa.Column("from_number", sa.String(64), nullable=False),
        sa.Column("to_number", sa.String(64), nullable=False),
        sa.Column("agent", sa.String(128), nullable=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("ended_at", WHEN, nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("end_reason", sa.String(64), nullable=True),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("barge_ins", sa.Integer(), nullable=False),
        sa.Column("reconnects", sa.Integer(), nullable=False),
        sa.Column("rollovers", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("cost_complete", sa.Boolean(), nullable=False),
        sa.Column("prices_date", sa.String(16), nullable=False),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("transcript", JSON, nullable=False),
        sa.Column("timeline", JSON, nullable=False),
        sa.Column("tool_calls", JSON, nullable=False),
        sa.Column("first_audio_ms", JSON, nullable=False),
        sa.Column("reconnect_ms", JSON, nullable=False),
        sa.Column("usage", JSON, nullable=False),
        sa.Column("cost", JSON, nullable=False),
        sa.Column("summary", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
    )
    op.create_index("ix_calls_call_sid", "calls", ["call_sid"])
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index("ix_calls_from_number", "calls", ["from_number"])
    op.create_index("ix_calls_to_number", "calls", ["to_number"])
    op.create_index("ix_calls_agent_started_at", "calls", ["agent", "started_at"])

    op.create_table(
        "stream_tokens",
        sa.Column("call_sid", sa.String(64), nullable=False),
        sa.Column("expires_s", sa.Float(), nullable=False),
        sa.Column("claimed_s", sa.Float(), nullable=False),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("call_sid", name="pk_stream_tokens"),
    )
    op.create_index("ix_stream_tokens_expires_s", "stream_tokens", ["expires_s"])

    op.create_table(
        "call_decisions",
        sa.Column("call_sid", sa.String(64), nullable=False),
        sa.Column("decision", JSON, nullable=False),
        sa.Column("expires_s", sa.Float(), nullable=False),
        sa.Column("updated_s", sa.Float(), nullable=False),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("call_sid", name="pk_call_decisions"),
    )
    op.create_index("ix_call_decisions_expires_s", "call_decisions", ["expires_s"])

    op.create_table(
        "instances",
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("live_calls", sa.Integer(), nullable=False),
        sa.Column("heartbeat_s", sa.Float(), nullable=False),
        sa.Column("started_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("instance", name="pk_instances"),
    )
    op.create_index("ix_instances_heartbeat_s", "instances", ["heartbeat_s"])


def downgrade() -> None:
    op.drop_table("instances")
    op.drop_table("call_decisions")
    op.drop_table("stream_tokens")
    op.drop_table("calls")
