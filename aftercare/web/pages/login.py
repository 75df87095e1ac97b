"""``/login`` and ``/logout``."""

from __future__ import annotations

import math
import secrets
import unicodedata
from datetime import datetime

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import HTMLResponse

from aftercare.runtime import Runtime
from aftercare.staff import throttle
from aftercare.staff.service import HashingBusy, check_login
from aftercare.web.deps import DbSession, RuntimeDep
from aftercare.web.pages import auth
from aftercare.web.pages.auth import CheckedForm, FormDep, MaybeStaff, field
from aftercare.web.pages.common import PageRoute, notice, redirect, render, safe_next

router = APIRouter(route_class=PageRoute, include_in_schema=False)

WRONG = "Wrong email or password."


def _login_page(
    rt: Runtime,
    *,
    next_url: str,
    email: str = "",
    error: str = "",
    message: str = "",
    status_code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    """The login form with a fresh double-submit token (in the form and a cookie)."""
    token = secrets.token_urlsafe(32)
    response = render(
        rt,
        "login.html",
        staff=None,
        status_code=status_code,
        login_token=token,
        next_url=next_url,
        email=email,
        error=error,
        message=message,
    )
    auth.set_cookie(
        response,
        auth.LOGIN_COOKIE,
        token,
        max_age=auth.LOGIN_FORM_LIFETIME,
        secure=auth.cookie_secure(rt.settings),
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, rt: RuntimeDep, staff: MaybeStaff) -> Response:
    next_url = safe_next(request.query_params.get("next", ""))
    if staff is not None:
        return redirect(next_url)
    return _login_page(rt, next_url=next_url, message=notice(request))


def _plausible_email(email: str) -> bool:
    # Control characters (a NUL breaks PostgreSQL) or absurd lengths are never an account.
    return 0 < len(email) <= 254 and not any(
        unicodedata.category(ch).startswith("C") for ch in email
    )


def locked_message(until: datetime, now: datetime) -> str:
    minutes = max(1, math.ceil((until - now).total_seconds() / 60))
    return (
        "Too many failed attempts to log in. "
        f"For safety, try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )


BUSY = "The service is busy checking other logins. Please try again in a moment."
# A login form is a few hundred bytes; nothing bigger is read (413).
LOGIN_MAX_BODY = 8 * 1024


@router.post("/login", response_class=HTMLResponse, max_body_size=LOGIN_MAX_BODY)
def login(request: Request, rt: RuntimeDep, db_session: DbSession, form: FormDep) -> Response:
    now = rt.clock.now()
    next_url = safe_next(field(form, "next", limit=500))
    email = field(form, "email", limit=300).strip()
    password = field(form, "password", limit=1000)

    def page(error: str, status_code: int) -> HTMLResponse:
        return _login_page(rt, next_url=next_url, email=email, error=error, status_code=status_code)

    if not auth.same(
        field(form, auth.CSRF_FIELD, limit=200), request.cookies.get(auth.LOGIN_COOKIE, "")
    ):
        return page("The login form had expired. Please try again.", status.HTTP_403_FORBIDDEN)
    # The guess is counted, and committed, before the password is checked: see staff.throttle.
    with rt.db.session() as cleanup:
        throttle.forget_old(db_session=cleanup, now=now)
    try:
        with rt.db.session() as counting:
            guess = throttle.reserve(
                db_session=counting, email=email, client=auth.client_of(request), now=now
            )
    except throttle.Refused as refused:
        return page(locked_message(refused.until, now), status.HTTP_429_TOO_MANY_REQUESTS)
    try:
        staff_id = None
        if _plausible_email(email) and password:
            staff_id = check_login(database=rt.db, email=email, password=password)
    except HashingBusy:
        with rt.db.session() as giving_back:
            throttle.give_back(db_session=giving_back, guess=guess, right=False)
        busy = page(BUSY, status.HTTP_503_SERVICE_UNAVAILABLE)
        busy.headers["Retry-After"] = "5"
        return busy
    if staff_id is None:
        if guess.full_until is not None:
            return page(locked_message(guess.full_until, now), status.HTTP_429_TOO_MANY_REQUESTS)
        return page(WRONG, status.HTTP_401_UNAUTHORIZED)
    # The request's own transaction starts here, after the password check.
    throttle.give_back(db_session=db_session, guess=guess, right=True)
    secure = auth.cookie_secure(rt.settings)
    auth.end_session(db_session=db_session, token=request.cookies.get(auth.SESSION_COOKIE, ""))
    token, _ = auth.start_session(db_session=db_session, staff_id=staff_id, now=now)
    response = redirect(next_url)
    auth.set_cookie(
        response,
        auth.SESSION_COOKIE,
        token,
        max_age=auth.SESSION_LIFETIME,
        secure=secure,
    )
    auth.clear_cookie(response, auth.LOGIN_COOKIE, secure=secure)
    return response


@router.post("/logout")
def logout(request: Request, rt: RuntimeDep, db_session: DbSession, form: CheckedForm) -> Response:
    auth.end_session(db_session=db_session, token=request.cookies.get(auth.SESSION_COOKIE, ""))
    response = redirect("/login?done=logged_out")
    auth.clear_cookie(response, auth.SESSION_COOKIE, secure=auth.cookie_secure(rt.settings))
    return response
