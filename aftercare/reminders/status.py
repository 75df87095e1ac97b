"""Apply a provider's delivery-status callback to the attempt and its reminder.

Callbacks arrive late, twice, or out of order, so a status is only ever applied when it is
further along than the one recorded: queued < sending < sent < undelivered/failed < delivered.
A duplicate, or a "sent" after "delivered", changes nothing; a late "delivered" after
"undelivered" wins, because the message did reach the phone in the end.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from aftercare.channels.twilio import codes
from aftercare.reminders import states
from aftercare.reminders.fallback import after_failure
from aftercare.storage.models import DeliveryAttempt

log = logging.getLogger(__name__)


def apply_status(
    *,
    db_session: Session,
    provider_id: str,
    status: str,
    error_code: str | None,
    now: datetime,
) -> str:
    """Record one status callback (no commit). Returns what happened: ``unknown`` (no such
    message), ``ignored`` (a status we do not track), ``stale`` (not newer) or ``updated``."""
    tracked = codes.tracked_status(status)
    if tracked is None:
        return "ignored"
    status = tracked
    attempt = db_session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.provider_id == provider_id)
        .order_by(DeliveryAttempt.id.desc())
        .limit(1)
        # Two callbacks for one message at once: the second waits and then sees the first.
        .with_for_update()
    ).first()
    if attempt is None:
        return "unknown"
    if not codes.is_newer(status, than=attempt.provider_status):
        return "stale"
    attempt.provider_status = status
    attempt.status_updated_at = now
    if error_code:
        attempt.error_code = error_code[:32]
    reminder_id = attempt.reminder_id
    if status == "delivered":
        states.transition(
            db_session,
            [reminder_id],
            source=[states.SENT, states.FAILED],
            target=states.DELIVERED,
            now=now,
            reason=None,
        )
    elif status in codes.FAILED_STATUSES:
        _failed(db_session, reminder_id=reminder_id, status=status, code=error_code, now=now)
    log.info("reminder %s: provider status %s (code %s)", reminder_id, status, error_code)
    return "updated"


def _failed(
    db_session: Session, *, reminder_id: int, status: str, code: str | None, now: datetime
) -> None:
    cause = f"provider status {status}" + (f" (error {code})" if code else "")
    moved = states.transition(
        db_session,
        [reminder_id],
        source=states.SENT,
        target=states.FAILED,
        now=now,
        reason=cause,
    )
    if moved:
        after_failure(
            db_session=db_session,
            reminder_id=reminder_id,
            now=now,
            code=code,
            opted_out=codes.is_opted_out(code),
            cause=cause,
        )
