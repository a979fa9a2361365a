"""bounces and complaints heard after the relay; a newsletter that pauses itself

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29

`feedback_events` holds every bounce and complaint that comes back (provider webhooks, the
bounce mailbox, the SMTP server's own refusals), one row per event, its source's name for it
unique so that a redelivery changes nothing. A newsletter that pauses itself on too many
bounces or complaints says why in `broadcasts.pause_reason`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TYPES = ("hard", "soft", "complaint")


def upgrade() -> None:
    op.create_table(
        "feedback_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_key", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column(
            "type",
            sa.Enum(
                *TYPES, name="feedbacktype", native_enum=False, create_constraint=True, length=16
            ),
            nullable=False,
        ),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=True),
        sa.Column("sequence", sa.String(length=64), nullable=True),
        sa.Column("sequence_step", sa.String(length=64), nullable=True),
        sa.Column("broadcast_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("diagnostic", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_feedback_events_subscriber_id_subscribers",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox.id"],
            name="fk_feedback_events_outbox_id_outbox",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["broadcast_id"],
            ["broadcasts.id"],
            name="fk_feedback_events_broadcast_id_broadcasts",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_feedback_events"),
        sa.UniqueConstraint("event_key", name="uq_feedback_events_event_key"),
    )
    op.create_index("ix_feedback_events_type_received", "feedback_events", ["type", "received_at"])
    op.create_index(
        "ix_feedback_events_subscriber", "feedback_events", ["subscriber_id", "received_at"]
    )
    op.create_index("ix_feedback_events_outbox_id", "feedback_events", ["outbox_id"])
    op.create_index(
        "ix_feedback_events_broadcast",
        "feedback_events",
        ["broadcast_id"],
        sqlite_where=sa.text("broadcast_id IS NOT NULL"),
        postgresql_where=sa.text("broadcast_id IS NOT NULL"),
    )
    # A newsletter's rows in the order they went out, for the circuit breaker.
    _broadcast_index(["broadcast_id", "sent_at"])
    with op.batch_alter_table("broadcasts") as batch:
        batch.add_column(sa.Column("pause_reason", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("breaker_overridden", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def _broadcast_index(columns: list[str]) -> None:
    where = sa.text("broadcast_id IS NOT NULL")
    op.drop_index("ix_outbox_broadcast", table_name="outbox")
    op.create_index(
        "ix_outbox_broadcast", "outbox", columns, sqlite_where=where, postgresql_where=where
    )


def downgrade() -> None:
    _broadcast_index(["broadcast_id"])
    with op.batch_alter_table("broadcasts") as batch:
        batch.drop_column("breaker_overridden")
        batch.drop_column("pause_reason")
    op.drop_index("ix_feedback_events_broadcast", table_name="feedback_events")
    op.drop_index("ix_feedback_events_outbox_id", table_name="feedback_events")
    op.drop_index("ix_feedback_events_subscriber", table_name="feedback_events")
    op.drop_index("ix_feedback_events_type_received", table_name="feedback_events")
    op.drop_table("feedback_events")
