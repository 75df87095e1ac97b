"""worker leases: who holds a 'sending' reminder, for a takeover as soon as it is gone

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 14:40:00

``reminders.claimed_by`` names the lease of the process that moved the reminder to ``sending``;
``worker_leases`` holds each such process's identity and ``lease_until`` (renewed every few
seconds). Recovery takes over a gone owner's reminders at once instead of after
AFTERCARE_STALE_AFTER (aftercare/reminders/leases.py). Existing rows have no owner and keep the
old rule.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import aftercare.storage.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_leases",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("machine", sa.String(length=80), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started", sa.String(length=24), nullable=False),
        sa.Column("lease_until", aftercare.storage.db.UTCDateTime(), nullable=False),
        sa.Column("created_at", aftercare.storage.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_leases")),
    )
    with op.batch_alter_table("reminders") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reminders") as batch:
        batch.drop_column("claimed_by")
    op.drop_table("worker_leases")
