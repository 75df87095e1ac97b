"""``/account/password``: a staff member changes their own password.

The current password is asked for (a session left open on a shared computer must not be enough
to take the account over), and each wrong one counts against the login rate limit. On success
every session of the account ends, on every device, and this browser gets a new one.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import HTMLResponse

from aftercare.runtime import Runtime
from aftercare.staff import throttle
from aftercare.staff.service import MIN_PASSWORD_LENGTH, HashingBusy, StaffError, WrongPassword
from aftercare.staff.service import change_own_password as change_password
from aftercare.web.deps import DbSession, RuntimeDep
from aftercare.web.pages import auth
from aftercare.web.pages.auth import CheckedForm, PageStaff, StaffSession, field
from aftercare.web.pages.common import PageRoute, notice, redirect, render
from aftercare.web.pages.login import BUSY, locked_message

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PATH = "/account/password"


def _page(
    rt: Runtime,
    staff: StaffSession,
    db_session: DbSession,
    *,
    error: str = "",
    message: str = "",
    status_code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    return render(
        rt,
        "password.html",
        staff=staff,
        db_session=db_session,
        status_code=status_code,
        active="password",
        error=error,
        message=message,
        min_length=MIN_PASSWORD_LENGTH,
    )


@router.get(PATH, response_class=HTMLResponse)
def password_form(
    request: Request, rt: RuntimeDep, staff: PageStaff, db_session: DbSession
) -> Response:
    return _page(rt, staff, db_session, message=notice(request))


@router.post(PATH, response_class=HTMLResponse)
def change_own_password(
    request: Request, rt: RuntimeDep, staff: PageStaff, db_session: DbSession, form: CheckedForm
) -> Response:
    now = rt.clock.now()
    current = field(form, "current_password", limit=1000)
    new = field(form, "new_password", limit=1000)
    repeated = field(form, "repeat_password", limit=1000)
    # On this page the request's transaction is already open (the session was looked up in
    # it), so the guess is counted in it, under a savepoint that a refusal rolls back. The count
    # and the change commit together; on PostgreSQL the bucket rows stay locked meanwhile,
    # which only queues one account's own password changes.
    try:
        with db_session.begin_nested():
            guess = throttle.reserve(
                db_session=db_session,
                email=staff.user.email,
                client=auth.client_of(request),
                now=now,
            )
    except throttle.Refused as refused:
        return _page(
            rt,
            staff,
            db_session,
            error=locked_message(refused.until, now),
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        )
    try:
        change_password(
            db_session=db_session,
            staff_id=staff.user.id,
            current=current,
            new=new,
            repeated=repeated,
        )
    except (StaffError, HashingBusy) as exc:
        busy = isinstance(exc, HashingBusy)
        if not isinstance(exc, WrongPassword):
            # Only a wrong current password is a guess; anything else is given back.
            throttle.give_back(db_session=db_session, guess=guess, right=False)
        return _page(
            rt,
            staff,
            db_session,
            error=BUSY if busy else f"The password was not changed: {exc}.",
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE
            if busy
            else status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    throttle.give_back(db_session=db_session, guess=guess, right=True)
    # Every session of the account has ended, this one too: carry on in a new one.
    token, _ = auth.start_session(db_session=db_session, staff_id=staff.user.id, now=now)
    response = redirect(f"{PATH}?done=password_changed")
    auth.set_cookie(
        response,
        auth.SESSION_COOKIE,
        token,
        max_age=auth.SESSION_LIFETIME,
        secure=auth.cookie_secure(rt.settings),
    )
    return response
