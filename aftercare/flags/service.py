"""Raise, list and resolve flags. Urgent flags come first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from aftercare.storage.models import Flag

KINDS: Final = (
    "urgent_reply",
    "checkin_concern",
    "unrecognised_reply",
    "delivery_failed",
    "stale_reminder",
)
URGENT_KINDS: Final = frozenset({"urgent_reply", "checkin_concern"})


def raise_flag(
    db_session: Session,
    *,
    kind: str,
    patient_id: int | None,
    text: str,
    now: datetime,
    session_id: int | None = None,
    reminder_id: int | None = None,
    inbound_id: int | None = None,
) -> Flag:
    """Record a flag (no commit). ``urgent_reply`` and ``checkin_concern`` are urgent.
    ``patient_id`` is None for a text from a number no patient has."""
    if kind not in KINDS:
        raise ValueError(f"unknown flag kind {kind!r}")
    flag = Flag(
        kind=kind,
        urgent=kind in URGENT_KINDS,
        patient_id=patient_id,
        session_id=session_id,
        reminder_id=reminder_id,
        inbound_id=inbound_id,
        text=text[:2000],
        created_at=now,
    )
    db_session.add(flag)
    db_session.flush()
    return flag


def open_flags(db_session: Session, *, limit: int = 500) -> Sequence[Flag]:
    """Unresolved flags, urgent first, then oldest first."""
    return db_session.scalars(
        select(Flag)
        .where(Flag.resolved_at.is_(None))
        .order_by(Flag.urgent.desc(), Flag.created_at, Flag.id)
        .limit(limit)
    ).all()


class FlagAlreadyResolved(ValueError):
    pass


def resolve_flag(
    db_session: Session, *, flag: Flag, staff_id: int | None, now: datetime, note: str = ""
) -> Flag:
    if flag.resolved_at is not None:
        raise FlagAlreadyResolved(f"flag {flag.id} is already resolved")
    flag.resolved_at = now
    flag.resolved_by_id = staff_id
    flag.resolution_note = note[:2000] or None
    return flag
