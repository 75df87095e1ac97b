"""What every staff page shares: the Jinja environment, rendering with safe headers, the route
class that turns "log in first", "not allowed" and "no such record" into pages, and the few
formatting helpers the templates use.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote
from zoneinfo import ZoneInfo

import jinja2
import phonenumbers
from fastapi import Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aftercare.errors import NotFound
from aftercare.freetext import without_bidi_controls
from aftercare.runtime import Runtime
from aftercare.storage.models import Flag
from aftercare.validation import FieldError
from aftercare.web.deps import app_runtime
from aftercare.web.pages.auth import AdminRequired, CsrfFailed, LoginRequired, StaffSession

# Staff pages show patient data: never cached, never framed, no third-party anything.
HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
}

# Messages shown after a successful POST (Post/Redirect/Get); the URL carries only the code.
NOTICES: Final = {
    "enrolled": "Session recorded. The patient's reminders are planned below.",
    "course": "Session added to the patient's course. Their reminders follow the latest session.",
    "paused": "Reminders paused. Nothing more will be sent until you resume.",
    "resumed": "Reminders resumed.",
    "cancelled": "Session cancelled. No more reminders will be sent for it.",
    "edited": "Contact details saved.",
    "unchanged": "Nothing to change: the details were already as entered.",
    "resolved": "Flag resolved.",
    "logged_out": "You have logged out.",
    "password_changed": "Password changed. Every other session of your account has ended.",
}

REMINDER_STATES: Final = {
    "scheduled": "Upcoming",
    "queued": "Sending",
    "sending": "Sending",
    "sent": "Sent",
    "delivered": "Delivered",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "skipped": "Skipped",
    "expired": "Expired",
    "paused": "Paused",
    "superseded": "Replaced",
}
FLAG_KINDS: Final = {
    "urgent_reply": "Urgent reply",
    "checkin_concern": "Check-in concern",
    "unrecognised_reply": "Reply to read",
    "booking_request": "Wants another session",
    "opt_out": "Stopped texts",
    "delivery_failed": "Delivery failed",
    "stale_reminder": "Reminder stuck",
    "critical_undelivered": "Safety message not delivered",
    "checkin_unanswered": "Check-in not answered",
    "opted_out_before_checkin": "Opted out before check-in",
}
AUDIT_ACTIONS: Final = {
    "enrol": "Recorded a session",
    "edit": "Edited patient details",
    "pause": "Paused a session",
    "resume": "Resumed a session",
    "cancel": "Cancelled a session",
    "erase": "Erased a patient",
    "resolve_flag": "Resolved a flag",
    "opt_out": "Patient opted out",
    "opt_in": "Patient opted back in",
    "staff_add": "Added a staff account",
    "token_issue": "Issued an API token",
    "token_revoke": "Revoked an API token",
    "import": "Imported sessions",
}
CHANNEL_NAMES: Final = {"sms": "SMS", "email": "Email"}
# The clinic's country: numbers there are shown as its people write them (07911 123456), others
# in international form. The same region phone numbers are parsed in (validation.clean_phone).
CLINIC_REGION: Final = "GB"
# Dates as the clinic writes them, shown and typed alike, whatever the browser's language.
DATE_FORMAT: Final = "%d/%m/%Y"
DATE_HINT: Final = "DD/MM/YYYY"


def phone(value: str | None) -> str:
    """An E.164 number as staff read it: national for the clinic's country, else international."""
    if not value:
        return ""
    try:
        number = phonenumbers.parse(value, CLINIC_REGION)
    except phonenumbers.NumberParseException:
        return value
    # By country code, not region: +44 7911 is Jersey's range, still dialled 07911 in the UK.
    home = number.country_code == phonenumbers.country_code_for_region(CLINIC_REGION)
    kind = (
        phonenumbers.PhoneNumberFormat.NATIONAL
        if home
        else phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    return str(phonenumbers.format_number(number, kind))


def when(value: datetime | None, zone: str | ZoneInfo, *, show_zone: bool = True) -> str:
    """``Mon 2 Mar 2026, 10:30 GMT`` in ``zone``; an empty string for None."""
    if value is None:
        return ""
    local = value.astimezone(zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone))
    text = f"{local:%a} {local.day} {local:%b %Y, %H:%M}"
    return f"{text} {local.tzname() or ''}".rstrip() if show_zone else text


def day_month(value: datetime | None, zone: str | ZoneInfo) -> str:
    """``3 March`` in ``zone`` (a session named by its date); an empty string for None."""
    if value is None:
        return ""
    local = value.astimezone(zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone))
    return f"{local.day} {local:%B}"


