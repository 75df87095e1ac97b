"""Record what a send came to: a failure (retried, or failed for good with staff told) and the
putting back of a reminder on the schedule."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from aftercare.channels.base import TransportError
from aftercare.reminders import states
from aftercare.reminders.delivery.context import Deps, log
from aftercare.reminders.fallback import after_failure
from aftercare.reminders.retry import MAX_ATTEMPTS, backoff
from aftercare.reminders.states import Outcome
from aftercare.storage.models import DeliveryAttempt, Reminder, TreatmentSession


def record_failure(
    deps: Deps, reminder_id: int, attempt_id: int, attempts: int, exc: TransportError
) -> str:
    now = deps.clock.now()
    with deps.db.session() as db_session:
        attempt = db_session.get_one(DeliveryAttempt, attempt_id)
        attempt.outcome = "permanent" if exc.permanent else "transient"
        attempt.finished_at = now
        attempt.error_code = exc.code
        # Provider messages can quote the recipient: kept in the database, never logged.
        attempt.error_detail = exc.message[:500]
        if exc.permanent or attempts >= MAX_ATTEMPTS:
            reason = f"provider error {exc.code or ''}".strip()
            if not exc.permanent:
                reason = f"gave up after {attempts} attempts ({exc.code or 'transient'})"
            fail(
                db_session,
                reminder_id,
                source=states.SENDING,
                now=now,
                cause=reason,
                code=exc.code,
                # Only a permanent refusal stops SMS to the number; exhausted retries do not.
                opted_out=exc.permanent and exc.opted_out,
                block=exc.permanent,
            )
            log.warning("reminder %s failed (code %s)", reminder_id, exc.code)
            return states.FAILED
        retry_at(
            db_session,
            deps,
            db_session.get_one(Reminder, reminder_id),
            due=now + backoff(attempts),
            now=now,
            reason=f"retry after transient error {exc.code or ''}".strip(),
        )
    log.info("reminder %s will be retried (attempt %s, code %s)", reminder_id, attempts, exc.code)
    return Outcome.RETRY


def fail(
    db_session: Session,
    reminder_id: int,
    *,
    source: str,
    now: datetime,
    cause: str,
    code: str | None = None,
    opted_out: bool = False,
    block: bool = False,
) -> None:
    """Fail a reminder for good; if this call moved it, staff are told, a refused number gets
    no more SMS and email steps in (:func:`after_failure`), in the same transaction."""
    if states.transition(
        db_session, [reminder_id], source=source, target=states.FAILED, now=now, reason=cause
    ):
        after_failure(
            db_session=db_session,
            reminder_id=reminder_id,
            now=now,
            code=code,
            opted_out=opted_out,
            cause=cause,
            block=block,
        )


def retry_at(
    db_session: Session,
    deps: Deps,
    reminder: Reminder,
    *,
    due: datetime,
    now: datetime,
    reason: str,
) -> None:
    """Put a ``sending`` reminder back on the schedule at ``due`` (an SMS never inside quiet
    hours)."""
    session = db_session.get_one(TreatmentSession, reminder.session_id)
    states.reschedule(
        db_session,
        reminder,
        source=states.SENDING,
        due=due,
        zone=ZoneInfo(session.timezone),
        quiet=deps.quiet,
        now=now,
        reason=reason,
    )


def mark_unconfirmed(deps: Deps, attempt_id: int) -> None:
    with deps.db.session() as db_session:
        db_session.get_one(DeliveryAttempt, attempt_id).error_code = "ambiguous"
