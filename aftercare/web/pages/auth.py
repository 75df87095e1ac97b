"""Logins for the staff pages: cookie sessions, CSRF tokens and a login rate limit.

The cookie holds a random token; the server keeps only its SHA-256 (``WebSession.token_hash``),
so a copy of the database cannot be turned into a live session. Every session has its own CSRF
token, which every POST form carries in a hidden field. The login form itself, made before there
is a session, carries a double-submit token (a random value in a short-lived cookie and the
form). The login rate limit is ``aftercare.staff.throttle``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Final

from fastapi import Depends, Request, Response
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from aftercare.settings import Settings
from aftercare.storage.models import StaffUser, WebSession
from aftercare.web.deps import DbSession, RuntimeDep

SESSION_COOKIE: Final = "aftercare_session"
LOGIN_COOKIE: Final = "aftercare_login"
SESSION_LIFETIME: Final = timedelta(hours=12)
LOGIN_FORM_LIFETIME: Final = timedelta(hours=1)
CSRF_FIELD: Final = "csrf_token"


class LoginRequired(Exception):
    """No valid session: the page redirects to the login form."""


class CsrfFailed(Exception):
    """A POST without this session's CSRF token."""


class AdminRequired(Exception):
    """A staff member (not an admin) asked for an admin page."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two tokens (False when either is empty)."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


# Sessions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaffSession:
    """The logged-in staff member and this browser session's CSRF token."""

    user: StaffUser
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return self.user.role == "admin"


def start_session(*, db_session: Session, staff_id: int, now: datetime) -> tuple[str, WebSession]:
    """A new session for this staff member: (the cookie token, shown only now; its row)."""
    db_session.execute(delete(WebSession).where(WebSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    row = WebSession(
        token_hash=digest(token),
        staff_id=staff_id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + SESSION_LIFETIME,
    )
    db_session.add(row)
    db_session.flush()
    return token, row


def load_session(*, db_session: Session, token: str, now: datetime) -> StaffSession | None:
    """The live session named by a cookie token, for an enabled account; else None."""
    if not token or len(token) > 200:
        return None
    row = db_session.scalar(select(WebSession).where(WebSession.token_hash == digest(token)))
    if row is None or row.expires_at <= now:
        return None
    user = db_session.get(StaffUser, row.staff_id)
    if user is None or user.disabled_at is not None:
        return None
    return StaffSession(user=user, csrf_token=row.csrf_token)


def end_session(*, db_session: Session, token: str) -> None:
    """Forget the session named by this cookie token (idempotent)."""
    if token:
        db_session.execute(delete(WebSession).where(WebSession.token_hash == digest(token)))


def cookie_secure(settings: Settings) -> bool:
    """Cookies are Secure when the public address is HTTPS (behind TLS)."""
    return settings.public_base_url.strip().lower().startswith("https://")


def set_cookie(
    response: Response, name: str, value: str, *, max_age: timedelta, secure: bool
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=int(max_age.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure,
    )


def clear_cookie(response: Response, name: str, *, secure: bool) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="lax", secure=secure)


# The client ---------------------------------------------------------------------------------


def client_of(request: Request) -> str:
    """The client's address: the connection's, or a trusted proxy's word for it
    (``client_address.TrustedProxies``)."""
    return request.client.host if request.client else "unknown"


# Dependencies -------------------------------------------------------------------------------


def optional_staff(request: Request, rt: RuntimeDep, db_session: DbSession) -> StaffSession | None:
    """The request's logged-in staff member, or None."""
    token = request.cookies.get(SESSION_COOKIE, "")
    return load_session(db_session=db_session, token=token, now=rt.clock.now())


MaybeStaff = Annotated[StaffSession | None, Depends(optional_staff)]


def current_staff(staff: MaybeStaff) -> StaffSession:
    """The logged-in staff member; anyone else is sent to the login page."""
    if staff is None:
        raise LoginRequired
    return staff


PageStaff = Annotated[StaffSession, Depends(current_staff)]


def admin_staff(staff: PageStaff) -> StaffSession:
    if not staff.is_admin:
        raise AdminRequired
    return staff


PageAdmin = Annotated[StaffSession, Depends(admin_staff)]


async def form_data(request: Request) -> FormData:
    """The request's form fields (read once; FastAPI caches dependencies per request)."""
    return await request.form()


FormDep = Annotated[FormData, Depends(form_data)]


def field(form: FormData, name: str, *, limit: int = 2000) -> str:
    """A form field as text (empty when absent or a file), cut to ``limit`` characters."""
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def checked_form(staff: PageStaff, form: FormDep) -> FormData:
    """The form of a logged-in POST whose CSRF token matches the session's; else 403."""
    if not same(field(form, CSRF_FIELD, limit=200), staff.csrf_token):
        raise CsrfFailed
    return form


CheckedForm = Annotated[FormData, Depends(checked_form)]