def short_when(value: datetime | None, zone: str | ZoneInfo) -> str:
    """``Mon 2 Mar, 10:30`` in ``zone`` (the year and zone are shown once, elsewhere)."""
    if value is None:
        return ""
    local = value.astimezone(zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone))
    return f"{local:%a} {local.day} {local:%b, %H:%M}"


def _neutral(value: object) -> object:
    """Every value a staff page shows, without bidi embedding, override or isolate controls:
    text stored before they were stripped on the way in (a reply, a note) cannot reorder what
    staff read. Markup is the pages' own HTML, left as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return without_bidi_controls(value)
    return value


@lru_cache(maxsize=4)
def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_neutral,
    )
    env.globals.update(
        when=when,
        short_when=short_when,
        day_month=day_month,
        reminder_states=REMINDER_STATES,
        flag_kinds=FLAG_KINDS,
        audit_actions=AUDIT_ACTIONS,
        channel_names=CHANNEL_NAMES,
        date_hint=DATE_HINT,
    )
    env.filters["phone"] = phone
    return env


def open_flag_counts(db_session: Session) -> tuple[int, int]:
    """(open flags, of which urgent)."""
    row = db_session.execute(
        select(func.count(), func.count().filter(Flag.urgent.is_(True))).where(
            Flag.resolved_at.is_(None)
        )
    ).one()
    return int(row[0]), int(row[1])


def render(
    rt: Runtime,
    name: str,
    *,
    staff: StaffSession | None,
    db_session: Session | None = None,
    status_code: int = status.HTTP_200_OK,
    **values: Any,
) -> HTMLResponse:
    """Render ``templates/web/staff/<name>`` with the page frame's values."""
    settings = rt.settings
    flags = open_flag_counts(db_session) if db_session is not None and staff else (0, 0)
    template = _environment(settings.templates_dir).get_template(f"web/staff/{name}")
    html = template.render(
        clinic_name=settings.clinic_name,
        staff=staff,
        csrf_token=staff.csrf_token if staff else "",
        nav_flags=flags,
        **values,
    )
    return HTMLResponse(html, status_code=status_code, headers=HEADERS)


def redirect(url: str) -> RedirectResponse:
    """303 See Other: after a POST, the browser GETs ``url``."""
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER, headers=HEADERS)


def safe_next(value: str, default: str = "/") -> str:
    """``value`` if it is a path on this site, else ``default`` (no open redirects)."""
    if (
        value.startswith("/")
        and not value.startswith(("//", "/\\"))
        and all(ch.isprintable() and ch not in "\\" for ch in value)
        and len(value) <= 500
    ):
        return value
    return default


def notice(request: Request) -> str:
    return NOTICES.get(request.query_params.get("done", ""), "")


def error_page(rt: Runtime, status_code: int, title: str, message: str) -> HTMLResponse:
    return render(
        rt, "error.html", staff=None, status_code=status_code, title=title, message=message
    )


class PageRoute(APIRoute):
    """A staff page: anonymous visitors are sent to log in, a bad CSRF token or a staff member on
    an admin page gets a 403 page, and an unknown or malformed id a 404 page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            rt = app_runtime(request.app)
            try:
                return await handler(request)
            except LoginRequired:
                target = "/login"
                if request.method == "GET" and request.url.path != "/":
                    path = request.url.path
                    if request.url.query:
                        path += "?" + request.url.query
                    target += "?next=" + quote(path, safe="/")
                return redirect(target)
            except CsrfFailed:
                return error_page(
                    rt,
                    status.HTTP_403_FORBIDDEN,
                    "This form has expired",
                    "The form was not sent from this session, so nothing was changed. "
                    "Go back, reload the page and try again.",
                )
            except AdminRequired:
                return error_page(
                    rt,
                    status.HTTP_403_FORBIDDEN,
                    "Admins only",
                    "This page is for admin accounts. Ask an admin if you need it.",
                )
            except (NotFound, RequestValidationError):
                return error_page(
                    rt,
                    status.HTTP_404_NOT_FOUND,
                    "Not found",
                    "There is no such record. It may have been mistyped in the address.",
                )

        return route


# Form errors --------------------------------------------------------------------------------


def error_text(label: str, msg: str) -> str:
    """``Phone is not a valid phone number``: the field's label, then the service's reason."""
    if msg.startswith(("is ", "must ", "contains ", "cannot ")):
        return f"{label} {msg}"
    return f"{label}: {msg}"


def field_errors(
    errors: Iterable[FieldError], field_of: Callable[[tuple[str | int, ...]], str]
) -> dict[str, str]:
    """The first message for each form field, keyed by the field's element id."""
    out: dict[str, str] = {}
    for error in errors:
        out.setdefault(field_of(error.loc), error.msg)
    return out
