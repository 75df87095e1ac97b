"""Routes: the unsubscribe link in every email (RFC 8058 one-click).

``GET`` only shows a confirm page: mail scanners and link previews fetch links, so a GET must
change nothing. ``POST`` unsubscribes; it needs no login, cookie or CSRF token because the signed
token in the URL is the credential, and mail providers' one-click POSTs carry nothing else.
The body (``List-Unsubscribe=One-Click``, a browser form, or nothing) is not read.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2
from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from aftercare.patients.unsubscribe import patient_for_token, unsubscribe_email
from aftercare.runtime import Runtime
from aftercare.web.deps import DbSession, RuntimeDep

router = APIRouter(tags=["unsubscribe"])

# The URL holds a credential: keep it out of caches, referrers, search engines and frames.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


@lru_cache(maxsize=4)
def _environment(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _page(rt: Runtime, name: str, *, status_code: int = 200, **values: object) -> HTMLResponse:
    settings = rt.settings
    template = _environment(settings.templates_dir).get_template(f"web/{name}")
    html = template.render(
        clinic_name=settings.clinic_name, clinic_phone=settings.clinic_phone, **values
    )
    return HTMLResponse(html, status_code=status_code, headers=_HEADERS)


def _not_found(rt: Runtime) -> HTMLResponse:
    # One page for forged, unknown and erased: it must not tell them apart.
    return _page(rt, "unsubscribe_invalid.html", status_code=404)


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def confirm(token: str, rt: RuntimeDep, db_session: DbSession) -> HTMLResponse:
    """Ask the patient to confirm; changes nothing."""
    secret = rt.settings.effective_secret_key()
    patient = patient_for_token(db_session=db_session, token=token, secret=secret)
    if patient is None:
        return _not_found(rt)
    if patient.email_opted_out_at is not None:
        return _page(rt, "unsubscribe_done.html")
    return _page(rt, "unsubscribe.html")


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe(token: str, rt: RuntimeDep, db_session: DbSession) -> HTMLResponse:
    """Stop email to the patient the token names (idempotent)."""
    secret = rt.settings.effective_secret_key()
    patient = patient_for_token(db_session=db_session, token=token, secret=secret)
    if patient is None:
        return _not_found(rt)
    unsubscribe_email(db_session=db_session, patient_id=patient.id, now=rt.clock.now())
    return _page(rt, "unsubscribe_done.html")
