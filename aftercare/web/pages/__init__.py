"""Routes: the staff pages (server-rendered, usable without JavaScript).

Each area is its own module: ``login`` (login, logout), ``password`` (changing one's own
password), ``home`` (dashboard, patient search, flags, audit log), ``enrol`` (record a session;
its form in ``enrol_form``, a course of treatment in ``course``, the message preview in
``preview``), ``patient`` (the patient's timeline and its actions; the timeline in ``timeline``).
Shared rendering lives in ``common``, how a regimen reads in ``regimen``, read-only look-ups in
``queries``; cookie sessions and CSRF in ``auth``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from aftercare.web.pages import enrol, home, login, oncall, password, patient

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)
for _area in (
    login.router,
    password.router,
    home.router,
    enrol.router,
    patient.router,
    oncall.router,
):
    router.include_router(_area)


def mount_static(app: FastAPI) -> None:
    """Serve the pages' stylesheet and optional script at ``/static``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
