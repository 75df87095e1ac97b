"""The dispatcher and the delivery state machine, on SQLite and PostgreSQL, with the real outbox.

Crash points are simulated with an exception that is not a TransportError (like a SIGKILL, it
escapes every handler), raised by a transport wrapper at the network edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from aftercare.channels.base import Message, SendResult, Transport, TransportError
from aftercare.clock import FixedClock
from aftercare.reminders import delivery, dispatch, states
from aftercare.reminders.retry import MAX_ATTEMPTS
from aftercare.runtime import Runtime
from aftercare.storage.models import DeliveryAttempt, Patient, Reminder, TreatmentSession
from tests.factories import enrol


class Crash(BaseException):
    """Stands for the worker process dying at this instruction."""


class EdgeTransport:
    """Wraps a real transport; can fail or 'crash' before or after the real send."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.name = inner.name
        self.channel = inner.channel
        self.fail_with: list[TransportError] = []
        self.crash_before = False
        self.crash_after = False

    def send(self, message: Message) -> SendResult:
        if self.fail_with:
            raise self.fail_with.pop(0)
        if self.crash_before:
            raise Crash
        result = self.inner.send(message)
        if self.crash_after:
            raise Crash
        return result

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        return self.inner.lookup(message, since=since)


def sent_log(rt: Runtime, channel: str) -> list[str]:
    path: Path = rt.settings.outbox_dir / channel / "sent.log"
    return path.read_text().split() if path.exists() else []


def reminder_states(rt: Runtime) -> dict[int, str]:
    with rt.db.session() as s:
        return {row.id: row.state for row in s.execute(select(Reminder.id, Reminder.state))}


def keep_only(rt: Runtime, step: str) -> None:
    """Skip every reminder but ``step``'s, so a test follows one reminder through time."""
    with rt.db.session() as s:
        s.execute(update(Reminder).where(Reminder.step != step).values(state=states.SKIPPED))


def claim_all(rt: Runtime) -> list[int]:
    published: list[int] = []

    def publish(ids: Sequence[int]) -> None:
        published.extend(ids)

    dispatch.dispatch_due(db=rt.db, clock=rt.clock, publish=publish, batch_size=3, chunk_size=2)
    return published


def deliver_all(rt: Runtime, ids: Sequence[int], deps: delivery.Deps | None = None) -> list[str]:
    deps = deps or rt.delivery_deps()
    return [delivery.deliver(deps=deps, reminder_id=i) for i in ids]


def test_dispatch_when_nothing_is_due_then_claims_nothing(runtime: Runtime) -> None:
    assert claim_all(runtime) == []


def test_dispatch_claims_only_due_reminders_in_due_order(
    runtime: Runtime, clock: FixedClock
) -> None:
    enrol(runtime)
    clock.advance(timedelta(hours=2))  # welcome (both channels) and warning signs are due
    published = claim_all(runtime)
    with runtime.db.session() as s:
        rows = {r.id: r for r in s.scalars(select(Reminder))}
    assert [rows[i].step for i in published] == [
        "welcome",
        "welcome",
        "warning-signs",
        "warning-signs",
    ]
    assert all(rows[i].state == states.QUEUED for i in published)
    due = [rows[i].due_at for i in published]
    assert due == sorted(due)
    assert all(r.state == states.SCHEDULED for i, r in rows.items() if i not in published)
    # Claimed once: a second dispatcher run finds nothing more.
    assert claim_all(runtime) == []


def test_deliver_when_task_runs_twice_then_message_sent_once(runtime: Runtime) -> None:
    enrol(runtime)
    ids = claim_all(runtime)
    assert deliver_all(runtime, ids) == [states.SENT] * len(ids)
    assert deliver_all(runtime, ids) == ["not-queued"] * len(ids)
    keys = sent_log(runtime, "sms") + sent_log(runtime, "email")
    assert sorted(keys) == sorted(f"reminder-{i}" for i in ids)
    with runtime.db.session() as s:
        attempts = s.scalars(select(DeliveryAttempt)).all()
    assert len(attempts) == len(ids)
    assert {a.outcome for a in attempts} == {"sent"}
    assert set(reminder_states(runtime).values()) >= {states.SENT}


def test_deliver_when_session_cancelled_after_queueing_then_nothing_sent(
    runtime: Runtime,
) -> None:
    session_id = enrol(runtime)
    ids = claim_all(runtime)
    with runtime.db.session() as s:
        s.execute(
            update(TreatmentSession)
            .where(TreatmentSession.id == session_id)
            .values(status="cancelled")
        )
    assert deliver_all(runtime, ids) == [states.CANCELLED] * len(ids)
    assert sent_log(runtime, "sms") == sent_log(runtime, "email") == []


