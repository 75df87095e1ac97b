"""Record a treatment session: validate, plan, and store the session with all its reminders."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, make_transient_to_detached

from aftercare.planning.planner import PlannedReminder, plan
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.regimens.model import Channel, ParameterError, Regimen
from aftercare.storage import bulk
from aftercare.storage.models import Patient, TreatmentSession
from aftercare.validation import (
    FieldError,
    ValidationFailed,
    clean_channels,
    clean_email,
    clean_instant,
    clean_name,
    clean_phone,
    clean_timezone,
)

MAX_FUTURE = timedelta(days=1)


@dataclass
class SessionRequest:
    """What staff enter for one session (raw; validated by :func:`validate_request`)."""

    name: object = None
    phone: object = None
    email: object = None
    timezone: object = None
    channels: object = ("sms", "email")
    treated_at: object = None
    regimen: object = "micro-sclerotherapy"
    parameters: Mapping[str, object] = field(default_factory=dict)
    consent: object = True
    contraindications_checked: object = True
    # Discreet messages for this patient: True, False, or None for the clinic's default.
    discreet: object = None


@dataclass(frozen=True)
class ValidSession:
    name: str
    phone: str | None
    email: str | None
    timezone: str
    channels: tuple[Channel, ...]
    treated_at: datetime
    regimen: Regimen
    parameters: dict[str, int | str]
    plan: list[PlannedReminder]
    discreet: bool | None = None


def _collect(errors: list[FieldError], func: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return func(*args, **kwargs)
    except ValidationFailed as exc:
        errors.extend(exc.errors)
        return None


def validate_request(
    request: SessionRequest,
    *,
    registry: RegimenRegistry,
    quiet: QuietHours,
    now: datetime,
    patient_loc: tuple[str, ...] = ("patient",),
) -> ValidSession:
    """Check every field and plan the regimen; raise ValidationFailed naming each bad field."""
    errors: list[FieldError] = []
    name = _collect(errors, clean_name, request.name, (*patient_loc, "name"))
    channels = _collect(errors, clean_channels, request.channels, (*patient_loc, "channels")) or ()
    phone = email = None
    if "sms" in channels or request.phone not in (None, ""):
        phone = _collect(errors, clean_phone, request.phone, (*patient_loc, "phone"))
    if "email" in channels or request.email not in (None, ""):
        email = _collect(errors, clean_email, request.email, (*patient_loc, "email"))
    zone = _collect(errors, clean_timezone, request.timezone, (*patient_loc, "timezone"))
    treated_at = _collect(errors, clean_instant, request.treated_at, ("treated_at",))
    if request.discreet is not None and not isinstance(request.discreet, bool):
        errors.append(FieldError((*patient_loc, "discreet"), "must be true, false or null"))
    errors += _confirmations(request)
    regimen, parameters = _regimen(request, registry, errors)
    if treated_at is not None and treated_at > now + MAX_FUTURE:
        errors.append(FieldError(("treated_at",), "is more than a day in the future"))
    if errors:
        raise ValidationFailed(errors)
    assert regimen is not None
    assert treated_at is not None
    planned = plan(
        regimen=regimen,
        treated_at=treated_at,
        timezone=zone,
        parameters=parameters,
        channels=channels,
        quiet=quiet,
        recorded_at=max(now, treated_at),
    )
    if _regimen_over(planned, regimen):
        raise ValidationFailed(
            [
                FieldError(
                    ("treated_at",), "is older than the regimen: its aftercare is already over"
                )
            ]
        )
    return ValidSession(
        name=name,
        phone=phone,
        email=email,
        timezone=zone,
        channels=channels,
        treated_at=treated_at,
        regimen=regimen,
        parameters=parameters,
        plan=planned,
        discreet=request.discreet if isinstance(request.discreet, bool) else None,
    )


def _confirmations(request: SessionRequest) -> list[FieldError]:
    """What staff must confirm: the patient's consent and the contraindication checklist."""
    errors: list[FieldError] = []
    if request.consent is not True:
        errors.append(
            FieldError(("consent",), "the patient's consent to messages must be confirmed")
        )
    if request.contraindications_checked is not True:
        errors.append(
            FieldError(
                ("contraindications_checked",),
                "staff must confirm the contraindication checklist before enrolment",
            )
        )
    return errors


