"""The JSON API under ``/api/v1``: every route needs a staff member's bearer token.

Routes live by area (``sessions``, ``patients``, ``flags``); this module mounts them with the
authentication every one of them requires (``auth``), so no route can forget it. Errors and their
JSON shapes are ``errors`` and ``schemas``; ``guard`` checks the token before a body is read.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from aftercare.web.api import flags, patients, sessions
from aftercare.web.api.auth import current_staff
from aftercare.web.api.errors import responses

router = APIRouter(prefix="/api/v1")
for _area in (sessions.router, patients.router, flags.router):
    router.include_router(_area, dependencies=[Depends(current_staff)], responses=responses(401))