def test_deliver_when_patient_opted_out_of_sms_then_only_email_goes(
    runtime: Runtime, clock: FixedClock
) -> None:
    enrol(runtime)
    with runtime.db.session() as s:
        s.execute(update(Patient).values(sms_opted_out_at=clock.now(), sms_opt_out_source="sms"))
    ids = claim_all(runtime)
    deliver_all(runtime, ids)
    assert sent_log(runtime, "sms") == []
    assert len(sent_log(runtime, "email")) == 1


def test_deliver_when_later_than_valid_for_then_expired_not_sent(
    runtime: Runtime, clock: FixedClock
) -> None:
    enrol(runtime)
    deliver_all(runtime, claim_all(runtime))
    # keep-moving (day 1, 10:00, valid 2 days) is first seen three days late.
    clock.advance(timedelta(days=1, hours=1))
    with runtime.db.session() as s:
        s.execute(
            update(Reminder).where(Reminder.step != "keep-moving").values(state=states.SKIPPED)
        )
    ids = claim_all(runtime)
    clock.advance(timedelta(days=3))
    assert set(deliver_all(runtime, ids)) == {states.EXPIRED}
    assert not any("keep" in k for k in sent_log(runtime, "sms"))


def test_deliver_critical_end_of_continuous_wear_when_very_late_then_still_sent(
    runtime: Runtime, clock: FixedClock
) -> None:
    enrol(runtime, channels=("email",), phone=None)
    with runtime.db.session() as s:
        s.execute(
            update(Reminder).where(Reminder.step != "continuous-end").values(state=states.SKIPPED)
        )
    clock.advance(timedelta(hours=72))
    ids = claim_all(runtime)
    clock.advance(timedelta(days=5))
    assert deliver_all(runtime, ids) == [states.SENT]


def test_deliver_sms_during_quiet_hours_then_deferred_to_next_morning(
    runtime: Runtime, clock: FixedClock
) -> None:
    enrol(runtime, channels=("sms",), email=None)
    ids = claim_all(runtime)  # welcome due 10:30 UTC
    clock.set(datetime.fromisoformat("2026-03-02T22:15:00+00:00"))  # a backlog, late at night
    assert set(deliver_all(runtime, ids)) == {"deferred"}
    with runtime.db.session() as s:
        reminder = s.get_one(Reminder, ids[0])
    assert reminder.state == states.SCHEDULED
    assert reminder.due_at == datetime.fromisoformat("2026-03-03T08:00:00+00:00")
    assert sent_log(runtime, "sms") == []


def test_transient_error_then_retried_later_and_sent_once(
    runtime: Runtime, clock: FixedClock
) -> None:
    enrol(runtime, channels=("email",), phone=None)
    deps = runtime.delivery_deps()
    edge = EdgeTransport(deps.transports["email"])
    edge.fail_with = [TransportError("busy", permanent=False, code="421")]
    deps.transports["email"] = edge
    ids = claim_all(runtime)
    assert deliver_all(runtime, ids, deps) == ["retry"]
    with runtime.db.session() as s:
        reminder = s.get_one(Reminder, ids[0])
        assert reminder.state == states.SCHEDULED
        assert timedelta(seconds=15) <= reminder.due_at - clock.now() <= timedelta(seconds=30)
    assert claim_all(runtime) == []  # not before its backoff
    clock.advance(timedelta(seconds=31))
    assert deliver_all(runtime, claim_all(runtime), deps) == [states.SENT]
    assert sent_log(runtime, "email") == [f"reminder-{ids[0]}"]


def test_transient_errors_when_attempts_run_out_then_failed(
    runtime: Runtime, clock: FixedClock
) -> None:
    enrol(runtime, channels=("email",), phone=None)
    deps = runtime.delivery_deps()
    edge = EdgeTransport(deps.transports["email"])
    edge.fail_with = [TransportError("busy", permanent=False, code="421")] * MAX_ATTEMPTS
    deps.transports["email"] = edge
    keep_only(runtime, "welcome")
    outcomes: list[str] = []
    for _ in range(MAX_ATTEMPTS):
        outcomes += deliver_all(runtime, claim_all(runtime), deps)
        clock.advance(timedelta(hours=2))
    assert outcomes == ["retry"] * (MAX_ATTEMPTS - 1) + [states.FAILED]


def test_permanent_error_then_failed_at_once(runtime: Runtime) -> None:
    enrol(runtime, channels=("email",), phone=None)
    deps = runtime.delivery_deps()
    edge = EdgeTransport(deps.transports["email"])
    edge.fail_with = [TransportError("no such mailbox", permanent=True, code="550")]
    deps.transports["email"] = edge
    ids = claim_all(runtime)
    assert deliver_all(runtime, ids, deps) == [states.FAILED]
    with runtime.db.session() as s:
        attempt = s.scalars(select(DeliveryAttempt)).one()
    assert (attempt.outcome, attempt.error_code) == ("permanent", "550")


