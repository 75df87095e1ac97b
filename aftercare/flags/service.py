"""Raise, list and resolve flags. The most severe come first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import ColumnElement, case, select
from sqlalchemy.orm import Session

from aftercare.freetext import without_bidi_controls
from aftercare.oncall.pages import start_paging
from aftercare.storage.models import Flag
from aftercare.triage.data import RANK, Severity

KINDS: Final = (
    "urgent_reply",
    "checkin_concern",
    "unrecognised_reply",
    "booking_request",
    "opt_out",
    "delivery_failed",
    "stale_reminder",
    # Silence (aftercare/silence, README "Flags"): what did not reach the patient, or got no answer.
    "critical_undelivered",
    "checkin_unanswered",
    "opted_out_before_checkin",
)
# The severity a flag of each kind has unless its raiser says otherwise (replies are triaged).
DEFAULT_SEVERITY: Final[dict[str, Severity]] = {
    "urgent_reply": "urgent",
    "checkin_concern": "urgent",
    "unrecognised_reply": "concern",
    "booking_request": "concern",
    "opt_out": "info",
    "delivery_failed": "concern",
    "stale_reminder": "concern",
    "critical_undelivered": "urgent",
    "checkin_unanswered": "info",
    "opted_out_before_checkin": "info",
}
ALARMS: Final = frozenset({"emergency", "urgent"})


def raise_flag(
    db_session: Session,
    *,
    kind: str,
    patient_id: int | None,
    text: str,
    now: datetime,
    severity: Severity | None = None,
    signs: Sequence[str] = (),
    told: str | None = None,
    session_id: int | None = None,
    reminder_id: int | None = None,
    inbound_id: int | None = None,
) -> Flag:
    """Record a flag (no commit), with its severity (else the kind's default), the signs found
    (labels, never the patient's words) and what the patient was told. ``patient_id`` is None
    for a text from a number no patient has."""
    if kind not in KINDS:
        raise ValueError(f"unknown flag kind {kind!r}")
    level = severity or DEFAULT_SEVERITY[kind]
    if level not in RANK:
        raise ValueError(f"unknown severity {level!r}")
    flag = Flag(
        kind=kind,
        severity=level,
        urgent=level in ALARMS,
        signs=", ".join(signs)[:500] or None,
        told=told,
        patient_id=patient_id,
        session_id=session_id,
        reminder_id=reminder_id,
        inbound_id=inbound_id,
        # Staff read it: no bidi control may make it read as something else (docs/security.md).
        text=without_bidi_controls(text)[:2000],
        created_at=now,
    )
    db_session.add(flag)
    db_session.flush()
    if flag.urgent:
        # Every emergency or urgent flag, whoever raises it, pages the on-call rota now, in
        # the same transaction (aftercare/oncall/pages.py).
        start_paging(db_session, flag=flag, now=now)
    return flag


def severity_order() -> ColumnElement[int]:
    """Emergency first, then urgent, concern and info (for ORDER BY)."""
    return case(*((Flag.severity == s, i) for s, i in RANK.items()), else_=len(RANK))


def open_flags(db_session: Session, *, limit: int = 500) -> Sequence[Flag]:
    """Unresolved flags, most severe first, then oldest first."""
    return db_session.scalars(
        select(Flag)
        .where(Flag.resolved_at.is_(None))
        .order_by(severity_order(), Flag.created_at, Flag.id)
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
    flag.resolution_note = without_bidi_controls(note)[:2000] or None
    return flag
