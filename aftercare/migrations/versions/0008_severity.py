"""severity on replies and flags; a flag's signs and what the patient was told

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 14:45:00

Every reply and every flag carries one of four severities (emergency, urgent, concern, info).
Existing rows get the severity their kind had: urgent replies and check-in concerns were urgent
(an "EMERGENCY" flag text an emergency), every other flag a concern, every other reply info.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("severity", sa.String(length=16), server_default="info", nullable=False)
        )
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("severity", sa.String(length=16), server_default="concern", nullable=False)
        )
        batch_op.add_column(sa.Column("signs", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("told", sa.Text(), nullable=True))
    op.execute("UPDATE inbound_messages SET severity = 'urgent' WHERE kind = 'urgent'")
    op.execute("UPDATE inbound_messages SET severity = 'concern' WHERE kind = 'unrecognised'")
    op.execute("UPDATE flags SET severity = 'urgent' WHERE urgent")
    op.execute("UPDATE flags SET severity = 'emergency' WHERE urgent AND text LIKE 'EMERGENCY%'")


def downgrade() -> None:
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.drop_column("told")
        batch_op.drop_column("signs")
        batch_op.drop_column("severity")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_column("severity")
