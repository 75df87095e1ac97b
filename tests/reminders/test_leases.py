"""Worker leases: the work of a worker that is certainly gone is taken over at once, a live
worker's never (SQLite and PostgreSQL, an injected clock, in process).

A worker that is "elsewhere" is a lease row naming another host; one that "ran here and is gone"
names this machine and the PID of a process that has exited.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from aftercare.channels.base import Message, SendResult, Transport
from aftercare.clock import FixedClock
from aftercare.reminders import delivery, dispatch, states
from aftercare.reminders.delivery import sending
from aftercare.reminders.leases import Lease, Machine, take_over
from aftercare.runtime import Runtime
from aftercare.storage.models import Reminder, WorkerLease
from tests.factories import enrol

STALE_AFTER = timedelta(minutes=5)
LEASE = 45.0


class Crash(BaseException):
    """Stands for the worker process dying at this instruction."""


class Edge:
    """The real outbox transport, with a hook that runs before send number ``n``."""

    def __init__(self, inner: Transport, before: dict[int, Callable[[], None]]) -> None:
        self.inner = inner
        self.name = inner.name
        self.channel = inner.channel
        self.before = before
        self.calls = 0

    def send(self, message: Message) -> SendResult:
        self.calls += 1
        if self.calls in self.before:
            self.before.pop(self.calls)()
        return self.inner.send(message)

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        return self.inner.lookup(message, since=since)


def _crash() -> None:
    raise Crash


def _due_batch(rt: Runtime, clock: FixedClock) -> list[int]:
    enrol(rt, channels=("email",), phone=None)
    with rt.db.session() as s:
        s.execute(update(Reminder).values(expires_at=None))
    clock.advance(timedelta(days=3))
    published: list[int] = []
    dispatch.dispatch_due(db=rt.db, clock=clock, publish=published.extend)
    assert len(published) >= 4
    return published


def _deps(rt: Runtime, lease: Lease, before: dict[int, Callable[[], None]]) -> delivery.Deps:
    deps = rt.delivery_deps()
    deps.lease = lease
    deps.transports["email"] = Edge(deps.transports["email"], before)
    return deps


def _sending(rt: Runtime, ids: list[int]) -> dict[int, str | None]:
    with rt.db.session() as s:
        rows = s.execute(
            select(Reminder.id, Reminder.claimed_by).where(
                Reminder.id.in_(ids), Reminder.state == states.SENDING
            )
        )
        return dict(rows.all())  # type: ignore[arg-type,unused-ignore]


def _sent_log(rt: Runtime) -> list[str]:
    path = rt.settings.outbox_dir / "email" / "sent.log"
    return path.read_text().split() if path.exists() else []


def test_a_dead_workers_sends_are_taken_over_once_its_lease_expires_and_not_before(
    runtime: Runtime, clock: FixedClock
) -> None:
    batch = _due_batch(runtime, clock)
    lease = Lease(db=runtime.db, clock=clock, seconds=LEASE, heartbeat=False)
    with pytest.raises(Crash):
        delivery.deliver_batch(deps=_deps(runtime, lease, {1: _crash}), reminder_ids=batch)
    assert set(_sending(runtime, batch).values()) == {lease.id}
    # The lease names this process, which is alive: only time can tell recovery it is gone.
    clock.advance(timedelta(seconds=LEASE - 1))
    assert take_over(db=runtime.db, clock=clock, stale_after=STALE_AFTER).ids == []

    clock.advance(timedelta(seconds=2))
    taken = take_over(db=runtime.db, clock=clock, stale_after=STALE_AFTER)

    assert sorted(taken.ids) == sorted(batch)
    assert taken.gone == 1
    with runtime.db.session() as s:
        assert s.scalars(select(WorkerLease.id)).all() == []
    # Taken over, reconciled by another process: each goes once (the outbox keeps a record).
    other = runtime.delivery_deps()
    for reminder_id in taken.ids:
        delivery.reconcile(deps=other, reminder_id=reminder_id)
    published: list[int] = []
    dispatch.dispatch_due(db=runtime.db, clock=clock, publish=published.extend)
    delivery.deliver_batch(deps=other, reminder_ids=published)
    assert sorted(_sent_log(runtime)) == sorted(f"reminder-{i}" for i in batch)


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(not Machine.here().key, reason="PIDs can be checked on Linux only")
@pytest.mark.parametrize("where", ["here", "elsewhere"])
def test_a_gone_process_on_this_machine_is_taken_over_at_once_one_elsewhere_waits_for_its_lease(
    runtime: Runtime, clock: FixedClock, where: str
) -> None:
    batch = _due_batch(runtime, clock)
    now = clock.now()
    machine = Machine.here()
    with runtime.db.session() as s:
        s.add(
            WorkerLease(
                id="a" * 32,
                host=machine.host if where == "here" else "another-host",
                machine=machine.key,
                pid=_exited_pid(),
                started="1",
                lease_until=now + timedelta(seconds=LEASE),
                created_at=now,
            )
        )
        s.flush()
        s.execute(
            update(Reminder)
            .where(Reminder.id.in_(batch))
            .values(state=states.SENDING, claimed_by="a" * 32, updated_at=now)
        )

    taken = take_over(db=runtime.db, clock=clock, stale_after=STALE_AFTER)

    if where == "here":
        assert sorted(taken.ids) == sorted(batch)
    else:
        assert taken.ids == []
        clock.advance(timedelta(seconds=LEASE + 1))
        assert sorted(take_over(db=runtime.db, clock=clock, stale_after=STALE_AFTER).ids) == sorted(
            batch
        )


def test_a_live_process_on_this_machine_is_never_known_gone(
    runtime: Runtime, clock: FixedClock
) -> None:
    lease = Lease(db=runtime.db, clock=clock, seconds=LEASE, heartbeat=False)
    lease.hold(now=clock.now())
    with runtime.db.session() as s:
        row = s.get_one(WorkerLease, lease.id)
        assert not Machine.here().knows_gone(row)
        row.started = "1"  # the same PID, started at another time: a reused PID
        assert Machine.here().knows_gone(row) == bool(Machine.here().key)


def test_a_worker_whose_lease_lapsed_mid_batch_sends_nothing_recovery_took(
    runtime: Runtime, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker is alive but could not renew its lease (a frozen VM, a database it could not
    reach) while its first send hung: recovery found the lease expired and took the rest over.
    The worker's next send renews its lease and claim first, finds both gone, and skips."""
    monkeypatch.setattr(sending, "SEND_THREADS", 1)
    batch = _due_batch(runtime, clock)
    lease = Lease(db=runtime.db, clock=clock, seconds=LEASE, heartbeat=False)
    taken: list[int] = []

    def lapse_and_recover() -> None:
        clock.advance(timedelta(seconds=LEASE + 1))
        taken.extend(take_over(db=runtime.db, clock=clock, stale_after=STALE_AFTER).ids)

    outcomes = delivery.deliver_batch(
        deps=_deps(runtime, lease, {2: lapse_and_recover}), reminder_ids=batch
    )

    # The first was recorded as sent at once; the second was being sent when the lease lapsed
    # (its provider call had started: recovery takes it and finds it at the provider).
    assert outcomes[0] == states.SENT
    assert taken == batch[1:]
    assert outcomes[2:] == ["taken-over"] * (len(batch) - 2)
    other = runtime.delivery_deps()
    for reminder_id in taken:
        delivery.reconcile(deps=other, reminder_id=reminder_id)
    published: list[int] = []
    dispatch.dispatch_due(db=runtime.db, clock=clock, publish=published.extend)
    delivery.deliver_batch(deps=other, reminder_ids=published)
    assert sorted(_sent_log(runtime)) == sorted(f"reminder-{i}" for i in batch)
    with runtime.db.session() as s:
        assert {s.get_one(Reminder, i).state for i in batch} == {states.SENT}
    assert lease.id is None  # it learnt its lease was gone, and claims under a new one next


