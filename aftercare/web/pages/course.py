"""The "Record a session" form's part in a course of treatment: the known patients it may be
(shown before saving, for staff to choose), what the new session would replace, and the form
filled in from a patient page or a booking request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from aftercare.runtime import Runtime
from aftercare.sessions import course
from aftercare.storage.models import Flag, Patient
from aftercare.validation import ValidationFailed, clean_email, clean_name, clean_phone
from aftercare.web.pages.common import day_month
from aftercare.web.pages.enrol_form import EnrolForm


@dataclass
class CourseView:
    """What the form shows about the patient's course."""

    matches: list[course.PossibleMatch] = field(default_factory=list)
    # The radio to show selected: the staff's own choice (never made for them).
    selected: str = ""
    # The patient the form was opened for ("Record another session"), if any.
    patient: Patient | None = None
    # "Replaces 21 reminders of the session on 3 March", one line per session.
    replaces: list[str] = field(default_factory=list)
    flag: Flag | None = None


def _name(values: EnrolForm) -> str:
    """The name as validation would store it, or "" when it would refuse it: only a name that
    could be saved is looked up (a NUL, for one, is an error from PostgreSQL, not a 422)."""
    try:
        return clean_name(values.name, ("name",)) if values.name.strip() else ""
    except ValidationFailed:
        return ""


def _contact(values: EnrolForm) -> tuple[str | None, str | None]:
    phone = email = None
    try:
        phone = clean_phone(values.phone, ("phone",)) if values.phone.strip() else None
    except ValidationFailed:
        phone = None
    try:
        email = clean_email(values.email, ("email",)) if values.email.strip() else None
    except ValidationFailed:
        email = None
    return phone, email


def course_view(
    db_session: Session,
    rt: Runtime,
    values: EnrolForm,
    *,
    treated_at: datetime | None,
) -> CourseView:
    """The known patients this may be and, for the one chosen (or matched exactly), what a
    session of the form's regimen at ``treated_at`` would replace. Nothing is stored."""
    view = CourseView()
    connection = db_session.connection()
    phone, email = _contact(values)
    name = _name(values)
    if name or phone or email:
        view.matches = course.possible_matches(connection, name=name, phone=phone, email=email)
    chosen = values.chosen_patient_id
    if chosen is not None:
        patient = db_session.get(Patient, chosen)
        if patient is not None and patient.erased_at is None:
            view.patient = patient
            if all(m.patient.id != chosen for m in view.matches):
                view.matches.insert(0, _as_match(db_session, patient))
    view.selected = values.patient_choice
    # What the session would replace: for the patient chosen, else the one it would join.
    exact = next((m.patient.id for m in view.matches if m.exact), None)
    target = values.chosen_patient_id or (exact if not values.patient_choice else None)
    if target is not None and treated_at is not None and values.regimen in rt.registry.ids():
        view.replaces = _replaces(connection, rt, target, values.regimen, treated_at)
    flag_id = values.flag_id
    if flag_id is not None:
        flag = db_session.get(Flag, flag_id)
        if flag is not None and flag.kind == "booking_request" and flag.resolved_at is None:
            view.flag = flag
    return view


def _as_match(db_session: Session, patient: Patient) -> course.PossibleMatch:
    sessions = patient.sessions
    last = max((s.treated_at for s in sessions), default=None)
    return course.PossibleMatch(patient, ("chosen",), False, len(sessions), last)


def _replaces(
    connection: Connection, rt: Runtime, patient_id: int, regimen_id: str, treated_at: datetime
) -> list[str]:
    lines: list[str] = []
    for item in course.preview_replacements(
        connection,
        patient_id=patient_id,
        regimen_id=regimen_id,
        treated_at=treated_at,
        registry=rt.registry,
    ):
        on = day_month(item.session.treated_at, item.session.timezone)
        if item.by_new:
            plural = "" if item.reminders == 1 else "s"
            lines.append(
                f"Replaces {item.reminders} reminder{plural} of the session on {on}: "
                "the patient follows this session's plan from now on."
            )
        else:
            lines.append(
                f"The session on {on} is later than this one: it replaces this session's "
                "plan, so this session's reminders will not be sent."
            )
    return lines


def prefill(values: EnrolForm, patient: Patient) -> EnrolForm:
    """The form for another session of ``patient``: their details filled in and chosen."""
    values.name = patient.name
    values.phone = patient.phone or ""
    values.email = patient.email or ""
    values.timezone = patient.timezone
    values.channels = patient.channel_list
    values.patient_choice = str(patient.id)
    return values


def matches_to_confirm(view: CourseView, values: EnrolForm) -> Sequence[course.PossibleMatch]:
    """Known patients staff have not yet answered about: saving waits for their choice."""
    return view.matches if view.matches and not values.patient_choice else ()
