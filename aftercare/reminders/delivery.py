"""Deliver one reminder: check, record the attempt, commit, call the provider, record the outcome.

Write before you send: the attempt row is committed before any network I/O, so a worker killed
at any instruction leaves either a ``queued`` reminder (not yet attempted; it will be sent) or a
``sending`` one with a pending attempt (ambiguous; it is reconciled with the provider's own
record before anything is sent again, see :func:`reconcile`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from aftercare.channels.base import (
    LookupUnsupported,
    Message,
    SendResult,
    Transport,
    TransportError,
)
from aftercare.clock import Clock
from aftercare.messages.render import MessageRenderer, TemplateError
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.reminders import states
from aftercare.reminders.compose import Clinic, MissingAddress, compose
from aftercare.reminders.fallback import after_failure, fall_back_to_email
from aftercare.reminders.retry import MAX_ATTEMPTS, backoff
from aftercare.storage.db import Database
from aftercare.storage.models import DeliveryAttempt, Patient, Reminder, TreatmentSession

log = logging.getLogger(__name__)

SMS_BLOCKED = "SMS blocked: the number was refused by the provider"


@dataclass
class Deps:
    """What delivery needs; built by the caller from the runtime."""

    db: Database
    clock: Clock
    quiet: QuietHours
    registry: RegimenRegistry
    renderer: MessageRenderer
    clinic: Clinic
    transports: dict[str, Transport]


def _load(db_session: Session, reminder_id: int) -> tuple[Reminder, TreatmentSession, Patient]:
    reminder = db_session.get_one(Reminder, reminder_id)
    session = db_session.get_one(TreatmentSession, reminder.session_id)
    patient = db_session.get_one(Patient, session.patient_id)
    return reminder, session, patient


def _hold_reason(
    reminder: Reminder, session: TreatmentSession, patient: Patient, now: datetime
) -> tuple[str, str] | None:
    """(target state, reason) when this reminder must not be sent now, else None."""
    if patient.erased_at is not None:
        return states.CANCELLED, "patient erased"
    if session.status == "cancelled":
        return states.CANCELLED, "session cancelled"
    if session.status == "paused":
        return states.PAUSED, "session paused"
    if reminder.channel == "sms" and patient.sms_opted_out_at is not None:
        return states.CANCELLED, "patient opted out of SMS"
    if reminder.channel == "sms" and patient.sms_blocked_at is not None:
        return states.CANCELLED, SMS_BLOCKED
    if reminder.channel == "email" and patient.email_opted_out_at is not None:
        return states.CANCELLED, "patient unsubscribed from email"
    # An email sent because the SMS failed goes out even to a patient who chose SMS only.
    if reminder.channel not in patient.channel_list and reminder.fallback_of_id is None:
        return states.CANCELLED, f"{reminder.channel} no longer chosen"
    if not reminder.critical and reminder.expires_at is not None and now > reminder.expires_at:
        return states.EXPIRED, "too late to be useful"
    return None


def deliver(*, deps: Deps, reminder_id: int) -> str:
    """Send one queued reminder. Returns what happened (for the task's summary)."""
    now = deps.clock.now()
    with deps.db.session() as db_session:
        reminder, session, patient = _load(db_session, reminder_id)
        if reminder.state != states.QUEUED:
            return "not-queued"
        hold = _hold_reason(reminder, session, patient, now)
        if hold is not None:
            target, reason = hold
            moved = states.transition(
                db_session,
                [reminder_id],
                source=states.QUEUED,
                target=target,
                now=now,
                reason=reason,
            )
            if moved and reason == SMS_BLOCKED:
                # The number cannot take SMS until staff fix it: email carries the regimen on.
                fall_back_to_email(db_session=db_session, reminder=reminder, now=now)
            return target
        zone = ZoneInfo(session.timezone)
        if reminder.channel == "sms" and deps.quiet.contains(now.astimezone(zone).time()):
            # Late work (a backlog, a retry) never texts a patient at night.
            states.transition(
                db_session,
                [reminder_id],
                source=states.QUEUED,
                target=states.SCHEDULED,
                now=now,
                due_at=deps.quiet.defer(now, zone),
                reason="deferred by quiet hours",
            )
            return "deferred"
        try:
            message = compose(
                reminder=reminder,
                session=session,
                patient=patient,
                registry=deps.registry,
                renderer=deps.renderer,
                quiet=deps.quiet,
                clinic=deps.clinic,
            )
        except (TemplateError, MissingAddress, KeyError) as exc:
            cause = f"cannot compose: {type(exc).__name__}"
            if states.transition(
                db_session,
                [reminder_id],
                source=states.QUEUED,
                target=states.FAILED,
                now=now,
                reason=cause,
            ):
                after_failure(
                    db_session=db_session, reminder_id=reminder_id, now=now, code=None, cause=cause
                )
            log.error("reminder %s cannot be composed (%s)", reminder_id, type(exc).__name__)
            return states.FAILED
        if not states.transition(
            db_session,
            [reminder_id],
            source=states.QUEUED,
            target=states.SENDING,
            now=now,
            attempts=reminder.attempts + 1,
        ):
            return "not-queued"
        transport = deps.transports[reminder.channel]
        attempt = DeliveryAttempt(
            reminder_id=reminder_id, transport=transport.name, started_at=now, outcome="pending"
        )
        db_session.add(attempt)
        db_session.flush()
        attempt_id = attempt.id
        attempts = reminder.attempts + 1
    # Committed: from here a crash leaves a 'sending' reminder with a pending attempt.
    try:
        result = transport.send(message)
    except TransportError as exc:
        if exc.ambiguous:
            return _settle_ambiguous(
                deps,
                reminder_id=reminder_id,
                attempt_id=attempt_id,
                message=message,
                transport=transport,
                started=now,
            )
        return _record_failure(deps, reminder_id, attempt_id, attempts, exc)
    _record_sent(deps, reminder_id, attempt_id, result, outcome="sent")
    return states.SENT


def _record_sent(
    deps: Deps, reminder_id: int, attempt_id: int, result: SendResult, *, outcome: str
) -> None:
    now = deps.clock.now()
    with deps.db.session() as db_session:
        attempt = db_session.get_one(DeliveryAttempt, attempt_id)
        attempt.outcome = outcome
        attempt.finished_at = now
        attempt.provider_id = result.provider_id
        attempt.provider_status = result.status
        states.transition(
            db_session,
            [reminder_id],
            source=states.SENDING,
            target=states.SENT,
            now=now,
            sent_at=now,
            reason=None,
        )
    log.info("reminder %s sent (attempt %s)", reminder_id, attempt_id)


def _record_failure(
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
            if states.transition(
                db_session,
                [reminder_id],
                source=states.SENDING,
                target=states.FAILED,
                now=now,
                reason=reason,
            ):
                # Staff are told, a refused number gets no more SMS, and email steps in.
                after_failure(
                    db_session=db_session,
                    reminder_id=reminder_id,
                    now=now,
                    code=exc.code,
                    # Only a permanent refusal stops SMS to the number; exhausted retries do not.
                    opted_out=exc.permanent and exc.opted_out,
                    cause=reason,
                    block=exc.permanent,
                )
            log.warning("reminder %s failed (code %s)", reminder_id, exc.code)
            return states.FAILED
        reminder = db_session.get_one(Reminder, reminder_id)
        due = now + backoff(attempts)
        if reminder.channel == "sms":
            session = db_session.get_one(TreatmentSession, reminder.session_id)
            due = deps.quiet.defer(due, ZoneInfo(session.timezone))
        states.transition(
            db_session,
            [reminder_id],
            source=states.SENDING,
            target=states.SCHEDULED,
            now=now,
            due_at=due,
            reason=f"retry after transient error {exc.code or ''}".strip(),
        )
    log.info("reminder %s will be retried (attempt %s, code %s)", reminder_id, attempts, exc.code)
    return "retry"


def _settle_ambiguous(
    deps: Deps,
    *,
    reminder_id: int,
    attempt_id: int,
    message: Message,
    transport: Transport,
    started: datetime,
) -> str:
    """The provider may have accepted the message: ask it before anything is sent again."""
    try:
        found = transport.lookup(message, since=started)
    except LookupUnsupported:
        found = None
    except TransportError:
        # Cannot tell yet: leave it 'sending'; the recovery task reconciles it later.
        log.warning("reminder %s: ambiguous send, provider lookup failed", reminder_id)
        return "ambiguous"
    if found is not None:
        _record_sent(deps, reminder_id, attempt_id, found, outcome="reconciled")
        return states.SENT
    # The provider never got it: send again now (no backoff; the provider was not at fault).
    now = deps.clock.now()
    with deps.db.session() as db_session:
        attempt = db_session.get_one(DeliveryAttempt, attempt_id)
        attempt.outcome = "lost"
        attempt.finished_at = now
        reminder = db_session.get_one(Reminder, reminder_id)
        due = now
        if reminder.channel == "sms":
            session = db_session.get_one(TreatmentSession, reminder.session_id)
            due = deps.quiet.defer(now, ZoneInfo(session.timezone))
        states.transition(
            db_session,
            [reminder_id],
            source=states.SENDING,
            target=states.SCHEDULED,
            now=now,
            due_at=due,
            reason="resent: the provider has no record of the earlier attempt",
        )
    log.info("reminder %s: earlier attempt %s never reached the provider", reminder_id, attempt_id)
    return "resend"


def reconcile(*, deps: Deps, reminder_id: int) -> str:
    """Settle a reminder left in ``sending`` by a worker that died mid-send."""
    with deps.db.session() as db_session:
        reminder, session, patient = _load(db_session, reminder_id)
        if reminder.state != states.SENDING:
            return "not-sending"
        attempt = db_session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.reminder_id == reminder_id)
            .order_by(DeliveryAttempt.id.desc())
            .limit(1)
        ).first()
        message = compose(
            reminder=reminder,
            session=session,
            patient=patient,
            registry=deps.registry,
            renderer=deps.renderer,
            quiet=deps.quiet,
            clinic=deps.clinic,
        )
        if attempt is None:
            # Died between the state change and the attempt insert: nothing was sent.
            attempt = DeliveryAttempt(
                reminder_id=reminder_id,
                transport=deps.transports[reminder.channel].name,
                started_at=reminder.updated_at,
                outcome="pending",
            )
            db_session.add(attempt)
            db_session.flush()
        attempt_id, started = attempt.id, attempt.started_at
    return _settle_ambiguous(
        deps,
        reminder_id=reminder_id,
        attempt_id=attempt_id,
        message=message,
        transport=deps.transports[reminder.channel],
        started=started,
    )
