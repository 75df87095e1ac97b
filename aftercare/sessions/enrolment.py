"""The one way in: every face (the JSON API, the staff form, the CLI, the demo) enrols a session
through :func:`enrol` / :func:`enrol_planned`, which validate, plan, store and audit it.

Works in the caller's transaction (no commit); raises ``ValidationFailed`` (a 422) naming the
field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from aftercare.audit import service as audit
from aftercare.flags.resolution import resolve_audited
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.sessions import course
from aftercare.sessions.service import (
    SessionRequest,
    ValidSession,
    record_session,
    validate_request,
)
from aftercare.storage.models import Flag, Patient, TreatmentSession
from aftercare.validation import FieldError, ValidationFailed


def enrol(
    *,
    db_session: Session,
    request: SessionRequest,
    registry: RegimenRegistry,
    quiet: QuietHours,
    now: datetime,
    actor_id: int | None,
    patient_id: int | None = None,
    match: bool = True,
    booking_flag_id: int | None = None,
) -> TreatmentSession:
    """Validate, plan and store a new session (and its patient); audited as ``enrol``."""
    return enrol_planned(
        db_session=db_session,
        request=request,
        registry=registry,
        quiet=quiet,
        now=now,
        actor_id=actor_id,
        patient_id=patient_id,
        match=match,
        booking_flag_id=booking_flag_id,
    ).session


@dataclass(frozen=True)
class Enrolled:
    session: TreatmentSession
    # What was validated and planned: ``plan`` is the session's reminders as first stored, in
    # due order (superseding may since have moved some: see ``superseded``).
    valid: ValidSession
    # The session was added to a patient already known.
    matched_existing: bool
    # {session id: reminders superseded} by settling the patient's course.
    superseded: dict[int, int] = field(default_factory=dict)


def enrol_planned(
    *,
    db_session: Session,
    request: SessionRequest,
    registry: RegimenRegistry,
    quiet: QuietHours,
    now: datetime,
    actor_id: int | None,
    patient_id: int | None = None,
    match: bool = True,
    booking_flag_id: int | None = None,
) -> Enrolled:
    """As :func:`enrol`, also returning what was validated and planned and whether the patient
    was already known.

    The session goes to ``patient_id`` when given (its details fill any the request leaves
    out); else, when ``match``, to the known patient with the same phone (or email) and name;
    else to a new patient. Adding to a known patient settles the course: a later session of the
    same regimen supersedes what an earlier one has not sent. ``booking_flag_id``: the open
    ``booking_request`` flag this session answers, resolved and linked to it.
    """
    patient: Patient | None = None
    if patient_id is not None:
        patient = _known_patient(db_session, patient_id)
        request = _with_patient_details(request, patient)
    valid = validate_request(request, registry=registry, quiet=quiet, now=now)
    connection = db_session.connection()
    if patient is None and match:
        found = course.find_known_patient(
            connection, name=valid.name, phone=valid.phone, email=valid.email
        )
        if found is not None:
            patient = db_session.scalars(
                select(Patient).where(Patient.id == found).with_for_update()
            ).one()
    if patient is not None:
        _complete_contact(patient, valid)
    session = record_session(
        db_session=db_session, valid=valid, now=now, patient=patient, created_by_id=actor_id
    )
    superseded: dict[int, int] = {}
    if patient is not None:
        superseded = course.settle_course(
            connection, patient_id=patient.id, registry=registry, now=now
        )
    detail: dict[str, audit.DetailValue] = {
        "regimen": valid.regimen.id,
        "channels": [str(c) for c in valid.channels],
        "matched_existing": patient is not None,
    }
    if superseded:
        detail["superseded"] = sum(superseded.values())
    audit.record(
        db_session=db_session,
        action="enrol",
        actor_id=actor_id,
        now=now,
        patient_id=session.patient_id,
        session_id=session.id,
        detail=detail,
    )
    if booking_flag_id is not None:
        _link_booking(db_session, booking_flag_id, session, actor_id=actor_id, now=now)
    db_session.flush()
    return Enrolled(session, valid, patient is not None, superseded)


def _known_patient(db_session: Session, patient_id: int) -> Patient:
    """The patient a session is explicitly added to; a 422 naming ``patient_id`` otherwise."""
    patient = db_session.scalar(select(Patient).where(Patient.id == patient_id).with_for_update())
    if patient is None:
        raise ValidationFailed([FieldError(("patient_id",), f"no patient {patient_id}")])
    if patient.erased_at is not None:
        raise ValidationFailed(
            [FieldError(("patient_id",), f"patient {patient_id} has been erased")]
        )
    return patient


def _with_patient_details(request: SessionRequest, patient: Patient) -> SessionRequest:
    """The request with the patient's stored details wherever it gives none."""
    return replace(
        request,
        name=patient.name if request.name in (None, "") else request.name,
        phone=patient.phone if request.phone in (None, "") else request.phone,
        email=patient.email if request.email in (None, "") else request.email,
        timezone=patient.timezone if request.timezone in (None, "") else request.timezone,
        channels=patient.channel_list if request.channels is None else request.channels,
    )


def _complete_contact(patient: Patient, valid: ValidSession) -> None:
    """A known patient gains a contact detail or channel the new session needs (none that
    they already have is overwritten: that is "Edit contact details")."""
    if patient.phone is None and valid.phone:
        patient.phone = valid.phone
    if patient.email is None and valid.email:
        patient.email = valid.email
    chosen = patient.channel_list
    wanted = [*chosen, *(c for c in valid.channels if c not in chosen)]
    if wanted != chosen:
        patient.channels = ",".join(wanted)
    if valid.discreet is not None:  # an explicit choice at this enrolment is the latest word
        patient.discreet = valid.discreet


def _link_booking(
    db_session: Session,
    flag_id: int,
    session: TreatmentSession,
    *,
    actor_id: int | None,
    now: datetime,
) -> None:
    """Resolve the patient's ``booking_request`` flag by the session just recorded."""
    flag = db_session.get(Flag, flag_id, with_for_update=True)
    if (
        flag is None
        or flag.kind != "booking_request"
        or flag.patient_id != session.patient_id
        or flag.resolved_at is not None
    ):
        raise ValidationFailed(
            [FieldError(("flag",), "is not an open booking request of this patient")]
        )
    resolve_audited(
        db_session,
        flag=flag,
        actor_id=actor_id,
        now=now,
        note=f"Session {session.id} recorded",
        session_id=session.id,
    )
    flag.booked_session_id = session.id
