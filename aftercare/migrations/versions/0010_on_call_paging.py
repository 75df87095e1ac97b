"""on-call rota and paging: staff mobile and rota place, flag acknowledgement, pages

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 17:45:00

Staff may carry a mobile (E.164) and a place on the on-call rota. An emergency or urgent flag
records who acknowledged it and its paging round; each page to a staff member is a row of its
own, with a guarded state like a reminder's (aftercare/oncall).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aftercare.storage.db import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("staff_users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("on_call_position", sa.Integer(), nullable=True))
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.add_column(sa.Column("acknowledged_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("acknowledged_by_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("page_round", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("paged_at", UTCDateTime(), nullable=True))
        batch_op.create_foreign_key(
            "fk_flags_acknowledged_by_id_staff_users",
            "staff_users",
            ["acknowledged_by_id"],
            ["id"],
        )
    op.create_table(
        "pages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("flag_id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempt_at", UTCDateTime(), nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("provider_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("claimed_by", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["flag_id"], ["flags.id"], name="fk_pages_flag_id_flags"),
        sa.ForeignKeyConstraint(
            ["staff_id"], ["staff_users.id"], name="fk_pages_staff_id_staff_users"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_pages"),
        sa.UniqueConstraint(
            "flag_id", "staff_id", "channel", name="uq_pages_flag_staff_channel"
        ),
    )
    op.create_index("ix_pages_flag_id", "pages", ["flag_id"], unique=False)
    op.create_index(
        "ix_pages_live",
        "pages",
        ["state", "due_at"],
        unique=False,
        postgresql_where=sa.text("state IN ('scheduled', 'queued', 'sending')"),
        sqlite_where=sa.text("state IN ('scheduled', 'queued', 'sending')"),
    )


def downgrade() -> None:
    op.drop_index("ix_pages_live", table_name="pages")
    op.drop_index("ix_pages_flag_id", table_name="pages")
    op.drop_table("pages")
    with op.batch_alter_table("flags", schema=None) as batch_op:
        batch_op.drop_constraint("fk_flags_acknowledged_by_id_staff_users", type_="foreignkey")
        batch_op.drop_column("paged_at")
        batch_op.drop_column("page_round")
        batch_op.drop_column("acknowledged_by_id")
        batch_op.drop_column("acknowledged_at")
    with op.batch_alter_table("staff_users", schema=None) as batch_op:
        batch_op.drop_column("on_call_position")
        batch_op.drop_column("phone")
