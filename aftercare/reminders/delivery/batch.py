"""A batch of reminders: check each (hold, defer or compose), claim the sendable ones and write
their attempts in one transaction, then hand them to :mod:`.sending`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import insert
from sqlalchemy.orm import Session

from aftercare.channels.base import Message, SendResult
from aftercare.faults import crash_point
from aftercare.messages.render import TemplateError
from aftercare.reminders import states
from aftercare.reminders.compose import MissingAddress, compose
from aftercare.reminders.delivery.context import SMS_BLOCKED, Deps, Prepared, load_many, log
from aftercare.reminders.delivery.outcome import fail
from aftercare.reminders.delivery.sending import send_all
from aftercare.reminders.fallback import fall_back_to_email
from aftercare.reminders.recording import Recorder
from aftercare.reminders.states import Outcome
from aftercare.storage.models import DeliveryAttempt, Patient, Reminder, TreatmentSession


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
    return deliver_batch(deps=deps, reminder_ids=[reminder_id])[0]


def deliver_batch(*, deps: Deps, reminder_ids: Sequence[int]) -> list[str]:
    """Send a batch of queued reminders, each one independently idempotent.

    One transaction checks every reminder, moves the sendable ones to ``sending`` (under this
    process's lease) and writes their attempts; then the messages go to their providers,
    concurrently (:data:`.sending.SEND_THREADS`) but one after another and in due order for each
    recipient (:func:`.sending.send_all`). Each outcome is recorded by the thread that saw it
    before it sends anything else (accepted ones through a group commit, :mod:`recording`), so a
    crash leaves at most one accepted message per send thread unrecorded. Returns an outcome per
    id, in order.
    """
    now = deps.clock.now()
    outcomes: dict[int, str] = {}
    recorder = Recorder(db=deps.db, clock=deps.clock)
    owner = None if deps.lease is None else deps.lease.hold(now=now)
    prepared = _prepare(deps, reminder_ids, outcomes, now=now, owner=owner)
    # Committed: from here a crash leaves 'sending' reminders with pending attempts.
    sent: list[tuple[Prepared, SendResult]] = []
    unexpected: BaseException | None = None
    for item, (outcome, result, error) in zip(
        prepared, send_all(deps, prepared, started=now, recorder=recorder), strict=True
    ):
        if result is not None:
            sent.append((item, result))
        elif error is not None:
            unexpected = unexpected or error
        else:
            outcomes[item.reminder_id] = outcome
    if sent:
        log.info(
            "sent %s reminder(s)",
            len(sent),
            extra={"reminder_ids": [item.reminder_id for item, _ in sent], "outcome": "sent"},
        )
    crash_point("after_record")
    if unexpected is not None:
        raise unexpected
    for item, _ in sent:
        outcomes[item.reminder_id] = states.SENT
    return [outcomes[i] for i in reminder_ids]


def _prepare(
    deps: Deps,
    reminder_ids: Sequence[int],
    outcomes: dict[int, str],
    *,
    now: datetime,
    owner: str | None,
) -> list[Prepared]:
    """Check the batch, claim the sendable reminders and write their attempts, in one committed
    transaction; ``outcomes`` gets those that will not be sent."""
    with deps.db.session() as db_session:
        sendable, patient_of = _checked(db_session, deps, reminder_ids, outcomes, now=now)
        moved = set(
            states.transition(
                db_session,
                [r.id for r, _ in sendable],
                source=states.QUEUED,
                target=states.SENDING,
                now=now,
                attempts=Reminder.attempts + 1,
                claimed_by=owner,
            )
        )
        attempts = _insert_attempts(
            db_session, deps, [r for r, _ in sendable if r.id in moved], now=now
        )
        prepared: list[Prepared] = []
        for reminder, message in sendable:
            if reminder.id not in moved:
                outcomes[reminder.id] = Outcome.NOT_QUEUED
                continue
            prepared.append(
                Prepared(
                    reminder_id=reminder.id,
                    attempt_id=attempts[reminder.id],
                    attempts=reminder.attempts + 1,
                    channel=reminder.channel,
                    due_at=reminder.due_at,
                    patient_id=patient_of[reminder.id],
                    message=message,
                    claimed_at=now,
                    owner=owner,
                )
            )
    return prepared


def _checked(
    db_session: Session,
    deps: Deps,
    reminder_ids: Sequence[int],
    outcomes: dict[int, str],
    *,
    now: datetime,
) -> tuple[list[tuple[Reminder, Message]], dict[int, int]]:
    """The queued reminders that may go now with their messages, and their patients' ids;
    ``outcomes`` gets the others."""
    loaded = load_many(db_session, reminder_ids)
    sendable: list[tuple[Reminder, Message]] = []
    patient_of: dict[int, int] = {}
    for reminder_id in reminder_ids:
        if reminder_id in outcomes:
            continue
        row = loaded.get(reminder_id)
        if row is None or row[0].state != states.QUEUED:
            outcomes[reminder_id] = Outcome.NOT_QUEUED
            continue
        outcome, message = _check(db_session, deps, *row, now=now)
        if message is None:
            outcomes[reminder_id] = outcome
        else:
            sendable.append((row[0], message))
            patient_of[reminder_id] = row[2].id
    return sendable, patient_of


def _insert_attempts(
    db_session: Session, deps: Deps, reminders: list[Reminder], *, now: datetime
) -> dict[int, int]:
    """A pending attempt for each claimed reminder: {reminder id: attempt id}."""
    if not reminders:
        return {}
    # One INSERT ... RETURNING for the batch's attempts (the unit of work's flush of one
    # object per attempt was 15% of the worker's CPU).
    inserted = db_session.execute(
        insert(DeliveryAttempt).returning(
            DeliveryAttempt.reminder_id, DeliveryAttempt.id, sort_by_parameter_order=True
        ),
        [
            {
                "reminder_id": r.id,
                "transport": deps.transports[r.channel].name,
                "started_at": now,
                "outcome": "pending",
            }
            for r in reminders
        ],
    )
    return {int(row[0]): int(row[1]) for row in inserted}


def _check(
    db_session: Session,
    deps: Deps,
    reminder: Reminder,
    session: TreatmentSession,
    patient: Patient,
    *,
    now: datetime,
) -> tuple[str, Message | None]:
    """Hold, defer or fail a reminder that must not go now; else compose its message."""
    reminder_id = reminder.id
    hold = _hold_reason(reminder, session, patient, now)
    if hold is not None:
        target, reason = hold
        moved = states.transition(
            db_session, [reminder_id], source=states.QUEUED, target=target, now=now, reason=reason
        )
        if moved and reason == SMS_BLOCKED:
            # The number cannot take SMS until staff fix it: email carries the regimen on.
            fall_back_to_email(db_session=db_session, reminder=reminder, now=now)
        return target, None
    zone = ZoneInfo(session.timezone)
    if reminder.channel == "sms" and deps.quiet.contains(now.astimezone(zone).time()):
        # Late work (a backlog, a retry) never texts a patient at night.
        states.reschedule(
            db_session,
            reminder,
            source=states.QUEUED,
            due=now,
            zone=zone,
            quiet=deps.quiet,
            now=now,
            reason="deferred by quiet hours",
        )
        return Outcome.DEFERRED, None
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
    except (TemplateError, MissingAddress, KeyError, ValueError) as exc:
        fail(
            db_session,
            reminder_id,
            source=states.QUEUED,
            now=now,
            cause=f"cannot compose: {type(exc).__name__}",
        )
        log.error("reminder %s cannot be composed (%s)", reminder_id, type(exc).__name__)
        return states.FAILED, None
    return Outcome.SEND, message
