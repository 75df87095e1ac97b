"""The tables of the people and processes around the patients: staff accounts, their API
tokens and web sessions, the login throttle, the audit log, worker heartbeats and leases, and
pages to on-call staff. Imported (and re-exported) by :mod:`aftercare.storage.models`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Mapped, mapped_column

from aftercare.storage.base import Base


class StaffUser(Base):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(200))
    # staff | admin
    role: Mapped[str] = mapped_column(String(16), default="staff")
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]
    # A mobile for pages (E.164), and the place on the on-call rota (None: not on call).
    phone: Mapped[str | None] = mapped_column(String(20))
    on_call_position: Mapped[int | None] = mapped_column(Integer)


class ApiToken(Base):
    """A bearer token for the JSON API: shown once, stored as a SHA-256 hash, revocable."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class WebSession(Base):
    """A logged-in staff browser session (server side; the cookie holds a random token)."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class LoginThrottle(Base):
    """Login guesses counted per bucket (an email and a client, an email, a client) within a
    window, for rate limiting; keyed by a hash, never the email or the address itself."""

    __tablename__ = "login_throttle"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime]
    failures: Mapped[int] = mapped_column(Integer)


class AuditEvent(Base):
    """Who did what to which patient, and when. Holds ids only, so it survives erasure."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    # enrol | edit | pause | resume | cancel | erase | resolve_flag | opt_out | opt_in | ...
    action: Mapped[str] = mapped_column(String(32))
    patient_id: Mapped[int | None] = mapped_column(Integer, index=True)
    session_id: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Heartbeat(Base):
    """The last time a periodic component ran (the dispatcher), for readiness checks."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime]
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class WorkerLease(Base):
    """A process that may hold reminders in ``sending``, and until when it is known alive.

    Renewed by the process itself every few seconds; recovery takes over the reminders of a
    lease that expired, or whose process ran on the recovering machine and is gone, and deletes
    the lease (aftercare/reminders/leases.py).
    """

    __tablename__ = "worker_leases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    # Boot id and PID namespace: PIDs are comparable only between processes that share both.
    machine: Mapped[str] = mapped_column(String(80))
    pid: Mapped[int]
    # The process's start time in clock ticks since boot: a reused PID has another.
    started: Mapped[str] = mapped_column(String(24))
    lease_until: Mapped[datetime]
    created_at: Mapped[datetime]


class Page(Base):
    """One message to a staff member about an emergency or urgent flag (aftercare/oncall).

    States: scheduled -> queued -> sending -> sent | failed, or cancelled (the flag was
    acknowledged or resolved first). Guarded like a reminder's, so a page goes out exactly once.
    Holds ids only: the text is built when it is sent, and names no patient.
    """

    __tablename__ = "pages"
    __table_args__ = (
        # One page per person, channel and flag, however often escalation runs.
        UniqueConstraint("flag_id", "staff_id", "channel", name="uq_pages_flag_staff_channel"),
        Index(
            "ix_pages_live",
            "state",
            "due_at",
            postgresql_where=sql_text("state IN ('scheduled', 'queued', 'sending')"),
            sqlite_where=sql_text("state IN ('scheduled', 'queued', 'sending')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    flag_id: Mapped[int] = mapped_column(ForeignKey("flags.id"), index=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"))
    # The flag's paging round (1: the first on call; the last: every admin).
    round: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16))
    due_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the current attempt started (the provider is asked about it after a crash).
    attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    provider_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(200))
    # The worker lease it was claimed under (as Reminder.claimed_by).
    claimed_by: Mapped[str | None] = mapped_column(String(32))
