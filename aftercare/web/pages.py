"""Routes: the staff pages (server-rendered, usable without JavaScript).

Each area is its own module: ``pages_auth`` (login, logout), ``pages_password`` (changing one's
own password), ``pages_home`` (dashboard, patient
search, flags, audit log), ``pages_enrol`` (record a session; its form in ``pages_enrol_form``),
``pages_patient`` (the patient's timeline and its actions; the timeline in ``pages_timeline``).
Shared rendering lives in ``pages_common``, how a regimen reads in ``pages_regimen``, read-only
look-ups in ``pages_queries``; logins, CSRF and the login rate limit in ``web_auth``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from aftercare.web import (
    pages_auth,
    pages_enrol,
    pages_home,
    pages_oncall,
    pages_password,
    pages_patient,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)
for _area in (
    pages_auth.router,
    pages_password.router,
    pages_home.router,
    pages_enrol.router,
    pages_patient.router,
    pages_oncall.router,
):
    router.include_router(_area)


def mount_static(app: FastAPI) -> None:
    """Serve the pages' stylesheet and optional script at ``/static``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
