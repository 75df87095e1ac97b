"""The dashboard (``/``), patient search (``/patients``), the flags queue (``/flags``) and the
audit log (``/audit``, admins only)."""

from __future__ import annotations

import unicodedata
from datetime import time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse

from aftercare.audit import service as audit
from aftercare.errors import Conflict
from aftercare.flags import resolution
from aftercare.oncall.pages import waiting_for_call_back
from aftercare.parsing import ascii_int
from aftercare.planning.quiet import local_instant
from aftercare.sessions.course import OUTCOME_LABELS
from aftercare.validation import ValidationFailed, clean_phone
from aftercare.web.deps import DbSession, RuntimeDep
from aftercare.web.pages import queries
from aftercare.web.pages.auth import CheckedForm, PageAdmin, PageStaff, field
from aftercare.web.pages.common import PageRoute, notice, redirect, render, safe_next

router = APIRouter(route_class=PageRoute, include_in_schema=False)

MAX_ID = 2**31 - 1
MAX_NOTE = 2000
FlagId = Annotated[int, Path(alias="id", ge=1, le=MAX_ID)]
AUDIT_PAGE = 50


@router.get("/", response_class=HTMLResponse)
def dashboard(
    request: Request, rt: RuntimeDep, staff: PageStaff, db_session: DbSession
) -> Response:
    zone = ZoneInfo(rt.settings.default_timezone)
    now = rt.clock.now()
    local = now.astimezone(zone)
    start = local_instant(local, time(0), zone)
    end = local_instant(local + timedelta(days=1), time(0), zone)
    return render(
        rt,
        "dashboard.html",
        staff=staff,
        db_session=db_session,
        zone=zone,
        today=local,
        counts=queries.day_counts(db_session, start=start, end=end, now=now),
        urgent=[row for row in queries.flags_with_patients(db_session) if row.flag.urgent][:5],
        waiting=waiting_for_call_back(db_session, now=now),
        failures=queries.recent_failures(db_session, since=now - timedelta(days=7)),
        recent=queries.recent_sessions(db_session),
        notice=notice(request),
        outcomes=queries.checkin_outcomes(
            db_session, month_start=local_instant(local.replace(day=1), time(0), zone)
        ),
        outcome_labels=OUTCOME_LABELS,
        clinic_warning=rt.settings.clinic_warning(),
        sender_warning=rt.settings.sender_warning(),
        # Only Twilio reports delivery (status callbacks); console and outbox never do.
        no_receipts=rt.settings.sms_transport != "twilio",
    )


@router.get("/patients", response_class=HTMLResponse)
def patients(
    rt: RuntimeDep,
    staff: PageStaff,
    db_session: DbSession,
    q: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    text = " ".join(q.split())
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        text = ""
    try:
        phone: str | None = clean_phone(text, ("q",)) if text else None
    except ValidationFailed:
        phone = None
    return render(
        rt,
        "patients.html",
        staff=staff,
        db_session=db_session,
        q=text,
        patients=queries.find_patients(db_session, text=text, phone=phone),
    )


def _flags_page(
    rt: RuntimeDep,
    staff: PageStaff,
    db_session: DbSession,
    *,
    message: str = "",
    problem: str = "",
    errors: dict[int, str] | None = None,
    notes: dict[int, str] | None = None,
    status_code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    rows = queries.flags_with_patients(db_session)
    return render(
        rt,
        "flags.html",
        staff=staff,
        db_session=db_session,
        status_code=status_code,
        flags=rows,
        zone=ZoneInfo(rt.settings.default_timezone),
        callers=queries.staff_names(db_session, [r.flag.acknowledged_by_id for r in rows]),
        message=message,
        problem=problem,
        errors=errors or {},
        notes=notes or {},
    )


@router.get("/flags", response_class=HTMLResponse)
def flags(request: Request, rt: RuntimeDep, staff: PageStaff, db_session: DbSession) -> Response:
    return _flags_page(rt, staff, db_session, message=notice(request))


def note_problem(note: str) -> str:
    """Why a resolution note cannot be stored, or an empty string."""
    if len(note) > MAX_NOTE:
        return f"The note is longer than {MAX_NOTE} characters."
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" for ch in note):
        return "The note contains control characters."
    return ""


@router.post("/flags/{id}/resolve", response_class=HTMLResponse)
def resolve_flag(
    flag_id: FlagId, rt: RuntimeDep, staff: PageStaff, db_session: DbSession, form: CheckedForm
) -> Response:
    note = field(form, "note", limit=MAX_NOTE + 1).strip()
    problem = note_problem(note)
    if problem:
        return _flags_page(
            rt,
            staff,
            db_session,
            errors={flag_id: problem},
            notes={flag_id: note[:MAX_NOTE]},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    try:
        with db_session.begin_nested():
            resolution.resolve_flag(
                db_session=db_session,
                flag_id=flag_id,
                actor_id=staff.user.id,
                now=rt.clock.now(),
                note=note,
            )
    except Conflict:
        return _flags_page(
            rt,
            staff,
            db_session,
            problem="That flag had already been resolved, perhaps by a colleague.",
            status_code=status.HTTP_409_CONFLICT,
        )
    back = safe_next(field(form, "next", limit=500), "/flags")
    return redirect(f"{back}{'&' if '?' in back else '?'}done=resolved")


@router.get("/audit", response_class=HTMLResponse)
def audit_log(
    *,
    rt: RuntimeDep,
    staff: PageAdmin,
    db_session: DbSession,
    action: Annotated[str, Query(max_length=32)] = "",
    patient: Annotated[str, Query(max_length=12)] = "",
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    number = ascii_int(patient)
    patient_id = number if number is not None and 0 < number <= MAX_ID else None
    chosen = action if action in audit.ACTIONS else ""
    events = audit.list_events(
        db_session=db_session,
        patient_id=patient_id,
        action=chosen or None,
        before_id=before,
        limit=AUDIT_PAGE + 1,
    )
    more = len(events) > AUDIT_PAGE
    events = events[:AUDIT_PAGE]
    return render(
        rt,
        "audit.html",
        staff=staff,
        db_session=db_session,
        events=events,
        actors=queries.staff_names(db_session, [e.actor_id for e in events]),
        patients=queries.patient_names(db_session, [e.patient_id for e in events]),
        zone=ZoneInfo(rt.settings.default_timezone),
        action=chosen,
        patient=str(patient_id) if patient_id else "",
        actions=sorted(audit.ACTIONS),
        older=events[-1].id if more and events else None,
    )
