"""On-call pages: one flag's page (the link a page carries) with "I'm calling", and the admin
page of the on-call rota (add, remove, reorder). Server-rendered, CSRF-checked forms."""

from __future__ import annotations

from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Response, status
from fastapi.responses import HTMLResponse

from aftercare.oncall import rota as rota_service
from aftercare.oncall.ack import acknowledge
from aftercare.storage.models import Flag, StaffUser
from aftercare.web.deps import DbSession, RuntimeDep
from aftercare.web.pages import queries
from aftercare.web.pages.auth import CheckedForm, PageAdmin, PageStaff, field
from aftercare.web.pages.common import PageRoute, redirect, render

router = APIRouter(route_class=PageRoute, include_in_schema=False)

MAX_ID = 2**31 - 1
FlagId = Annotated[int, Path(alias="id", ge=1, le=MAX_ID)]
StaffId = Annotated[int, Path(alias="id", ge=1, le=MAX_ID)]


def _flag_page(
    rt: RuntimeDep,
    staff: PageStaff,
    db_session: DbSession,
    flag_id: int,
    *,
    message: str = "",
    status_code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    rows = [row for row in queries.flags_with_patients(db_session) if row.flag.id == flag_id]
    problem = ""
    if not rows:
        flag = db_session.get(Flag, flag_id)
        problem = (
            "There is no such flag."
            if flag is None
            else "This flag has been resolved: nobody needs to call back about it now."
        )
    return render(
        rt,
        "flags.html",
        staff=staff,
        db_session=db_session,
        status_code=status_code if rows or problem.startswith("This") else 404,
        flags=rows,
        single=True,
        zone=ZoneInfo(rt.settings.default_timezone),
        message=message,
        problem=problem,
        errors={},
        notes={},
        callers=queries.staff_names(db_session, [r.flag.acknowledged_by_id for r in rows]),
    )


@router.get("/flags/{id}", response_class=HTMLResponse)
def flag_page(flag_id: FlagId, rt: RuntimeDep, staff: PageStaff, db_session: DbSession) -> Response:
    """One flag: the page a page links to."""
    return _flag_page(rt, staff, db_session, flag_id)


@router.post("/flags/{id}/acknowledge", response_class=HTMLResponse)
def acknowledge_flag(
    flag_id: FlagId, rt: RuntimeDep, staff: PageStaff, db_session: DbSession, form: CheckedForm
) -> Response:
    """ "I'm calling": this staff member takes the call back; nobody else is paged."""
    del form  # checked for its CSRF token only
    if db_session.get(Flag, flag_id) is None:
        return _flag_page(rt, staff, db_session, flag_id)
    with db_session.begin_nested():
        done = acknowledge(
            db_session, flag_id=flag_id, staff_id=staff.user.id, now=rt.clock.now(), via="button"
        )
    message = (
        "Noted: you are calling back. Nobody else will be paged."
        if done
        else "Someone is already calling back about this flag, or it is resolved."
    )
    return _flag_page(rt, staff, db_session, flag_id, message=message)


def _rota_page(
    rt: RuntimeDep,
    staff: PageAdmin,
    db_session: DbSession,
    *,
    message: str = "",
    error: str = "",
    field_errors: dict[str, str] | None = None,
    email: str = "",
    phone: str = "",
    status_code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    from sqlalchemy import select

    members = rota_service.rota(db_session)
    others = list(
        db_session.scalars(
            select(StaffUser)
            .where(StaffUser.on_call_position.is_(None), StaffUser.disabled_at.is_(None))
            .order_by(StaffUser.email)
        )
    )
    return render(
        rt,
        "on_call.html",
        staff=staff,
        db_session=db_session,
        status_code=status_code,
        members=members,
        others=others,
        message=message,
        error=error,
        errors=field_errors or {},
        email=email,
        phone=phone,
        escalate_minutes=f"{round(rt.settings.escalate_after / 60, 1):g}",
        opening_hours=rt.settings.opening_hours,
    )


def _field_errors(error: str) -> dict[str, str]:
    """The rota error beside its field too ("phone: ..." at the mobile number)."""
    name, _, reason = error.partition(": ")
    fid = {"email": "oncall-email", "phone": "oncall-phone"}.get(name)
    return {fid: reason} if fid and reason else {}


@router.get("/staff/on-call", response_class=HTMLResponse)
def on_call(rt: RuntimeDep, staff: PageAdmin, db_session: DbSession) -> Response:
    return _rota_page(rt, staff, db_session)


@router.post("/staff/on-call", response_class=HTMLResponse)
def put_on_call(
    rt: RuntimeDep, staff: PageAdmin, db_session: DbSession, form: CheckedForm
) -> Response:
    email = field(form, "email", limit=300).strip()
    phone = field(form, "phone", limit=60).strip()
    try:
        with db_session.begin_nested():
            user, added = rota_service.put_on_call(
                db_session=db_session,
                email=email,
                phone=phone,
                now=rt.clock.now(),
                actor_id=staff.user.id,
            )
    except rota_service.RotaError as exc:
        return _rota_page(
            rt,
            staff,
            db_session,
            error=str(exc),
            field_errors=_field_errors(str(exc)),
            email=email,
            phone=phone,
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    return _rota_page(
        rt,
        staff,
        db_session,
        message=f"{user.email} {'is now on call' if added else 'has a new mobile number'}.",
    )


@router.post("/staff/on-call/{id}/remove", response_class=HTMLResponse)
def take_off_call(
    staff_id: StaffId, rt: RuntimeDep, staff: PageAdmin, db_session: DbSession, form: CheckedForm
) -> Response:
    del form
    user = db_session.get(StaffUser, staff_id)
    try:
        if user is None:
            raise rota_service.RotaError("staff: no such account")
        with db_session.begin_nested():
            rota_service.take_off_call(
                db_session=db_session, email=user.email, now=rt.clock.now(), actor_id=staff.user.id
            )
    except rota_service.RotaError as exc:
        return _rota_page(
            rt, staff, db_session, error=str(exc), status_code=status.HTTP_409_CONFLICT
        )
    return redirect("/staff/on-call")


@router.post("/staff/on-call/{id}/move", response_class=HTMLResponse)
def move(
    staff_id: StaffId, rt: RuntimeDep, staff: PageAdmin, db_session: DbSession, form: CheckedForm
) -> Response:
    direction = field(form, "direction", limit=10)
    try:
        with db_session.begin_nested():
            rota_service.move(
                db_session=db_session,
                staff_id=staff_id,
                direction=direction,
                now=rt.clock.now(),
                actor_id=staff.user.id,
            )
    except rota_service.RotaError as exc:
        return _rota_page(
            rt,
            staff,
            db_session,
            error=str(exc),
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    return redirect("/staff/on-call")
