"""discreet messages: a per-patient choice, null meaning the clinic's default

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 17:50:00

``patients.discreet``: true, the first line of every SMS and every email subject say only that
there is a message from the clinic (a lock screen shows them); false, they may name the
treatment; null, the clinic's default (``AFTERCARE_DISCREET_DEFAULT``) at the time of sending.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("discreet", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_column("discreet")