@pytest.mark.parametrize(
    ("crash_point", "expected_sends"),
    [("crash_before", 1), ("crash_after", 1)],
    ids=["killed-before-provider-call", "killed-after-provider-accepted"],
)
def test_worker_killed_mid_send_then_reconciled_and_sent_exactly_once(
    runtime: Runtime, clock: FixedClock, crash_point: str, expected_sends: int
) -> None:
    enrol(runtime, channels=("email",), phone=None)
    deps = runtime.delivery_deps()
    edge = EdgeTransport(deps.transports["email"])
    setattr(edge, crash_point, True)
    deps.transports["email"] = edge
    ids = claim_all(runtime)
    with pytest.raises(Crash):
        deliver_all(runtime, ids, deps)
    assert reminder_states(runtime)[ids[0]] == states.SENDING
    # Recovery runs later, with a healthy worker.
    clock.advance(timedelta(minutes=10))
    healthy = runtime.delivery_deps()
    stale = dispatch.stale_sending(db=runtime.db, clock=clock, stale_after=timedelta(minutes=5))
    assert stale == ids
    for reminder_id in stale:
        delivery.reconcile(deps=healthy, reminder_id=reminder_id)
    deliver_all(runtime, claim_all(runtime), healthy)
    assert sent_log(runtime, "email") == [f"reminder-{ids[0]}"] * expected_sends
    assert reminder_states(runtime)[ids[0]] == states.SENT


def test_queued_reminder_whose_broker_message_was_lost_then_requeued_and_sent_once(
    runtime: Runtime, clock: FixedClock
) -> None:
    enrol(runtime, channels=("email",), phone=None)
    lost = claim_all(runtime)  # published into a broker that then lost it
    clock.advance(timedelta(minutes=6))
    assert (
        dispatch.requeue_stale_queued(db=runtime.db, clock=clock, stale_after=timedelta(minutes=5))
        == 1
    )
    again = claim_all(runtime)
    assert again == lost
    deliver_all(runtime, again)
    deliver_all(runtime, lost)  # the "lost" message turns up after all: harmless
    assert sent_log(runtime, "email") == [f"reminder-{lost[0]}"]


def test_publish_failure_then_reminders_returned_to_schedule(runtime: Runtime) -> None:
    enrol(runtime)

    def broken(ids: Sequence[int]) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        dispatch.dispatch_due(db=runtime.db, clock=runtime.clock, publish=broken)
    assert states.QUEUED not in reminder_states(runtime).values()
    assert len(claim_all(runtime)) == 2


class Recording:
    """The real outbox; before each send, notes how many reminders the database records as
    sent (what another process, or the same one after a restart, would see)."""

    def __init__(self, inner: Transport, rt: Runtime, crash_at: int = 0) -> None:
        self.inner = inner
        self.name = inner.name
        self.channel = inner.channel
        self.rt = rt
        self.crash_at = crash_at
        self.recorded_before: list[int] = []

    def send(self, message: Message) -> SendResult:
        with self.rt.db.session() as s:
            self.recorded_before.append(
                len(s.scalars(select(Reminder.id).where(Reminder.state == states.SENT)).all())
            )
        if len(self.recorded_before) == self.crash_at:
            raise Crash
        return self.inner.send(message)

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        return self.inner.lookup(message, since=since)


def _email_batch(rt: Runtime, clock: FixedClock) -> list[int]:
    enrol(rt, channels=("email",), phone=None)
    with rt.db.session() as s:
        s.execute(update(Reminder).values(expires_at=None))
    clock.advance(timedelta(days=3))
    published: list[int] = []
    dispatch.dispatch_due(db=rt.db, clock=clock, publish=published.extend)
    assert len(published) >= 4
    return published


def test_each_accepted_message_is_recorded_sent_before_the_next_send_begins(
    runtime: Runtime, clock: FixedClock
) -> None:
    """One patient's emails go one after another; each is recorded before the next is sent, so a
    worker killed mid-batch leaves only the message in flight unrecorded (an email cannot be
    asked for at the SMTP server: an unrecorded one is sent again)."""
    batch = _email_batch(runtime, clock)
    deps = runtime.delivery_deps()
    edge = Recording(deps.transports["email"], runtime)
    deps.transports["email"] = edge

    outcomes = delivery.deliver_batch(deps=deps, reminder_ids=batch)

    assert outcomes == [states.SENT] * len(batch)
    assert edge.recorded_before == list(range(len(batch)))


def test_worker_killed_mid_batch_then_only_the_message_in_flight_waits_for_recovery(
    runtime: Runtime, clock: FixedClock
) -> None:
    batch = _email_batch(runtime, clock)
    deps = runtime.delivery_deps()
    deps.transports["email"] = Recording(deps.transports["email"], runtime, crash_at=3)
    with pytest.raises(Crash):
        delivery.deliver_batch(deps=deps, reminder_ids=batch)

    after = reminder_states(runtime)
    assert [after[i] for i in batch[:2]] == [states.SENT, states.SENT]
    assert {after[i] for i in batch[2:]} == {states.SENDING}
    assert sent_log(runtime, "email") == [f"reminder-{i}" for i in batch[:2]]