def _regimen(
    request: SessionRequest, registry: RegimenRegistry, errors: list[FieldError]
) -> tuple[Regimen | None, dict[str, int | str]]:
    """The regimen asked for and its parameters resolved; ``errors`` gets what is wrong."""
    regimen = None
    if not isinstance(request.regimen, str):
        errors.append(FieldError(("regimen",), "is required"))
    else:
        try:
            regimen = registry.get(request.regimen)
        except KeyError as exc:
            errors.append(FieldError(("regimen",), str(exc.args[0])))
    parameters: dict[str, int | str] = {}
    if regimen is not None:
        if not isinstance(request.parameters, Mapping):
            errors.append(FieldError(("parameters",), "must be an object"))
        else:
            try:
                parameters = regimen.resolve_parameters(dict(request.parameters))
            except ParameterError as exc:
                errors.append(FieldError(("parameters", exc.name), exc.reason))
    return regimen, parameters


def _regimen_over(planned: list[PlannedReminder], regimen: Regimen) -> bool:
    """Nothing left to do but the catch-up-always steps (welcome, warnings): too late."""
    always = {s.id for s in regimen.steps if s.catch_up == "always"}
    return all(r.state == "skipped" or r.step in always for r in planned)


def patient_values(valid: ValidSession, now: datetime) -> dict[str, Any]:
    """A new patient's row, as every enrolment path inserts it."""
    return {
        "public_id": secrets.token_hex(16),
        "name": valid.name,
        "phone": valid.phone,
        "email": valid.email,
        "timezone": valid.timezone,
        "channels": ",".join(valid.channels),
        "discreet": valid.discreet,
        "created_at": now,
    }


def session_values(
    valid: ValidSession, patient_id: int | None, now: datetime, *, created_by_id: int | None = None
) -> dict[str, Any]:
    """A new session's row, as every enrolment path inserts it."""
    return {
        "patient_id": patient_id,
        "regimen_id": valid.regimen.id,
        "regimen_version": valid.regimen.version,
        "treated_at": valid.treated_at,
        "recorded_at": now,
        "timezone": valid.timezone,
        "parameters": dict(valid.parameters),
        "channels": ",".join(valid.channels),
        "status": "active",
        "consent": True,
        "contraindications_checked": True,
        "created_by_id": created_by_id,
    }


def record_session(
    *,
    db_session: Session,
    valid: ValidSession,
    now: datetime,
    patient: Patient | None = None,
    created_by_id: int | None = None,
) -> TreatmentSession:
    """Store the patient (unless given), the session and every planned reminder; no commit.

    The rows go through the bulk writer (:func:`aftercare.storage.bulk.store_session`), not the
    unit of work: building the instrumented objects and flushing them cost most of an
    enrolment. The session comes back as a persistent ORM object holding
    exactly what was inserted (no query to read it back); its ``reminders`` are loaded from
    the database if asked for.
    """
    connection = db_session.connection()
    if patient is not None:
        db_session.flush()
    new_patient = patient_values(valid, now) if patient is None else None
    values = session_values(
        valid, None if patient is None else patient.id, now, created_by_id=created_by_id
    )
    session_id, values["patient_id"] = bulk.store_session(
        connection, session=values, patient=new_patient, plan=valid.plan, now=now
    )
    # Every column set (those the INSERT left NULL too), so no attribute is expired and reading
    # one never queries; then attached as if loaded.
    session = TreatmentSession(
        id=session_id,
        **values,
        checkin_answer=None,
        checkin_answered_at=None,
        paused_at=None,
        cancelled_at=None,
    )
    make_transient_to_detached(session)
    db_session.add(session)
    return session
