"""course of treatment: check-in outcome per session, booked session on a flag, email index

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 14:45:00

A patient is one record across their sessions (matched by phone, or by email when there is no
phone: hence the index on ``patients.email``). Each session keeps its check-in answer as a
structured outcome (``faded``, ``fading``, ``dark_or_worried``), filled in here from the answers
already stored ("1", "2", "3"). A ``booking_request`` flag resolved by recording the session it
asked for points at that session. The new reminder state ``superseded`` needs no schema change
(``reminders.state`` is a plain string).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("treatment_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("checkin_outcome", sa.String(length=16), nullable=True))
    op.execute(
        "UPDATE treatment_sessions SET checkin_outcome = CASE checkin_answer "
        "WHEN '1' THEN 'faded' WHEN '2' THEN 'fading' WHEN '3' THEN 'dark_or_worried' END "
        "WHERE checkin_answer IN ('1', '2', '3')"
    )
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.add_column(sa.Column("booked_session_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_flags_booked_session_id_treatment_sessions",
            "treatment_sessions",
            ["booked_session_id"],
            ["id"],
        )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_index("ix_patients_email", ["email"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index("ix_patients_email")
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.drop_constraint(
            "fk_flags_booked_session_id_treatment_sessions", type_="foreignkey"
        )
        batch_op.drop_column("booked_session_id")
    with op.batch_alter_table("treatment_sessions", schema=None) as batch_op:
        batch_op.drop_column("checkin_outcome")
