"""Factories for test data: valid sessions recorded through the real service."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aftercare.runtime import Runtime
from aftercare.sessions.service import SessionRequest, record_session, validate_request

PATIENT_NAME = "Philippa Quennell"
PATIENT_PHONE_LOCAL = "07911 123456"
PATIENT_PHONE = "+447911123456"
PATIENT_EMAIL = "philippa.quennell@example.org"


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
