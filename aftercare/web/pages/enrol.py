"""``/sessions/new``: record a treatment session, with a preview of its timeline.

One form, two buttons. "Preview" plans the timeline from the timing fields (zone, channels,
treatment time, regimen parameters) and stores nothing; "Save" enrols through
:func:`aftercare.sessions.enrolment.enrol`. Both re-render the form with every value kept and each
error next to its field. The optional script (``/static/preview.js``) only asks for the same
"Preview" in the background as fields change.

A course of treatment: the form shows the known patients the person may be (same phone or
email, or same name) and saves only once staff have chosen one of them or "a new patient"; the
preview says what the new session replaces. ``?patient=ID`` opens it filled in for another
session of a known patient; ``&flag=ID`` resolves that booking request when the session is saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Final
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from aftercare.patients import service as patient_service
from aftercare.planning.planner import PlannedReminder
from aftercare.regimens.model import Regimen
from aftercare.runtime import Runtime
from aftercare.sessions import enrolment
from aftercare.sessions.service import SessionRequest, validate_request
from aftercare.validation import FieldError, ValidationFailed
from aftercare.web.deps import DbSession, RuntimeDep
from aftercare.web.pages.auth import CheckedForm, PageStaff, StaffSession
from aftercare.web.pages.auth import field as text_field
from aftercare.web.pages.common import DATE_FORMAT, PageRoute, error_text, redirect, render
from aftercare.web.pages.course import CourseView, course_view, matches_to_confirm, prefill
from aftercare.web.pages.enrol_form import (
    CONTRAINDICATIONS,
    INSTEAD,
    LABELS,
    TIMING,
    Checked,
    EnrolForm,
    check_timing,
    field_id,
    form_position,
    merge_errors,
    param_ids,
    session_request,
)
from aftercare.web.pages.preview import MessageText, message_texts
from aftercare.web.pages.regimen import param_fields, preview_rows, zone_names

router = APIRouter(route_class=PageRoute, include_in_schema=False)

MAX_ID = 2**31 - 1
CHOOSE_PATIENT: Final = (
    "This may be a patient you already know: choose them below, or choose a new patient"
)


def _page(
    rt: Runtime,
    staff: StaffSession,
    db_session: Session,
    values: EnrolForm,
    *,
    errors: Sequence[FieldError] = (),
    planned: Sequence[PlannedReminder] = (),
    regimen: Regimen | None = None,
    previewed: bool = False,
    status_code: int = status.HTTP_200_OK,
    treated_at: datetime | None = None,
    known: CourseView | None = None,
) -> HTMLResponse:
    if known is None:
        known = course_view(db_session, rt, values, treated_at=treated_at)
    if regimen is None and values.regimen in rt.registry.ids():
        regimen = rt.registry.get(values.regimen)
    labels = dict(LABELS)
    if regimen is not None:
        labels.update({f"param-{p.name}": p.label for p in regimen.parameters.values()})
    by_field: dict[str, str] = {}
    summary: list[tuple[str, str]] = []
    for error in errors:
        fid = field_id(error.loc)
        label = labels.get(fid, fid.replace("-", " ").capitalize())
        text = INSTEAD.get(fid) or error_text(label, error.msg)
        if fid not in by_field:
            by_field[fid] = text
            summary.append((fid, text))
    summary.sort(key=lambda item: form_position(item[0]))  # stable: params keep their order
    return render(
        rt,
        "enrol.html",
        staff=staff,
        db_session=db_session,
        status_code=status_code,
        values=values,
        regimens=[rt.registry.get(i) for i in rt.registry.ids()],
        params=param_fields(regimen, values.parameters),
        contraindications=CONTRAINDICATIONS,
        zones=zone_names(),
        errors=by_field,
        summary=summary,
        rows=preview_rows(planned, regimen) if planned and regimen else [],
        texts=_texts(rt, values, planned, regimen, treated_at),
        to_send=sum(1 for p in planned if p.state != "skipped"),
        zone=values.timezone if planned else "",
        previewed=previewed,
        known=known,
        discreet_default=rt.settings.discreet_default,
    )


def _texts(
    rt: Runtime,
    values: EnrolForm,
    planned: Sequence[PlannedReminder],
    regimen: Regimen | None,
    treated_at: datetime | None,
) -> dict[tuple[str, int], list[MessageText]]:
    """The preview's messages as the patient will read them (with the name entered)."""
    if not planned or regimen is None or treated_at is None:
        return {}
    return message_texts(
        rt=rt,
        regimen=regimen,
        planned=planned,
        patient_name=values.name or "Patient",
        timezone=values.timezone,
        treated_at=treated_at,
        parameters=regimen.resolve_parameters(dict(values.parameters)),
        discreet=values.discreet_choice is True
        or (values.discreet_choice is None and rt.settings.discreet_default),
    )


