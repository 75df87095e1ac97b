"""Backpressure: the dispatcher stops claiming while ``max_queued`` reminders wait in the broker,
resumes as they leave ``queued``, and loses or repeats nothing on the way. Reminders queued
longer than the stale threshold are recovery's and do not hold dispatch back."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, select

from aftercare.clock import FixedClock
from aftercare.reminders import delivery, dispatch, states
from aftercare.runtime import Runtime
from aftercare.storage.models import Reminder
from tests.factories import enrol
from tests.stacks import Stack, enrol_all_due, sent_log, start_aftercare

LIMIT = 50
STALE = timedelta(minutes=5)


class Broker:
    """Records what the dispatcher publishes, as the send queue would hold it."""

    def __init__(self) -> None:
        self.published: list[int] = []
        self.waiting: list[int] = []

    def __call__(self, ids: Sequence[int]) -> None:
        self.published.extend(ids)
        self.waiting.extend(ids)

    def take(self, n: int) -> list[int]:
        taken, self.waiting = self.waiting[:n], self.waiting[n:]
        return taken


def run_dispatch(rt: Runtime, broker: Broker) -> dispatch.DispatchSummary:
    return dispatch.dispatch_due(
        db=rt.db,
        clock=rt.clock,
        publish=broker,
        batch_size=20,
        chunk_size=5,
        max_queued=LIMIT,
        stale_after=STALE,
    )


def count(rt: Runtime, state: str) -> int:
    with rt.db.session() as s:
        return (
            s.scalar(select(func.count()).select_from(Reminder).where(Reminder.state == state)) or 0
        )


def due_burst(rt: Runtime, clock: FixedClock, sessions: int) -> int:
    """``sessions`` sessions whose first reminders are all due now; returns how many are due."""
    for _ in range(sessions):
        enrol(rt)
    clock.advance(timedelta(hours=2))  # welcome (SMS + email) and warning signs are due
    return count(rt, states.SCHEDULED) - _future(rt)


def drain(rt: Runtime, broker: Broker) -> None:
    """Workers taking a few messages at a time between dispatcher runs, until none are left."""
    deps = rt.delivery_deps()
    for _ in range(1000):
        run_dispatch(rt, broker)
        if not broker.waiting:
            return
        for reminder_id in broker.take(17):
            delivery.deliver(deps=deps, reminder_id=reminder_id)
    raise AssertionError("the backlog never drained")


def _future(rt: Runtime) -> int:
    with rt.db.session() as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(Reminder)
                .where(Reminder.state == states.SCHEDULED, Reminder.due_at > rt.clock.now())
            )
            or 0
        )


def test_dispatch_stops_at_the_limit_and_resumes_as_reminders_leave_queued(
    runtime: Runtime, clock: FixedClock
) -> None:
    due = due_burst(runtime, clock, sessions=30)
    assert due > 2 * LIMIT
    broker = Broker()

    first = run_dispatch(runtime, broker)
    assert first.claimed == LIMIT
    assert first.held_back == 1
    assert count(runtime, states.QUEUED) == LIMIT
    # Full: a second run claims nothing until the workers drain.
    again = run_dispatch(runtime, broker)
    assert (again.claimed, again.held_back) == (0, 1)

    deps = runtime.delivery_deps()
    for reminder_id in broker.take(30):
        delivery.deliver(deps=deps, reminder_id=reminder_id)
    resumed = run_dispatch(runtime, broker)
    assert resumed.claimed == 30
    assert count(runtime, states.QUEUED) == LIMIT

    # Drain to the end the same way: everything due is sent once, nothing is left behind.
    drain(runtime, broker)
    assert len(broker.published) == len(set(broker.published)) == due
    assert count(runtime, states.SENT) == due
    assert count(runtime, states.QUEUED) == 0
    assert run_dispatch(runtime, broker).held_back == 0


def test_dispatch_without_a_limit_claims_the_whole_backlog(
    runtime: Runtime, clock: FixedClock
) -> None:
    due = due_burst(runtime, clock, sessions=30)
    broker = Broker()
    summary = dispatch.dispatch_due(
        db=runtime.db, clock=runtime.clock, publish=broker, batch_size=20, max_queued=0
    )
    assert summary.claimed == due
    assert summary.held_back == 0


def test_reminders_queued_longer_than_stale_do_not_hold_dispatch_back_and_recovery_requeues_them(
    runtime: Runtime, clock: FixedClock
) -> None:
    due_burst(runtime, clock, sessions=30)
    lost = Broker()  # the broker lost these messages (a Redis restart, say)
    assert run_dispatch(runtime, lost).claimed == LIMIT
    assert run_dispatch(runtime, lost).claimed == 0

    clock.advance(STALE + timedelta(seconds=1))
    broker = Broker()
    # The lost ones are stale: they no longer count, so dispatch goes on with the backlog...
    assert run_dispatch(runtime, broker).claimed == LIMIT
    assert count(runtime, states.QUEUED) == 2 * LIMIT
    # ...and recovery gives them back to the schedule; the next runs claim them again once
    # there is room, ahead of nothing that was due after them.
    requeued = dispatch.requeue_stale_queued(db=runtime.db, clock=clock, stale_after=STALE)
    assert requeued == LIMIT
    assert set(lost.published).isdisjoint(broker.published)
    drain(runtime, broker)
    sent = Counter(broker.published)
    assert set(lost.published) <= set(sent)
    assert max(sent.values()) == 1
    assert count(runtime, states.QUEUED) == 0
    assert count(runtime, states.SENT) == len(sent)


def test_production_layout_dispatch_worker_and_send_worker_respect_the_limit(
    pg_redis_stack: Stack, processes: list[subprocess.Popen[bytes]]
) -> None:
    """One dispatch worker (``--queues dispatch --concurrency 1``), one send worker
    (``--queues send``) and beat: everything due is sent once, the broker never holds more
    than the limit, and each worker runs only its own queue's tasks."""
    stack = pg_redis_stack
    enrol_all_due(stack, 20)
    with stack.rt.db.session() as s:
        due = s.scalar(
            select(func.count()).select_from(Reminder).where(Reminder.state == states.SCHEDULED)
        )
    assert due is not None
    assert due > 10 * LIMIT
    stack.env["AFTERCARE_DISPATCH_BATCH"] = "100"
    stack.env["AFTERCARE_DISPATCH_MAX_QUEUED"] = str(LIMIT)
    processes.append(
        start_aftercare(
            stack,
            "worker",
            "--queues=dispatch",
            "--pool=prefork",
            "--concurrency=1",
            "--hostname=dispatch@%h",
            name="dispatch",
        )
    )
    processes.append(
        start_aftercare(
            stack,
            "worker",
            "--queues=send",
            "--pool=prefork",
            "--concurrency=2",
            "--hostname=send@%h",
            name="send",
        )
    )
    processes.append(start_aftercare(stack, "beat", name="beat"))

    def in_flight() -> tuple[int, int]:
        with stack.rt.db.session() as s:
            rows = dict(
                s.execute(
                    select(Reminder.state, func.count())
                    .where(Reminder.state.in_((states.SCHEDULED, states.QUEUED, states.SENDING)))
                    .group_by(Reminder.state)
                ).all()
            )
        return rows.get(states.QUEUED, 0), sum(rows.values())

    most_queued = 0
    deadline = time.monotonic() + 240
    queued, pending = in_flight()
    while pending and time.monotonic() < deadline:
        most_queued = max(most_queued, queued)
        time.sleep(0.05)
        queued, pending = in_flight()
    assert pending == 0
    assert 0 < most_queued <= LIMIT
    with stack.rt.db.session() as s:
        expected = s.scalars(select(Reminder.id).where(Reminder.state != states.SKIPPED)).all()
    keys = sent_log(stack)
    assert len(keys) == len(set(keys)), "a reminder was sent twice"
    assert sorted(keys) == sorted(f"reminder-{i}" for i in expected)

    def tasks_run(name: str) -> set[str]:
        lines = (stack.logs / f"{name}.log").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return {
            task
            for r in records
            if "succeeded" in json.dumps(r)
            for task in ("aftercare.dispatch", "aftercare.send")
            if task in json.dumps(r)
        }

    assert tasks_run("dispatch") == {"aftercare.dispatch"}
    assert tasks_run("send") == {"aftercare.send"}
