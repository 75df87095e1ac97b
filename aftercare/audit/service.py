"""Write and read audit events.

An event holds ids and short codes only (actor, action, patient, session, and a ``detail`` of
field names, counts and states), never a name, number, address or message text: the log is kept
after a patient is erased, so it must never hold anything that identifies them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from aftercare.storage.models import AuditEvent

# The actions written today; others (by other faces) are allowed if they are short codes.
ACTIONS: Final = frozenset(
    {
        "enrol",
        "edit",
        "pause",
        "resume",
        "cancel",
        "erase",
        "resolve_flag",
        "opt_out",
        "opt_in",
        "staff_add",
        "token_issue",
        "token_revoke",
        "import",
        "on_call",
        "off_call",
        "on_call_move",
        "page_ack",
    }
)
DetailValue = int | bool | None | str | list[str] | list[int]
# Strings in ``detail`` are codes (a state, a field name), never free text.
_MAX_CODE = 40


class AuditError(ValueError):
    pass


def _check_detail(detail: Mapping[str, DetailValue]) -> dict[str, DetailValue]:
    for key, value in detail.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str) and (len(item) > _MAX_CODE or not _is_code(item)):
                raise AuditError(f"audit detail {key!r} must be a short code, not free text")
    return dict(detail)


def _is_code(text: str) -> bool:
    return all(ch.isalnum() or ch in "_-.:" for ch in text)


def record(
    *,
    db_session: Session,
    action: str,
    actor_id: int | None,
    now: datetime,
    patient_id: int | None = None,
    session_id: int | None = None,
    detail: Mapping[str, DetailValue] | None = None,
) -> AuditEvent:
    """Add one audit event (no commit) in the caller's transaction."""
    if not action or len(action) > 32 or not _is_code(action):
        raise AuditError(f"audit action {action!r} must be a short code")
    event = AuditEvent(
        at=now,
        actor_id=actor_id,
        action=action,
        patient_id=patient_id,
        session_id=session_id,
        detail=_check_detail(detail or {}),
    )
    db_session.add(event)
    return event


def list_events(
    *,
    db_session: Session,
    patient_id: int | None = None,
    actor_id: int | None = None,
    action: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> Sequence[AuditEvent]:
    """Events newest first, optionally filtered; ``before_id`` pages back through the log."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 1000)))
    if patient_id is not None:
        query = query.where(AuditEvent.patient_id == patient_id)
    if actor_id is not None:
        query = query.where(AuditEvent.actor_id == actor_id)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return db_session.scalars(query).all()
