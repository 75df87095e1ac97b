"""The tables: patients, treatment sessions, reminders and delivery attempts.

The database is the source of truth for every reminder: recording a session stores all of its
planned reminders, and delivery only ever moves a reminder's ``state`` forward.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from aftercare.storage.db import UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Opaque identifier for links sent to the patient (unsubscribe); never the row id.
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(20), index=True)
    email: Mapped[str | None] = mapped_column(String(254))
    timezone: Mapped[str] = mapped_column(String(64))
    channels: Mapped[str] = mapped_column(String(32))
    sms_opted_out_at: Mapped[datetime | None]
    sms_opt_out_source: Mapped[str | None] = mapped_column(String(32))
    email_opted_out_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    erased_at: Mapped[datetime | None]

    sessions: Mapped[list[TreatmentSession]] = relationship(back_populates="patient")

    @property
    def channel_list(self) -> list[str]:
        return [c for c in self.channels.split(",") if c]


class TreatmentSession(Base):
    __tablename__ = "treatment_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    regimen_id: Mapped[str] = mapped_column(String(64))
    regimen_version: Mapped[int]
    treated_at: Mapped[datetime]
    recorded_at: Mapped[datetime]
    timezone: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict[str, Any]]
    channels: Mapped[str] = mapped_column(String(32))
    # active | paused | cancelled | completed
    status: Mapped[str] = mapped_column(String(16), default="active")
    consent: Mapped[bool] = mapped_column(Boolean)
    contraindications_checked: Mapped[bool] = mapped_column(Boolean)
    checkin_answer: Mapped[str | None] = mapped_column(String(32))

    patient: Mapped[Patient] = relationship(back_populates="sessions")
    reminders: Mapped[list[Reminder]] = relationship(
        back_populates="session", order_by="Reminder.due_at"
    )


class Reminder(Base):
    """One planned message: a step occurrence on one channel.

    States: scheduled -> queued -> sending -> sent -> delivered, or failed | cancelled |
    skipped | expired, plus ``paused`` while its session is paused. Every change is a guarded
    UPDATE (``WHERE state = <expected>``), so a task that runs twice changes nothing the second
    time.
    """

    __tablename__ = "reminders"
    __table_args__ = (
        UniqueConstraint("session_id", "step", "occurrence", "channel", name="uq_reminders_slot"),
        # The dispatcher's claim is a range scan of this partial index, however many future
        # reminders the table holds.
        Index(
            "ix_reminders_due_scheduled",
            "due_at",
            postgresql_where=text("state = 'scheduled'"),
            sqlite_where=text("state = 'scheduled'"),
        ),
        Index(
            "ix_reminders_in_flight",
            "state",
            "updated_at",
            postgresql_where=text("state IN ('queued', 'sending')"),
            sqlite_where=text("state IN ('queued', 'sending')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("treatment_sessions.id"), index=True)
    step: Mapped[str] = mapped_column(String(64))
    occurrence: Mapped[int]
    channel: Mapped[str] = mapped_column(String(8))
    template: Mapped[str] = mapped_column(String(64))
    nominal_at: Mapped[datetime]
    due_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    # Why it ended where it did (error code, "catch_up", "session cancelled"): never patient data.
    reason: Mapped[str | None] = mapped_column(String(200))

    session: Mapped[TreatmentSession] = relationship(back_populates="reminders")
    delivery_attempts: Mapped[list[DeliveryAttempt]] = relationship(
        back_populates="reminder", order_by="DeliveryAttempt.id"
    )


class DeliveryAttempt(Base):
    """One call to a provider, written *before* the call and completed after it."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reminder_id: Mapped[int] = mapped_column(ForeignKey("reminders.id"), index=True)
    transport: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # pending | sent | transient | permanent | reconciled (found at the provider) | lost (not)
    outcome: Mapped[str] = mapped_column(String(16), default="pending")
    provider_id: Mapped[str | None] = mapped_column(String(64), index=True)
    provider_status: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_detail: Mapped[str | None] = mapped_column(Text)

    reminder: Mapped[Reminder] = relationship(back_populates="delivery_attempts")
