"""Bearer-token authentication for the JSON API.

Every ``/api/v1`` route needs ``Authorization: Bearer <token>``, a live token of an enabled staff
member (``aftercare staff token EMAIL``). Missing or bad: 401; a staff member on an admin-only
route: 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from aftercare.staff.service import staff_for_token
from aftercare.storage.models import StaffUser
from aftercare.web.deps import DbSession, RuntimeDep

_bearer = HTTPBearer(auto_error=False, description="A staff member's API token.")
MISSING_TOKEN = "an API token is required (Authorization: Bearer <token>)"  # noqa: S105 - a message
INVALID_TOKEN = "the API token is invalid or revoked"  # noqa: S105 - a message


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def current_staff(
    rt: RuntimeDep,
    db_session: DbSession,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> StaffUser:
    """The staff member named by the request's bearer token, else 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorised(MISSING_TOKEN)
    user = staff_for_token(db_session=db_session, token=credentials.credentials, now=rt.clock.now())
    if user is None:
        raise _unauthorised(INVALID_TOKEN)
    return user


def _unauthorised(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


CurrentStaff = Annotated[StaffUser, Depends(current_staff)]


def admin_staff(user: CurrentStaff) -> StaffUser:
    """The current staff member if an admin, else 403."""
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this needs an admin account")
    return user


AdminStaff = Annotated[StaffUser, Depends(admin_staff)]
