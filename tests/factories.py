"""Factories for test data, one per main row.

A treatment session (with its patient and planned reminders) is recorded through the real
service (:func:`enrol`); the other rows are written directly by ``add_*`` with valid defaults.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from aftercare.runtime import Runtime
from aftercare.sessions.service import SessionRequest, record_session, validate_request
from aftercare.storage.models import (
    AuditEvent,
    Base,
    Flag,
    InboundMessage,
    Patient,
    Reminder,
    StaffUser,
    TreatmentSession,
)

PATIENT_NAME = "Philippa Quennell"
PATIENT_PHONE_LOCAL = "07911 123456"
PATIENT_PHONE = "+447911123456"
PATIENT_EMAIL = "philippa.quennell@example.org"

RowT = TypeVar("RowT", bound=Base)


def session_request(**overrides: Any) -> SessionRequest:
    values: dict[str, Any] = {
        "name": PATIENT_NAME,
        "phone": PATIENT_PHONE_LOCAL,
        "email": PATIENT_EMAIL,
        "timezone": "Europe/London",
        "channels": ("sms", "email"),
        "treated_at": None,
        "regimen": "micro-sclerotherapy",
        "parameters": {},
    }
    values.update(overrides)
    return SessionRequest(**values)


def enrol(rt: Runtime, *, now: datetime | None = None, **overrides: Any) -> int:
    """Record a session through the real service; returns the session id."""
    now = now or rt.clock.now()
    overrides.setdefault("treated_at", now.isoformat())
    valid = validate_request(
        session_request(**overrides), registry=rt.registry, quiet=rt.quiet, now=now
    )
    with rt.db.session() as db_session:
        return record_session(db_session=db_session, valid=valid, now=now).id


# Rows written directly, for what no service writes on its own (a patient with no session, a
# reply or a flag with given fields, a staff member without a password). Each takes the open
# session, adds one row with valid defaults and the given overrides, flushes, returns the row.


def _add(db_session: Session, row: RowT) -> RowT:
    db_session.add(row)
    db_session.flush()
    return row


def add_staff(
    db_session: Session,
    *,
    now: datetime,
    email: str = "nurse@example.org",
    role: str = "staff",
    password_hash: str = "-",
    **overrides: Any,
) -> StaffUser:
    """A staff member (``password_hash="-"`` matches no password: one who never logs in)."""
    return _add(
        db_session,
        StaffUser(email=email, role=role, password_hash=password_hash, created_at=now, **overrides),
    )


def add_patient(db_session: Session, *, now: datetime, **overrides: Any) -> Patient:
    """A patient with no session (one recorded with a session comes from :func:`enrol`)."""
    values: dict[str, Any] = {
        "public_id": secrets.token_hex(16),
        "name": PATIENT_NAME,
        "phone": PATIENT_PHONE,
        "email": PATIENT_EMAIL,
        "timezone": "Europe/London",
        "channels": "sms,email",
        "created_at": now,
    }
    return _add(db_session, Patient(**{**values, **overrides}))


def add_session(
    db_session: Session, *, patient_id: int, now: datetime, **overrides: Any
) -> TreatmentSession:
    """A session row with no reminders (a planned one, through the service: :func:`enrol`)."""
    values: dict[str, Any] = {
        "patient_id": patient_id,
        "regimen_id": "micro-sclerotherapy",
        "regimen_version": 1,
        "treated_at": now,
        "recorded_at": now,
        "timezone": "Europe/London",
        "parameters": {},
        "channels": "sms,email",
        "status": "active",
        "consent": True,
        "contraindications_checked": True,
    }
    return _add(db_session, TreatmentSession(**{**values, **overrides}))


def add_reminder(
    db_session: Session, *, session_id: int, now: datetime, **overrides: Any
) -> Reminder:
    """One reminder, due ``now`` and scheduled unless told otherwise."""
    values: dict[str, Any] = {
        "session_id": session_id,
        "step": "welcome",
        "occurrence": 0,
        "channel": "sms",
        "template": "welcome",
        "nominal_at": now,
        "due_at": now,
        "state": "scheduled",
        "updated_at": now,
    }
    return _add(db_session, Reminder(**{**values, **overrides}))


def add_inbound(
    db_session: Session, *, body: str, received_at: datetime, **overrides: Any
) -> InboundMessage:
    """A reply as the webhook stores it (an unrecognised one from the patient's number)."""
    values: dict[str, Any] = {
        "provider_sid": "SM" + secrets.token_hex(16),
        "from_number": PATIENT_PHONE,
        "kind": "unrecognised",
    }
    return _add(
        db_session,
        InboundMessage(body=body, received_at=received_at, **{**values, **overrides}),
    )


def add_flag(db_session: Session, *, kind: str, text: str, now: datetime, **overrides: Any) -> Flag:
    """An open flag for staff."""
    values: dict[str, Any] = {"urgent": False}
    return _add(db_session, Flag(kind=kind, text=text, created_at=now, **{**values, **overrides}))


def add_audit(db_session: Session, *, action: str, at: datetime, **overrides: Any) -> AuditEvent:
    """An audit event (ids only, as the services write them)."""
    return _add(db_session, AuditEvent(action=action, at=at, **overrides))
