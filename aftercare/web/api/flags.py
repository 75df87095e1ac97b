"""``/api/v1/flags`` (who needs a call back) and ``/api/v1/audit`` (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query

from aftercare.audit import service as audit
from aftercare.flags import resolution
from aftercare.flags.service import open_flags
from aftercare.storage.models import Flag
from aftercare.web.api.auth import AdminStaff, CurrentStaff
from aftercare.web.api.errors import ApiRoute, responses
from aftercare.web.api.schemas import AuditEventOut, FlagOut, FlagResolvedOut, ResolveIn, iso
from aftercare.web.deps import DbSession, RuntimeDep

router = APIRouter(route_class=ApiRoute)

MAX_ID = 2**31 - 1
FlagId = Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="The flag's id.")]
OptionalId = Annotated[int | None, Query(ge=1, le=MAX_ID)]


@router.get("/flags", tags=["flags"], response_model=list[FlagOut])
def list_flags(staff: CurrentStaff, db_session: DbSession) -> list[FlagOut]:
    """Open flags, most severe first (emergency, urgent, concern, info), then oldest first."""
    return [flag_out(f) for f in open_flags(db_session)]


@router.post(
    "/flags/{id}/resolve",
    tags=["flags"],
    response_model=FlagResolvedOut,
    responses=responses(404, 409, 422),
)
def resolve(
    flag_id: FlagId,
    staff: CurrentStaff,
    db_session: DbSession,
    rt: RuntimeDep,
    body: Annotated[ResolveIn | None, Body()] = None,
) -> FlagResolvedOut:
    """Mark a flag as dealt with, with an optional note (409 if it already is)."""
    flag = resolution.resolve_flag(
        db_session=db_session,
        flag_id=flag_id,
        actor_id=staff.id,
        now=rt.clock.now(),
        note=body.note if body else "",
    )
    assert flag.resolved_at is not None  # just set by resolve_flag
    return FlagResolvedOut(
        **flag_out(flag).model_dump(),
        resolved_at=iso(flag.resolved_at),
        resolved_by_id=flag.resolved_by_id,
    )


def flag_out(flag: Flag) -> FlagOut:
    return FlagOut(
        id=flag.id,
        patient_id=flag.patient_id,
        session_id=flag.session_id,
        kind=flag.kind,
        severity=flag.severity,
        created_at=iso(flag.created_at),
        text=flag.text,
    )


@router.get(
    "/audit", tags=["audit"], response_model=list[AuditEventOut], responses=responses(403, 422)
)
def list_audit(
    *,
    admin: AdminStaff,
    db_session: DbSession,
    patient_id: OptionalId = None,
    actor_id: OptionalId = None,
    action: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z_]+$")] = None,
    before_id: OptionalId = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEventOut]:
    """Who did what to which patient and when, newest first (admins only). Page back with
    ``before_id`` set to the last id seen."""
    events = audit.list_events(
        db_session=db_session,
        patient_id=patient_id,
        actor_id=actor_id,
        action=action,
        before_id=before_id,
        limit=limit,
    )
    return [
        AuditEventOut(
            id=e.id,
            at=iso(e.at),
            actor_id=e.actor_id,
            action=e.action,
            patient_id=e.patient_id,
            session_id=e.session_id,
            detail=dict(e.detail),
        )
        for e in events
    ]
