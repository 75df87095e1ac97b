"""Recovery: settle a send that may or may not have reached the provider, and reconcile a
reminder a dead worker left ``sending``."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from aftercare.channels.base import LookupUnsupported, Message, Transport, TransportError
from aftercare.flags.service import raise_flag
from aftercare.reminders import states
from aftercare.reminders.compose import compose
from aftercare.reminders.delivery.context import Deps, load, log
from aftercare.reminders.delivery.outcome import fail, mark_unconfirmed, retry_at
from aftercare.reminders.recording import record_sent
from aftercare.reminders.retry import MAX_ATTEMPTS, backoff
from aftercare.reminders.states import Outcome
from aftercare.storage.models import DeliveryAttempt, Flag, Reminder, TreatmentSession


def settle_ambiguous(
    deps: Deps,
    *,
    reminder_id: int,
    attempt_id: int,
    message: Message,
    transport: Transport,
    started: datetime,
    recovering: bool = False,
) -> str:
    """The provider may have accepted the message: ask it before anything is sent again.

    Found: recorded as sent. Not found right after the failure: left ``sending`` for the recovery
    task to ask again minutes later (a provider's message list can lag behind its API, and a
    resend on a stale "not found" would text the patient twice). Not found by the recovery task,
    or the provider keeps no record at all (email): sent again, counting as an attempt.
    """
    try:
        found = transport.lookup(message, since=started)
        supported = True
    except LookupUnsupported:
        found, supported = None, False
    except TransportError:
        log.warning("reminder %s: ambiguous send, provider lookup failed", reminder_id)
        mark_unconfirmed(deps, attempt_id)
        return Outcome.AMBIGUOUS
    if found is not None:
        record_sent(
            db=deps.db,
            clock=deps.clock,
            sent=[(reminder_id, attempt_id, found)],
            outcome="reconciled",
        )
        return states.SENT
    if supported and not recovering:
        mark_unconfirmed(deps, attempt_id)
        return Outcome.UNCONFIRMED
    now = deps.clock.now()
    with deps.db.session() as db_session:
        attempt = db_session.get_one(DeliveryAttempt, attempt_id)
        attempt.outcome = "lost"
        attempt.finished_at = now
        reminder = db_session.get_one(Reminder, reminder_id)
        if reminder.attempts >= MAX_ATTEMPTS:
            fail(
                db_session,
                reminder_id,
                source=states.SENDING,
                now=now,
                cause=f"gave up after {reminder.attempts} attempts (no confirmation from provider)",
            )
            return states.FAILED
        # The first resend goes at once (the provider was not at fault); later ones back off.
        retry_at(
            db_session,
            deps,
            reminder,
            due=now if reminder.attempts <= 1 else now + backoff(reminder.attempts - 1),
            now=now,
            reason="resent: the provider has no record of the earlier attempt",
        )
    log.info("reminder %s: earlier attempt %s never reached the provider", reminder_id, attempt_id)
    return Outcome.RESEND


STUCK_AFTER = timedelta(hours=1)


def reconcile(*, deps: Deps, reminder_id: int) -> str:
    """Settle a reminder left in ``sending`` by a worker that died mid-send."""
    with deps.db.session() as db_session:
        reminder, session, patient = load(db_session, reminder_id)
        if reminder.state != states.SENDING:
            return Outcome.NOT_SENDING
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
    outcome = settle_ambiguous(
        deps,
        reminder_id=reminder_id,
        attempt_id=attempt_id,
        message=message,
        transport=deps.transports[reminder.channel],
        started=started,
        recovering=True,
    )
    if outcome == Outcome.AMBIGUOUS and deps.clock.now() - started > STUCK_AFTER:
        _flag_stuck(deps, reminder_id)
    return outcome


def _flag_stuck(deps: Deps, reminder_id: int) -> None:
    """The provider cannot tell us for an hour whether a message went out: staff must look."""
    with deps.db.session() as db_session:
        already = db_session.scalar(
            select(Flag.id).where(
                Flag.reminder_id == reminder_id,
                Flag.kind == "stale_reminder",
                Flag.resolved_at.is_(None),
            )
        )
        if already is not None:
            return
        reminder = db_session.get_one(Reminder, reminder_id)
        session = db_session.get_one(TreatmentSession, reminder.session_id)
        raise_flag(
            db_session,
            kind="stale_reminder",
            patient_id=session.patient_id,
            session_id=session.id,
            reminder_id=reminder_id,
            text=(
                f"{reminder.channel.upper()} reminder '{reminder.step}' may or may not have been "
                "sent: the provider has not confirmed it for over an hour. Check with the patient."
            ),
            now=deps.clock.now(),
        )
