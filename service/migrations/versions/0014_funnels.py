"""many funnels: magnet requests, tags, the reader's preferences, the daily cap, the archive

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29

- `magnet_requests`: which lead magnets each reader asked for, and when each was delivered.
  Every existing reader asked for the only magnet there was, the glute guide; those who
  ever confirmed had it delivered when they confirmed (their welcome email's key,
  `welcome:glute-guide:<id>`, is unchanged, so nobody gets it again).
- `subscriber_tags`: existing readers get `magnet:glute-guide`, and `finished:<sequence>`
  for each sequence they finished.
- `subscribers.paused_until`, `subscribers.wants_newsletters`, `enrollments.held_until`,
  `enrollments.left_at`: the reader's own choices from the preference centre.
- `enrollments.deferred_since`: when a step first waited for the daily cap (it goes first
  the next morning).
- `outbox.day_slot` (unique): a reader's n-th sequence email of a local day. Rows queued
  before keep none; they were all of one sequence, whose steps never share a day.
- `broadcasts.include_tags`, `exclude_tags`, `tags_match`, `public`, `slug`.

Enrollments keep their sequence name, steps passed, plan and pause as they are: where each
reader stands is unchanged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

DEFAULT_MAGNET = "glute-guide"


def upgrade() -> None:
    op.create_table(
        "magnet_requests",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("magnet", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_magnet_requests_subscriber_id_subscribers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("subscriber_id", "magnet", name="pk_magnet_requests"),
    )
    op.create_index("ix_magnet_requests_magnet", "magnet_requests", ["magnet", "requested_at"])
    op.create_table(
        "subscriber_tags",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=100), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_subscriber_tags_subscriber_id_subscribers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("subscriber_id", "tag", name="pk_subscriber_tags"),
    )
    op.create_index("ix_subscriber_tags_tag", "subscriber_tags", ["tag", "subscriber_id"])

    op.add_column(
        "subscribers", sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "subscribers",
        sa.Column("wants_newsletters", sa.Boolean(), nullable=False, server_default=sa.true()),
    )
    op.add_column("enrollments", sa.Column("held_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("enrollments", sa.Column("left_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "enrollments", sa.Column("deferred_since", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("outbox", sa.Column("day_slot", sa.String(length=48), nullable=True))
    op.create_index("uq_outbox_day_slot", "outbox", ["day_slot"], unique=True)
    op.add_column(
        "broadcasts", sa.Column("include_tags", sa.JSON(), nullable=False, server_default="[]")
    )
    op.add_column(
        "broadcasts", sa.Column("exclude_tags", sa.JSON(), nullable=False, server_default="[]")
    )
    op.add_column(
        "broadcasts",
        sa.Column("tags_match", sa.String(length=8), nullable=False, server_default="any"),
    )
    op.add_column(
        "broadcasts", sa.Column("public", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("broadcasts", sa.Column("slug", sa.String(length=120), nullable=True))
    op.create_index("uq_broadcasts_slug", "broadcasts", ["slug"], unique=True)

    op.execute(
        "INSERT INTO magnet_requests (subscriber_id, magnet, requested_at, delivered_at, source)"
        f" SELECT id, '{DEFAULT_MAGNET}', created_at, confirmed_at, source FROM subscribers"
    )
    op.execute(
        "INSERT INTO subscriber_tags (subscriber_id, tag, added_at, added_by)"
        f" SELECT id, 'magnet:{DEFAULT_MAGNET}', created_at, 'magnet' FROM subscribers"
    )
    op.execute(
        "INSERT INTO subscriber_tags (subscriber_id, tag, added_at, added_by)"
        " SELECT subscriber_id, 'finished:' || sequence,"
        " COALESCE(finished_at, last_step_at, enrolled_at), 'sequence'"
        " FROM enrollments WHERE status = 'finished'"
    )


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35 and later have it): a batch rebuild would drop the
    # search triggers of 0006 and the tables' AUTOINCREMENT.
    op.drop_index("uq_broadcasts_slug", table_name="broadcasts")
    for column in ("slug", "public", "tags_match", "exclude_tags", "include_tags"):
        op.execute(f"ALTER TABLE broadcasts DROP COLUMN {column}")
    op.drop_index("uq_outbox_day_slot", table_name="outbox")
    op.execute("ALTER TABLE outbox DROP COLUMN day_slot")
    op.execute("ALTER TABLE enrollments DROP COLUMN deferred_since")
    op.execute("ALTER TABLE enrollments DROP COLUMN left_at")
    op.execute("ALTER TABLE enrollments DROP COLUMN held_until")
    op.execute("ALTER TABLE subscribers DROP COLUMN wants_newsletters")
    op.execute("ALTER TABLE subscribers DROP COLUMN paused_until")
    op.drop_index("ix_subscriber_tags_tag", table_name="subscriber_tags")
    op.drop_table("subscriber_tags")
    op.drop_index("ix_magnet_requests_magnet", table_name="magnet_requests")
    op.drop_table("magnet_requests")
