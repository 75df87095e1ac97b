"""Request and response models of the JSON API (``/api/v1``).

Requests are checked for shape here; what the values mean (a mobile number, an IANA zone, a
parameter within its regimen's range) is checked by the same service code as the CLI and the
CSV import, so every face refuses the same input with the same message.

Instants are ISO-8601 strings with an explicit offset (``2026-03-02T10:30:00+00:00``), as the
CLI prints them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

Instant = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
ChannelName = Literal["sms", "email"]
# Free text staff type: line breaks and tabs, but no other control characters (PostgreSQL
# refuses NUL, and none belongs in a note).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


def iso(value: datetime) -> str:
    return value.isoformat()


def iso_or_none(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Errors -------------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    """Every error but validation: ``{"detail": "what is wrong"}``."""

    detail: str


class FieldErrorOut(BaseModel):
    loc: list[str | int] = Field(description='Where: e.g. ["body", "patient", "phone"].')
    msg: str


class ValidationErrorOut(BaseModel):
    """A 422: each bad field by its location and the reason."""

    detail: list[FieldErrorOut]


# Sessions -----------------------------------------------------------------------------------


class PatientIn(_In):
    name: str = Field(min_length=1, max_length=200, examples=["Jane Doe"])
    phone: str | None = Field(
        default=None, max_length=40, description="Required when SMS is chosen (default GB)."
    )
    email: str | None = Field(
        default=None, max_length=254, description="Required when email is chosen."
    )
    timezone: str | None = Field(
        default=None,
        max_length=64,
        description="IANA zone; the clinic's AFTERCARE_DEFAULT_TIMEZONE when absent.",
        examples=["Europe/London"],
    )
    channels: list[ChannelName] = Field(default=["sms", "email"], min_length=1, max_length=2)
    discreet: StrictBool | None = Field(
        default=None,
        description="Discreet messages: the first line of each SMS and each email subject say "
        "only that there is a message from the clinic. Absent or null: the clinic's "
        "AFTERCARE_DISCREET_DEFAULT.",
    )


class SessionIn(_In):
    patient: PatientIn | None = Field(
        default=None,
        description="Who was treated. A known patient (same phone, or same email when there is "
        "no phone, and the same name ignoring case and spacing) gets the session added.",
    )
    patient_id: int | None = Field(
        default=None,
        ge=1,
        le=2**31 - 1,
        description="Instead of patient: add the session to this known patient.",
    )
    treated_at: Instant = Field(max_length=64, examples=["2026-03-02T10:30:00+00:00"])
    regimen: str = Field(default="micro-sclerotherapy", min_length=1, max_length=64)
    parameters: dict[str, StrictInt | StrictStr] = Field(
        default_factory=dict,
        max_length=20,
        description="Regimen parameters, e.g. daily_days (7|14) and checkin_week (8..13).",
        examples=[{"daily_days": 14, "checkin_week": 10}],
    )
    # Strict: JSON has booleans, and "true", "yes" or 1 is not staff confirming anything.
    consent: StrictBool = Field(description="The patient consents to messages (must be true).")
    contraindications_checked: StrictBool = Field(
        description="Staff confirmed the contraindication checklist (must be true)."
    )


class PlannedReminderOut(BaseModel):
    step: str
    channel: str
    template: str
    due_utc: Instant
    due_local: Instant
    state: str


class SessionCreatedOut(BaseModel):
    id: int
    patient_id: int
    matched_existing: bool = Field(
        description="The session was added to a patient already known (or to patient_id)."
    )
    reminders: list[PlannedReminderOut]


class AttemptOut(BaseModel):
    """One call to a provider. The provider's error text is left out (it can quote a number)."""

    id: int
    transport: str
    started_at: Instant
    finished_at: Instant | None
    outcome: str
    provider_status: str | None
    error_code: str | None
    status_updated_at: Instant | None


class ReminderOut(BaseModel):
    id: int
    step: str
    occurrence: int
    channel: str
    template: str
    due_utc: Instant
    due_local: Instant
    state: str
    critical: bool
    reason: str | None
    sent_at: Instant | None
    attempts: list[AttemptOut]


class ReplyOut(BaseModel):
    id: int
    received_at: Instant
    kind: str
    checkin_answer: str | None
    body: str


class SessionOut(BaseModel):
    id: int
    patient_id: int
    regimen: str
    regimen_version: int
    treated_at: Instant
    recorded_at: Instant
    timezone: str
    channels: list[str]
    parameters: dict[str, Any]
    status: str
    paused_at: Instant | None
    cancelled_at: Instant | None
    checkin_answer: str | None
    checkin_outcome: str | None = Field(
        description="The check-in answer as an outcome: faded, fading or dark_or_worried."
    )
    reminders: list[ReminderOut]
    replies: list[ReplyOut]


class SessionStatusOut(BaseModel):
    id: int
    status: str
    reminders: dict[str, int] = Field(description="How many reminders are in each state.")


# Patients -----------------------------------------------------------------------------------


class PatientPatch(_In):
    """Only the fields given are changed; ``null`` removes a phone or email not in use."""

    name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=40)
    email: str | None = Field(default=None, max_length=254)
    timezone: str | None = Field(default=None, max_length=64)
    channels: list[ChannelName] | None = Field(default=None, max_length=2)


class PatientSessionOut(BaseModel):
    id: int
    regimen: str
    treated_at: Instant
    status: str
    checkin_answer: str | None
    checkin_outcome: str | None


class PatientOut(BaseModel):
    id: int
    name: str
    phone: str | None
    email: str | None
    timezone: str
    channels: list[str]
    created_at: Instant
    sms_opted_out_at: Instant | None
    email_opted_out_at: Instant | None
    sms_blocked_at: Instant | None
    erased_at: Instant | None
    sessions: list[PatientSessionOut]


# Flags and audit ----------------------------------------------------------------------------


class FlagOut(BaseModel):
    id: int
    patient_id: int | None = Field(description="None for a text from a number no patient has.")
    session_id: int | None
    kind: str
    severity: Literal["emergency", "urgent", "concern", "info"]
    created_at: Instant
    text: str


class ResolveIn(_In):
    note: str = Field(default="", max_length=2000, pattern=NO_CONTROL_CHARACTERS)


class FlagResolvedOut(FlagOut):
    resolved_at: Instant
    resolved_by_id: int | None


class AuditEventOut(BaseModel):
    id: int
    at: Instant
    actor_id: int | None
    action: str
    patient_id: int | None
    session_id: int | None
    detail: dict[str, Any]
