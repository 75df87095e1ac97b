"""``/patients/{id}``: contact details, each session's timeline, replies and flags; the forms to
edit contact details and to pause, resume or cancel a session."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from aftercare.errors import Conflict
from aftercare.patients import service as patient_service
from aftercare.regimens.model import Regimen
from aftercare.reminders import states
from aftercare.runtime import Runtime
from aftercare.sessions import actions
from aftercare.sessions.course import OUTCOME_LABELS
from aftercare.storage.models import Patient
from aftercare.validation import FieldError, ValidationFailed
from aftercare.web.deps import DbSession, RuntimeDep
from aftercare.web.pages import queries
from aftercare.web.pages.auth import CheckedForm, PageStaff, StaffSession
from aftercare.web.pages.auth import field as text_field
from aftercare.web.pages.common import PageRoute, error_text, notice, redirect, render
from aftercare.web.pages.regimen import typed_zone, zone_names
from aftercare.web.pages.timeline import session_view, still_to_come

router = APIRouter(route_class=PageRoute, include_in_schema=False)

MAX_ID = 2**31 - 1
PatientId = Annotated[int, Path(alias="id", ge=1, le=MAX_ID)]
SessionId = Annotated[int, Path(alias="id", ge=1, le=MAX_ID)]
# Upcoming messages shown before the rest are folded away.
UPCOMING_SHOWN: Final = 5
# The course's next messages, across its sessions, shown at the top of the page.
TO_COME_SHOWN: Final = 6
EDIT_LABELS: Final = {
    "name": "Patient name",
    "phone": "Mobile phone",
    "email": "Email address",
    "timezone": "Time zone",
    "channels": "Send by",
}
REPLY_KINDS: Final = {
    "opt_out": "Stopped SMS",
    "opt_in": "Restarted SMS",
    "help": "Asked for help",
    "checkin_answer": "Check-in answer",
    "urgent": "Urgent",
    "unrecognised": "Reply",
}


@dataclass
class ContactForm:
    name: str
    phone: str
    email: str
    timezone: str
    channels: list[str]

    @classmethod
    def of(cls, patient: Patient) -> ContactForm:
        return cls(
            patient.name,
            patient.phone or "",
            patient.email or "",
            patient.timezone,
            patient.channel_list,
        )

    @classmethod
    def parse(cls, form: FormData) -> ContactForm:
        return cls(
            name=text_field(form, "name", limit=300),
            phone=text_field(form, "phone", limit=60),
            email=text_field(form, "email", limit=300),
            timezone=typed_zone(text_field(form, "timezone", limit=100).strip()),
            channels=[c for c in form.getlist("channels") if isinstance(c, str)][:4],
        )


def _patient_page(
    rt: Runtime,
    staff: StaffSession,
    db_session: Session,
    patient: Patient,
    *,
    message: str = "",
    problem: str = "",
    contact: ContactForm | None = None,
    errors: Sequence[FieldError] = (),
    status_code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    views = []
    for session in patient_service.patient_sessions(db_session=db_session, patient_id=patient.id):
        try:
            regimen: Regimen | None = rt.registry.get(session.regimen_id)
        except KeyError:
            regimen = None
        views.append(session_view(db_session, session, regimen))
    for number, view in enumerate(views, start=1):
        view.number = number
    edit_errors: dict[str, str] = {}
    for error in errors:
        key = str(error.loc[0]) if error.loc else "name"
        edit_errors.setdefault(key, error_text(EDIT_LABELS.get(key, key), error.msg))
    return render(
        rt,
        "patient.html",
        staff=staff,
        db_session=db_session,
        status_code=status_code,
        patient=patient,
        sessions=views[::-1],
        course=views,
        to_come=still_to_come(views)[:TO_COME_SHOWN],
        to_come_total=len(still_to_come(views)),
        outcome_labels=OUTCOME_LABELS,
        flags=queries.patient_flags(db_session, patient_id=patient.id),
        clinic_zone=ZoneInfo(rt.settings.default_timezone),
        contact=contact or ContactForm.of(patient),
        edit_errors=edit_errors,
        edit_open=bool(errors),
        zones=zone_names(),
        message=message,
        problem=problem,
        upcoming_shown=UPCOMING_SHOWN,
        reply_kinds=REPLY_KINDS,
    )


@router.get("/patients/{id}", response_class=HTMLResponse)
def patient_page(
    patient_id: PatientId, request: Request, rt: RuntimeDep, staff: PageStaff, db_session: DbSession
) -> Response:
    patient = patient_service.get_patient(db_session=db_session, patient_id=patient_id)
    return _patient_page(rt, staff, db_session, patient, message=notice(request))


@router.post("/patients/{id}/edit", response_class=HTMLResponse)
def edit_contact(
    patient_id: PatientId,
    rt: RuntimeDep,
    staff: PageStaff,
    db_session: DbSession,
    form: CheckedForm,
) -> Response:
    patient = patient_service.get_patient(db_session=db_session, patient_id=patient_id)
    contact = ContactForm.parse(form)
    try:
        with db_session.begin_nested():
            patient_service.update_patient(
                db_session=db_session,
                patient_id=patient_id,
                changes={
                    "name": contact.name,
                    "phone": contact.phone,
                    "email": contact.email,
                    "timezone": contact.timezone,
                    "channels": contact.channels,
                },
                actor_id=staff.user.id,
                now=rt.clock.now(),
                registry=rt.registry,
                quiet=rt.quiet,
            )
    except ValidationFailed as exc:
        db_session.refresh(patient)
        return _patient_page(
            rt,
            staff,
            db_session,
            patient,
            contact=contact,
            errors=exc.errors,
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    except Conflict as exc:
        return _conflict(rt, staff, db_session, patient, exc)
    return redirect(f"/patients/{patient_id}?done=edited")


def _conflict(
    rt: Runtime, staff: StaffSession, db_session: Session, patient: Patient, exc: Exception
) -> HTMLResponse:
    db_session.refresh(patient)
    return _patient_page(
        rt,
        staff,
        db_session,
        patient,
        problem=f"Nothing was changed: {exc}. The page below shows how things stand now.",
        status_code=status.HTTP_409_CONFLICT,
    )


def _session_action(
    verb: str, session_id: int, rt: Runtime, staff: StaffSession, db_session: Session
) -> Response:
    session = actions.get_session(db_session=db_session, session_id=session_id)
    now = rt.clock.now()
    try:
        with db_session.begin_nested():
            if verb == "pause":
                actions.pause_session(
                    db_session=db_session, session_id=session_id, actor_id=staff.user.id, now=now
                )
            elif verb == "resume":
                actions.resume_session(
                    db_session=db_session,
                    session_id=session_id,
                    actor_id=staff.user.id,
                    now=now,
                    quiet=rt.quiet,
                )
            else:
                actions.cancel_session(
                    db_session=db_session, session_id=session_id, actor_id=staff.user.id, now=now
                )
    except Conflict as exc:
        db_session.refresh(session)
        patient = patient_service.get_patient(db_session=db_session, patient_id=session.patient_id)
        return _conflict(rt, staff, db_session, patient, exc)
    done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[verb]
    return redirect(f"/patients/{session.patient_id}?done={done}")


@router.post("/sessions/{id}/pause")
def pause(
    session_id: SessionId,
    rt: RuntimeDep,
    staff: PageStaff,
    db_session: DbSession,
    form: CheckedForm,
) -> Response:
    return _session_action("pause", session_id, rt, staff, db_session)


@router.post("/sessions/{id}/resume")
def resume(
    session_id: SessionId,
    rt: RuntimeDep,
    staff: PageStaff,
    db_session: DbSession,
    form: CheckedForm,
) -> Response:
    return _session_action("resume", session_id, rt, staff, db_session)


@router.get("/sessions/{id}/cancel", response_class=HTMLResponse)
def confirm_cancel(
    session_id: SessionId, rt: RuntimeDep, staff: PageStaff, db_session: DbSession
) -> Response:
    """Cancelling cannot be undone, so it is asked for on a page of its own first."""
    session = actions.get_session(db_session=db_session, session_id=session_id)
    patient = patient_service.get_patient(db_session=db_session, patient_id=session.patient_id)
    reminders = actions.session_reminders(db_session=db_session, session_id=session_id)
    return render(
        rt,
        "cancel.html",
        staff=staff,
        db_session=db_session,
        session=session,
        patient=patient,
        pending=sum(1 for r in reminders if r.state in states.PENDING),
    )


@router.post("/sessions/{id}/cancel")
def cancel(
    session_id: SessionId,
    rt: RuntimeDep,
    staff: PageStaff,
    db_session: DbSession,
    form: CheckedForm,
) -> Response:
    return _session_action("cancel", session_id, rt, staff, db_session)
