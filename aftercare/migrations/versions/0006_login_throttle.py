"""login throttle: one counter row per bucket, replacing one row per login attempt

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 14:45:00

The old limit counted ``login_attempts`` rows and then inserted one: two requests at once both
counted before either inserted, so 40 simultaneous guesses got 19 checked against a limit of 5.
A counter row per bucket is checked and incremented by one conditional UPDATE, which the database
serialises. The old rows only mattered for fifteen minutes and are dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import aftercare.storage.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("window_start", aftercare.storage.db.UTCDateTime(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("pk_login_throttle")),
    )
    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_attempts_key_hash"))
    op.drop_table("login_attempts")


def downgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("at", aftercare.storage.db.UTCDateTime(), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_attempts")),
    )
    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_login_attempts_key_hash"), ["key_hash"], unique=False
        )
    op.drop_table("login_throttle")
