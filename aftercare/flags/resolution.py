"""Staff resolve a flag: marked dealt with and audited as ``resolve_flag``, in one place for the
API, the staff pages and a booking request answered by enrolment."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from aftercare.audit import service as audit
from aftercare.errors import Conflict, NotFound
from aftercare.flags import service as flags
from aftercare.storage.models import Flag


def resolve_audited(
    db_session: Session,
    *,
    flag: Flag,
    actor_id: int | None,
    now: datetime,
    note: str = "",
    session_id: int | None = None,
) -> None:
    """Resolve ``flag`` (locked by the caller) and write the ``resolve_flag`` audit event, on
    ``session_id`` when given (the session that answered it), else on the flag's session."""
    flags.resolve_flag(db_session, flag=flag, staff_id=actor_id, now=now, note=note)
    audit.record(
        db_session=db_session,
        action="resolve_flag",
        actor_id=actor_id,
        now=now,
        patient_id=flag.patient_id,
        session_id=flag.session_id if session_id is None else session_id,
        detail={"flag_id": flag.id, "kind": flag.kind},
    )


def resolve_flag(
    *, db_session: Session, flag_id: int, actor_id: int | None, now: datetime, note: str = ""
) -> Flag:
    """Mark a flag as dealt with (409 if it already is); audited as ``resolve_flag``."""
    flag = db_session.get(Flag, flag_id, with_for_update=True)
    if flag is None:
        raise NotFound("flag", flag_id)
    try:
        resolve_audited(db_session, flag=flag, actor_id=actor_id, now=now, note=note)
    except flags.FlagAlreadyResolved as exc:
        raise Conflict(str(exc)) from None
    db_session.flush()
    return flag
