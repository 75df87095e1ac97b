"""flags from unknown senders: flags.patient_id may be null

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 14:30:00

A text from a number no patient has is flagged for staff like any other (its inbound message
carries the number), so a flag no longer needs a patient.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.alter_column("patient_id", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    # The old schema cannot hold a flag without a patient.
    op.execute("DELETE FROM flags WHERE patient_id IS NULL")
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.alter_column("patient_id", existing_type=sa.Integer(), nullable=False)
