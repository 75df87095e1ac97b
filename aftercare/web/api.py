"""The JSON API under ``/api/v1``: every route needs a staff member's bearer token.

Routes live by area (``api_sessions``, ``api_patients``, ``api_flags``); this module mounts them
with the authentication every one of them requires, so no route can forget it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from aftercare.web import api_flags, api_patients, api_sessions
from aftercare.web.api_errors import responses
from aftercare.web.auth import current_staff

router = APIRouter(prefix="/api/v1")
for _area in (api_sessions.router, api_patients.router, api_flags.router):
    router.include_router(_area, dependencies=[Depends(current_staff)], responses=responses(401))
