"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from aftercare.ops.health import readiness
from aftercare.web.deps import RuntimeDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready"}})
def readyz(rt: RuntimeDep) -> JSONResponse:
    """Readiness: database and broker reachable, migrations current, dispatcher running."""
    ok, body = readiness(rt)
    payload: dict[str, Any] = body
    return JSONResponse(payload, status_code=200 if ok else 503)