def _defaults(rt: Runtime) -> EnrolForm:
    zone = rt.settings.default_timezone
    local = rt.clock.now().astimezone(ZoneInfo(zone))
    ids = rt.registry.ids()
    return EnrolForm(
        timezone=zone,
        treated_date=f"{local:{DATE_FORMAT}}",
        treated_time=f"{local:%H:%M}",
        regimen="micro-sclerotherapy" if "micro-sclerotherapy" in ids else (ids[0] if ids else ""),
    )


@router.get("/sessions/new", response_class=HTMLResponse)
def enrol_form(
    rt: RuntimeDep,
    staff: PageStaff,
    db_session: DbSession,
    patient: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    flag: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    """The form; ``?patient=ID`` fills in a known patient ("Record another session"), and
    ``&flag=ID`` names the booking request the session answers."""
    values = _defaults(rt)
    if patient is not None:
        known = patient_service.get_patient(db_session=db_session, patient_id=patient)
        if known.erased_at is None:
            prefill(values, known)
    if flag is not None:
        values.flag = str(flag)
    return _page(rt, staff, db_session, values)


@router.post("/sessions/new", response_class=HTMLResponse)
def enrol(rt: RuntimeDep, staff: PageStaff, db_session: DbSession, form: CheckedForm) -> Response:
    values = EnrolForm.parse(form)
    now = rt.clock.now()
    checked, planned = check_timing(values, rt, now)
    if text_field(form, "action") != "save":
        timing_errors = [
            e for e in checked.errors if field_id(e.loc) in TIMING | param_ids(checked)
        ]
        return _page(
            rt,
            staff,
            db_session,
            values,
            errors=timing_errors,
            planned=planned,
            regimen=checked.regimen,
            previewed=True,
            treated_at=checked.treated_at,
        )
    request = session_request(values, checked)
    known = course_view(db_session, rt, values, treated_at=checked.treated_at)
    if checked.errors:
        errors = _all_errors(checked, request, rt, now)
        return _invalid(
            rt,
            staff,
            db_session,
            values,
            errors=errors,
            planned=planned,
            checked=checked,
            known=known,
        )
    if matches_to_confirm(known, values):
        # Possibly someone already known: staff choose before anything is stored.
        return _invalid(
            rt,
            staff,
            db_session,
            values,
            errors=[FieldError(("patient_choice",), CHOOSE_PATIENT)],
            planned=planned,
            checked=checked,
            known=known,
        )
    chosen = values.chosen_patient_id
    try:
        with db_session.begin_nested():
            enrolled = enrolment.enrol_planned(
                db_session=db_session,
                request=request,
                registry=rt.registry,
                quiet=rt.quiet,
                now=now,
                actor_id=staff.user.id,
                patient_id=chosen,
                match=False,
                booking_flag_id=values.flag_id,
            )
    except ValidationFailed as exc:
        return _invalid(
            rt,
            staff,
            db_session,
            values,
            errors=exc.errors,
            planned=planned,
            checked=checked,
            known=known,
        )
    done = "course" if enrolled.matched_existing else "enrolled"
    return redirect(f"/patients/{enrolled.session.patient_id}?done={done}")


def _invalid(
    rt: Runtime,
    staff: StaffSession,
    db_session: Session,
    values: EnrolForm,
    *,
    errors: Sequence[FieldError],
    planned: Sequence[PlannedReminder],
    checked: Checked,
    known: CourseView | None = None,
) -> HTMLResponse:
    return _page(
        rt,
        staff,
        db_session,
        values,
        errors=errors,
        planned=planned,
        regimen=checked.regimen,
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        treated_at=checked.treated_at,
        known=known,
    )


def _all_errors(
    checked: Checked, request: SessionRequest, rt: Runtime, now: datetime
) -> list[FieldError]:
    """The form's own errors and the service's, so every field is reported at once."""
    try:
        validate_request(request, registry=rt.registry, quiet=rt.quiet, now=now)
    except ValidationFailed as exc:
        return merge_errors(checked, exc.errors)
    return list(checked.errors)
