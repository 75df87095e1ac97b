"""The tables: patients, treatment sessions, reminders and delivery attempts.

The database is the source of truth for every reminder: recording a session stores all of its
planned reminders, and delivery only ever moves a reminder's ``state`` forward.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from aftercare.storage.base import NAMING, Base
from aftercare.storage.staff_models import (
    ApiToken,
    AuditEvent,
    Heartbeat,
    LoginThrottle,
    Page,
    StaffUser,
    WebSession,
    WorkerLease,
)

__all__ = [
    "NAMING",
    "ApiToken",
    "AuditEvent",
    "Base",
    "DeliveryAttempt",
    "Flag",
    "Heartbeat",
    "InboundMessage",
    "LoginThrottle",
    "Page",
    "Patient",
    "Reminder",
    "StaffUser",
    "TreatmentSession",
    "WebSession",
    "WorkerLease",
]


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Opaque identifier for links sent to the patient (unsubscribe); never the row id.
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(20), index=True)
    # Indexed: a patient with no phone is recognised by their email (a course of treatment).
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    timezone: Mapped[str] = mapped_column(String(64))
    channels: Mapped[str] = mapped_column(String(32))
    sms_opted_out_at: Mapped[datetime | None]
    sms_opt_out_source: Mapped[str | None] = mapped_column(String(32))
    email_opted_out_at: Mapped[datetime | None]
    # A permanent provider error for this number (invalid, landline): no more SMS until staff
    # fix the number.
    sms_blocked_at: Mapped[datetime | None]
    sms_blocked_reason: Mapped[str | None] = mapped_column(String(200))
    # Discreet messages (a neutral first line and subject); None: the clinic's default.
    discreet: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
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
    checkin_answered_at: Mapped[datetime | None]
    # The check-in answer as an outcome: faded | fading | dark_or_worried (sessions.course).
    checkin_outcome: Mapped[str | None] = mapped_column(String(16))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))
    paused_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]

    patient: Mapped[Patient] = relationship(back_populates="sessions")
    reminders: Mapped[list[Reminder]] = relationship(
        back_populates="session", order_by="Reminder.due_at"
    )


class Reminder(Base):
    """One planned message: a step occurrence on one channel.

    States: scheduled -> queued -> sending -> sent -> delivered, or failed | cancelled |
    skipped | expired | superseded (by a later session of the same regimen), plus ``paused``
    while its session is paused. Every change is a guarded
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
            postgresql_where=sql_text("state = 'scheduled'"),
            sqlite_where=sql_text("state = 'scheduled'"),
        ),
        Index(
            "ix_reminders_in_flight",
            "state",
            "updated_at",
            postgresql_where=sql_text("state IN ('queued', 'sending')"),
            sqlite_where=sql_text("state IN ('queued', 'sending')"),
        ),
        # Deleting a reminder checks the fallback emails that point at it; only those few rows
        # are indexed. (Lookups by session use uq_reminders_slot, which starts with session_id.)
        Index(
            "ix_reminders_fallback_of_id",
            "fallback_of_id",
            postgresql_where=sql_text("fallback_of_id IS NOT NULL"),
            sqlite_where=sql_text("fallback_of_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("treatment_sessions.id"))
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
    # For an email sent because the SMS version failed: that SMS reminder.
    fallback_of_id: Mapped[int | None] = mapped_column(ForeignKey("reminders.id"))
    # The lease (WorkerLease.id) of the process that moved it to 'sending': recovery takes it
    # over as soon as that process is certainly gone (aftercare/reminders/leases.py).
    claimed_by: Mapped[str | None] = mapped_column(String(32))

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
    status_updated_at: Mapped[datetime | None]

    reminder: Mapped[Reminder] = relationship(back_populates="delivery_attempts")


class InboundMessage(Base):
    """An SMS received from a patient (or anyone): stored before it is acted on, never dropped."""

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Twilio's MessageSid: a webhook retried by Twilio is recognised and not acted on twice.
    provider_sid: Mapped[str] = mapped_column(String(64), unique=True)
    from_number: Mapped[str] = mapped_column(String(20), index=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    session_id: Mapped[int | None] = mapped_column(ForeignKey("treatment_sessions.id"))
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime]
    # What triage made of it (aftercare.triage.verdict.Kind): opt_out | opt_in | help |
    # booking | checkin_answer | urgent | concern | question | expected | chatter | unrecognised
    kind: Mapped[str] = mapped_column(String(32))
    # emergency | urgent | concern | info
    severity: Mapped[str] = mapped_column(String(16), default="info", server_default="info")
    checkin_answer: Mapped[str | None] = mapped_column(String(32))
    response_text: Mapped[str | None] = mapped_column(Text)


class Flag(Base):
    """Something staff must look at: an urgent reply, a failed delivery, a check-in concern."""

    __tablename__ = "flags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # None for a text from a number no patient has (its inbound message holds the number).
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    session_id: Mapped[int | None] = mapped_column(ForeignKey("treatment_sessions.id"))
    reminder_id: Mapped[int | None] = mapped_column(ForeignKey("reminders.id"))
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    # urgent_reply | checkin_concern | unrecognised_reply | booking_request | opt_out |
    # delivery_failed | stale_reminder | critical_undelivered | checkin_unanswered |
    # opted_out_before_checkin
    kind: Mapped[str] = mapped_column(String(32))
    # emergency | urgent | concern | info; ``urgent`` is true for the first two.
    severity: Mapped[str] = mapped_column(String(16), default="concern", server_default="concern")
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    # The signs triage found (labels from schedules/triage, never the patient's words) and
    # what the patient was told back.
    signs: Mapped[str | None] = mapped_column(String(500))
    told: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    resolved_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))
    resolution_note: Mapped[str | None] = mapped_column(Text)
    # A booking_request resolved by recording the session it asked for: that session.
    booked_session_id: Mapped[int | None] = mapped_column(ForeignKey("treatment_sessions.id"))
    # An emergency or urgent flag pages the on-call rota (aftercare/oncall): someone said
    # "I'm calling" (button or an ACK reply) at this time, which stops the escalation.
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))
    # Paging rounds so far (0: never paged) and when the latest went out; escalation pages the
    # next round once ``paged_at`` is AFTERCARE_ESCALATE_AFTER old. None: nobody left to page.
    page_round: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    paged_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "ix_flags_open",
            "urgent",
            "created_at",
            postgresql_where=sql_text("resolved_at IS NULL"),
            sqlite_where=sql_text("resolved_at IS NULL"),
        ),
    )
