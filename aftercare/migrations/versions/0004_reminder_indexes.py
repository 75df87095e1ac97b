"""reminder indexes: drop the redundant session_id index, index fallback_of_id

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 07:00:00

``ix_reminders_session_id`` duplicates the leading column of ``uq_reminders_slot``
(session_id, step, occurrence, channel), whose index serves every lookup by session: one index
less to maintain on each of a session's ~46 inserted reminders. ``fallback_of_id`` is a foreign
key to ``reminders.id`` without an index, so deleting a reminder scanned the whole table for rows
pointing at it; the partial index holds only the (few) fallback emails.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FALLBACK_WHERE = sa.text("fallback_of_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_reminders_session_id", table_name="reminders")
    op.create_index(
        "ix_reminders_fallback_of_id",
        "reminders",
        ["fallback_of_id"],
        unique=False,
        postgresql_where=FALLBACK_WHERE,
        sqlite_where=FALLBACK_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_reminders_fallback_of_id", table_name="reminders")
    op.create_index("ix_reminders_session_id", "reminders", ["session_id"], unique=False)
