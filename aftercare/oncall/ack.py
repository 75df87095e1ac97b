"""Acknowledging a page: "I'm calling" on the flag's page, or a reply of ACK to the page.

Either one records who is calling back, stops the escalation and cancels the pages not yet
sent, and is audited. Only the first acknowledgement counts (a guarded UPDATE).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from aftercare.audit.service import record as audit
from aftercare.oncall.pages import cancel_pending, paged_flags_for
from aftercare.storage.models import Flag, StaffUser

ACK_WORDS: Final = frozenset({"ACK", "ACKNOWLEDGE", "ACKNOWLEDGED"})
VIA: Final = ("button", "sms")


def acknowledge(
    db_session: Session, *, flag_id: int, staff_id: int, now: datetime, via: str
) -> bool:
    """Record that ``staff_id`` is calling back about this flag (no commit). False when it was
    already acknowledged or resolved (nothing changes)."""
    moved = db_session.execute(
        update(Flag)
        .where(Flag.id == flag_id, Flag.acknowledged_at.is_(None), Flag.resolved_at.is_(None))
        .values(acknowledged_at=now, acknowledged_by_id=staff_id, paged_at=None)
        .returning(Flag.patient_id, Flag.session_id)
        .execution_options(synchronize_session=False)
    ).first()
    if moved is None:
        return False
    cancelled = cancel_pending(db_session, flag_id=flag_id, now=now, reason="acknowledged")
    audit(
        db_session=db_session,
        action="page_ack",
        actor_id=staff_id,
        now=now,
        patient_id=moved.patient_id,
        session_id=moved.session_id,
        detail={"flag_id": flag_id, "via": via, "pages_cancelled": cancelled},
    )
    return True


def is_ack(body: str) -> bool:
    return body.strip().strip(".!").strip().upper() in ACK_WORDS


def acknowledge_by_sms(db_session: Session, *, phone: str, body: str, now: datetime) -> str | None:
    """An ACK from a staff mobile acknowledges every open flag that person was paged about
    (no commit). Returns the reply, or None when this is not a staff member's ACK (the text is
    then a patient's, and handled as one)."""
    if not is_ack(body):
        return None
    staff = list(
        db_session.scalars(
            select(StaffUser.id).where(StaffUser.phone == phone, StaffUser.disabled_at.is_(None))
        )
    )
    if not staff:
        return None
    flags = paged_flags_for(db_session, staff_ids=staff)
    done = [
        f
        for f in flags
        if acknowledge(db_session, flag_id=f, staff_id=staff[0], now=now, via="sms")
    ]
    if not done:
        return "Aftercare: no page is waiting for you, so there was nothing to acknowledge."
    return (
        f"Aftercare: thank you, you are calling back ({len(done)} flag"
        f"{'' if len(done) == 1 else 's'}). Nobody else will be paged."
    )