def test_a_live_worker_keeps_its_work_while_it_renews_its_lease(
    runtime: Runtime, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery runs between every two sends of a batch that takes minutes of provider time,
    short of AFTERCARE_STALE_AFTER: the worker renews as it goes, and nothing is taken."""
    monkeypatch.setattr(sending, "SEND_THREADS", 1)
    batch = _due_batch(runtime, clock)
    lease = Lease(db=runtime.db, clock=clock, seconds=LEASE, heartbeat=False)
    taken: list[int] = []

    def slow_then_recover() -> None:
        clock.advance(timedelta(seconds=LEASE / 3))
        taken.extend(take_over(db=runtime.db, clock=clock, stale_after=STALE_AFTER).ids)

    hooks: dict[int, Callable[[], None]] = dict.fromkeys(
        range(1, len(batch) + 1), slow_then_recover
    )
    outcomes = delivery.deliver_batch(deps=_deps(runtime, lease, hooks), reminder_ids=batch)

    assert taken == []
    assert outcomes == [states.SENT] * len(batch)
    assert sorted(_sent_log(runtime)) == sorted(f"reminder-{i}" for i in batch)


def test_lease_renewal_by_the_heartbeat_keeps_the_lease_and_stops_once_released(
    runtime: Runtime, clock: FixedClock
) -> None:
    lease = Lease(db=runtime.db, clock=clock, seconds=LEASE, heartbeat=False)
    owner = lease.hold(now=clock.now())
    clock.advance(timedelta(seconds=LEASE - 1))
    lease.beat()
    clock.advance(timedelta(seconds=LEASE - 1))
    assert take_over(db=runtime.db, clock=clock, stale_after=STALE_AFTER).gone == 0
    assert lease.fresh(owner, now=clock.now()) is False  # less than the margin left
    lease.release()
    with runtime.db.session() as s:
        assert s.get(WorkerLease, owner) is None
