"""Recording accepted messages (``recording.record_sent``) on SQLite and PostgreSQL.

On PostgreSQL the write is one statement on the driver's connection in autocommit; these pin
that it writes what the Core statements wrote, that a failed write changes nothing and is raised
as Core raises it, and that the pooled connection goes back out of autocommit.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from aftercare.channels.base import SendResult
from aftercare.clock import FixedClock
from aftercare.reminders import delivery, dispatch, states
from aftercare.reminders.recording import record_sent
from aftercare.runtime import Runtime
from aftercare.storage.models import DeliveryAttempt, Reminder
from tests.factories import enrol


def _sending(rt: Runtime, clock: FixedClock, count: int) -> list[tuple[int, int]]:
    """``count`` reminders in ``sending``, each with a pending attempt: (reminder, attempt)."""
    enrol(rt, channels=("email",), phone=None)
    with rt.db.session() as s:
        s.execute(update(Reminder).values(expires_at=None))
    clock.advance(timedelta(days=3))
    published: list[int] = []
    dispatch.dispatch_due(db=rt.db, clock=clock, publish=published.extend)
    assert len(published) >= count
    ids = published[:count]
    now = clock.now()
    with rt.db.session() as s:
        states.transition(s, ids, source=states.QUEUED, target=states.SENDING, now=now)
        for reminder_id in ids:
            s.add(
                DeliveryAttempt(
                    reminder_id=reminder_id, transport="outbox", started_at=now, outcome="pending"
                )
            )
        s.flush()
        rows = s.execute(
            select(DeliveryAttempt.reminder_id, DeliveryAttempt.id).where(
                DeliveryAttempt.reminder_id.in_(ids)
            )
        ).all()
    return sorted((int(r), int(a)) for r, a in rows)


def test_record_sent_writes_the_attempt_and_the_transition(
    runtime: Runtime, clock: FixedClock
) -> None:
    pairs = _sending(runtime, clock, 3)
    with runtime.db.session() as s:
        # One of them was taken out of 'sending' meanwhile: the guarded transition skips it.
        s.execute(update(Reminder).where(Reminder.id == pairs[2][0]).values(state=states.CANCELLED))
    clock.advance(timedelta(seconds=7))

    record_sent(
        db=runtime.db,
        clock=clock,
        sent=[(r, a, SendResult(f"id-{r}", "queued")) for r, a in pairs],
    )

    with runtime.db.session() as s:
        attempts = {a.reminder_id: a for a in s.scalars(select(DeliveryAttempt))}
        reminders = {
            r.id: r
            for r in s.scalars(select(Reminder).where(Reminder.id.in_([r for r, _ in pairs])))
        }
        for reminder_id, _ in pairs:
            attempt = attempts[reminder_id]
            assert (attempt.outcome, attempt.provider_id, attempt.provider_status) == (
                "sent",
                f"id-{reminder_id}",
                "queued",
            )
            assert attempt.finished_at == clock.now()
        for reminder_id, _ in pairs[:2]:
            assert reminders[reminder_id].state == states.SENT
            assert reminders[reminder_id].sent_at == clock.now()
            assert reminders[reminder_id].updated_at == clock.now()
            assert reminders[reminder_id].reason is None
        assert reminders[pairs[2][0]].state == states.CANCELLED
        assert reminders[pairs[2][0]].sent_at is None


def test_a_failed_write_changes_nothing_and_the_connection_stays_transactional(
    runtime: Runtime, clock: FixedClock
) -> None:
    pairs = _sending(runtime, clock, 2)
    too_long = "x" * 65  # provider_id is VARCHAR(64): PostgreSQL refuses it (SQLite does not)
    if runtime.db.is_postgres:
        with pytest.raises(DBAPIError):
            record_sent(
                db=runtime.db,
                clock=clock,
                sent=[(*pairs[0], SendResult("ok")), (*pairs[1], SendResult(too_long))],
            )
        with runtime.db.session() as s:
            assert {
                r.state
                for r in s.scalars(select(Reminder).where(Reminder.id.in_([r for r, _ in pairs])))
            } == {states.SENDING}
            assert {a.outcome for a in s.scalars(select(DeliveryAttempt))} == {"pending"}

    record_sent(db=runtime.db, clock=clock, sent=[(pairs[0][0], pairs[0][1], SendResult("ok"))])

    # A transaction on the pool's connections still rolls back (autocommit was not left on).
    for _ in range(3):
        with runtime.db.engine.connect() as connection:
            connection.execute(
                update(Reminder).where(Reminder.id == pairs[1][0]).values(state=states.CANCELLED)
            )
            connection.rollback()
    with runtime.db.session() as s:
        assert s.get(Reminder, pairs[1][0]).state == states.SENDING  # type: ignore[union-attr]
        assert s.get(Reminder, pairs[0][0]).state == states.SENT  # type: ignore[union-attr]


def test_a_batch_is_recorded_on_every_backend(runtime: Runtime, clock: FixedClock) -> None:
    """End to end through deliver_batch: every accepted message recorded with its provider id."""
    enrol(runtime, channels=("email",), phone=None)
    with runtime.db.session() as s:
        s.execute(update(Reminder).values(expires_at=None))
    clock.advance(timedelta(days=3))
    published: list[int] = []
    dispatch.dispatch_due(db=runtime.db, clock=clock, publish=published.extend)

    outcomes = delivery.deliver_batch(deps=runtime.delivery_deps(), reminder_ids=published)

    assert outcomes == [states.SENT] * len(published)
    with runtime.db.session() as s:
        attempts = s.scalars(
            select(DeliveryAttempt).where(DeliveryAttempt.reminder_id.in_(published))
        ).all()
        assert len(attempts) == len(published)
        assert all(a.outcome == "sent" and a.provider_id for a in attempts)
