"""Workers SIGKILLed mid-batch over SMTP, and live workers racing recovery, with real processes.

SMTP keeps no list a client can ask, so every email that was accepted and not yet recorded when
its worker died is sent again: the count of those is what a kill costs. Each accepted send is
recorded before its thread sends another, so that is at most one email per send thread (it was
the whole batch when a batch was recorded at its end). The work a killed worker held is taken
over as soon as recovery knows it is gone (its processes ran on this machine and no longer
exist), so nothing waits for AFTERCARE_STALE_AFTER: the shared clock is never moved.

The race: two live workers, a third started mid-run (its boot-time recovery pass), recovery
every second, and a clock running at twice real speed. Any takeover of a live worker's email
would send it twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from aftercare.reminders import states
from aftercare.reminders.delivery import sending
from aftercare.storage.migrate import upgrade
from aftercare.storage.models import DeliveryAttempt, Reminder
from tests.faults.conftest import Recorder
from tests.faults.harness import (
    Fleet,
    LoopbackSmtp,
    SmtpRecorder,
    drive,
    due_reminders,
    enrol_many,
    make_burst,
    max_delay,
    not_sent,
    outbox_sends,
    smtp_sends,
    states_of,
    wait_for,
)
from tests.faults.report import tally
from tests.stacks import Stack, make_stack

pytestmark = pytest.mark.e2e

KILLS = 6
CONCURRENCY = 2


@dataclass
class SlowSmtp(SmtpRecorder):
    """Accepts each message after a short pause, as a real server does: a batch of emails takes
    a moment to send, so a kill lands in the middle of one."""

    pause: float = 0.02

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.pause)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def smtp(fault_stack: Stack) -> Iterator[LoopbackSmtp]:
    server = LoopbackSmtp(SlowSmtp())
    server.start()
    fault_stack.env.update(
        AFTERCARE_EMAIL_TRANSPORT="smtp",
        AFTERCARE_SMTP_URL=f"smtp://127.0.0.1:{server.port}?starttls=off&timeout=5",
        AFTERCARE_EMAIL_FROM="care@riverside.example",
    )
    yield server
    server.stop()


def _received(server: LoopbackSmtp, count: int) -> bool:
    return len(server.recorder.received) >= count


def _unrecorded(stack: Stack, server: LoopbackSmtp) -> set[tuple[int, int]]:
    """Emails the server accepted that the database does not record as sent, as (reminder id,
    how many times the server has accepted it)."""
    accepted = Counter(i for i in smtp_sends(list(server.recorder.received)) if i is not None)
    with stack.rt.db.session() as s:
        recorded = set(
            s.scalars(
                select(Reminder.id).where(
                    Reminder.id.in_(list(accepted)), Reminder.state == states.SENT
                )
            )
        )
    return {(i, n) for i, n in accepted.items() if i not in recorded}


def test_worker_sigkilled_mid_batch_over_smtp_resends_at_most_the_emails_in_flight(
    fault_stack: Stack, fleet: Fleet, smtp: LoopbackSmtp, fault_table: Recorder
) -> None:
    fault_stack.env["AFTERCARE_SEND_BATCH"] = "30"
    # An evening message every day, as before evening_reminders existed: the same burst size.
    enrol_many(fault_stack, 8, channels=("email",), parameters={"evening_reminders": "all"})
    burst = make_burst(fault_stack)
    assert len(burst) == 8 * 37
    due = fault_stack.clock.now()
    with ticking(fault_stack, speed=1):
        in_flight = _kill_repeatedly(fault_stack, fleet, smtp, burst)
        # Never past AFTERCARE_STALE_AFTER (a step of zero: stuck work fails the test), only on
        # to the retry time of reminders that several kills hit (15-30 s backoff, doubling).
        moves = drive(fault_stack, watch=burst, step=timedelta(0), max_moves=60)

    sends = smtp_sends(list(smtp.recorder.received))
    result = tally(expected=burst, sends=sends)
    per_kill = [len(unrecorded) for unrecorded in in_flight]
    fault_table.record(
        f"worker process group SIGKILLed mid-batch {KILLS} times, fresh worker each time "
        "(SMTP, batches of 30)",
        faults=KILLS,
        tally=result,
        delay=max_delay(fault_stack, burst, since=due),
        clock_moves=moves,
        email_duplicates_per_kill=" ".join(str(n) for n in per_kill),
    )
    print(f"email duplicates per kill: {per_kill}")
    assert result.lost == 0, not_sent(fault_stack, burst)
    assert result.unwanted == 0
    assert set(states_of(fault_stack, burst).values()) == {states.SENT}
    # Every duplicate was an email in flight at a kill, and every one of those was sent again.
    assert result.duplicates == sum(per_kill)


def _kill_repeatedly(
    stack: Stack, fleet: Fleet, smtp: LoopbackSmtp, burst: list[int]
) -> list[set[tuple[int, int]]]:
    """Start a worker, SIGKILL its process group mid-batch, KILLS times over; returns the
    emails accepted and not recorded at each kill."""
    fleet.beat(wait=False)
    in_flight: list[set[tuple[int, int]]] = []
    for kill in range(KILLS):
        fleet.worker(concurrency=CONCURRENCY)
        target = len(burst) * (kill + 1) // (KILLS + 2)
        wait_for(partial(_received, smtp, target), timeout=60, interval=0.01, what="emails")
        fleet.kill("worker")
        # New at this kill (an earlier kill's may still wait for their resend).
        in_flight.append(_unrecorded(stack, smtp).difference(*in_flight))
        print(f"kill {kill + 1}: accepted and unrecorded {sorted(in_flight[-1])}")
        # At most one email per send thread: each is recorded before its thread sends another.
        assert len(in_flight[-1]) <= CONCURRENCY * sending.SEND_THREADS, in_flight[-1]
    fleet.worker(concurrency=CONCURRENCY)
    return in_flight


@contextmanager
def ticking(stack: Stack, *, speed: float) -> Iterator[None]:
    """The shared clock runs at ``speed`` times real time (it stands still otherwise): time
    passes for the workers as it does in production, where a gone worker's prefetched messages
    are requeued once they have been queued a few dispatch intervals."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.25):
            stack.clock.set(stack.clock.now() + timedelta(seconds=0.25 * speed))

    thread = threading.Thread(target=run, daemon=True, name="ticking-clock")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def test_live_workers_racing_recovery_and_boot_passes_never_send_an_email_twice(
    fault_stack: Stack, fleet: Fleet, smtp: LoopbackSmtp, fault_table: Recorder
) -> None:
    enrol_many(fault_stack, 8, channels=("email",))
    burst = make_burst(fault_stack)
    # Twice real speed: leases (45 s) are renewed every 5 s of real time, 10 s of this clock, so
    # a live worker's lease never runs out.
    with ticking(fault_stack, speed=2):
        fleet.worker("worker-a", wait=False)
        fleet.worker("worker-b", wait=False)
        fleet.beat(wait=False)
        fleet.wait_ready()
        # A third worker joins mid-run: its boot-time recovery pass must take nothing live.
        wait_for(partial(_received, smtp, len(burst) // 3), timeout=60, what="emails")
        fleet.worker("worker-c")
        # Never moved on past a lease: a slow moment only waits (a step of zero).
        moves = drive(fault_stack, watch=burst, step=timedelta(0), max_moves=60)

    result = tally(expected=burst, sends=smtp_sends(list(smtp.recorder.received)))
    with fault_stack.rt.db.session() as s:
        settled = Counter(s.scalars(select(DeliveryAttempt.outcome)))
    fault_table.record(
        "three live workers (one started mid-run), recovery every second, clock at 2x (SMTP)",
        faults=0,
        tally=result,
        clock_moves=moves,
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, burst)
    # Nothing was taken over: every attempt ended as its own worker recorded it.
    assert settled == {"sent": len(burst)}


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Stack]:
    """The embedded default (SQLite, the file broker, a solo worker), as ``aftercare run``
    starts it, with default recovery settings."""
    stack = make_stack(tmp_path, {})
    upgrade(stack.rt.settings.effective_database_url)
    yield stack
    stack.rt.db.dispose()


@pytest.fixture
def embedded_smtp(embedded: Stack) -> Iterator[LoopbackSmtp]:
    server = LoopbackSmtp(SlowSmtp())
    server.start()
    embedded.env.update(
        AFTERCARE_EMAIL_TRANSPORT="smtp",
        AFTERCARE_SMTP_URL=f"smtp://127.0.0.1:{server.port}?starttls=off&timeout=5",
        AFTERCARE_EMAIL_FROM="care@riverside.example",
    )
    yield server
    server.stop()


def test_embedded_default_killed_mid_run_and_restarted_sends_everything_due_at_once(
    embedded: Stack, embedded_smtp: LoopbackSmtp, fault_table: Recorder
) -> None:
    """Issue 12's run: twenty patients just enrolled, the embedded default with SMTP, worker and
    beat SIGKILLed mid-run and started again. What the dead worker held (sending, and queued in
    the file broker's lost prefetch) goes at the restarted worker's first recovery pass. The
    clock runs at real speed after the restart and is never moved on (a step of zero): stuck
    work would fail the test, as it did when it waited for AFTERCARE_STALE_AFTER."""
    enrol_many(embedded, 20)
    due = due_reminders(embedded)
    fleet = Fleet(embedded)
    try:
        fleet.start("worker", name="worker")
        fleet.beat()
        wait_for(partial(_received, embedded_smtp, 5), timeout=60, interval=0.01, what="emails")
        fleet.kill("worker")
        fleet.kill("beat")
        in_flight = _unrecorded(embedded, embedded_smtp)
        restarted = embedded.clock.now()
        with ticking(embedded, speed=1):
            fleet.start("worker", name="worker")
            fleet.beat()
            moves = drive(embedded, watch=due, step=timedelta(0), idle=3.0)
    finally:
        fleet.stop_all()

    sends = [*smtp_sends(list(embedded_smtp.recorder.received)), *outbox_sends(embedded)]
    result = tally(expected=due, sends=sends)
    fault_table.record(
        "embedded default (SQLite, file broker, solo worker) SIGKILLed mid-run with beat, "
        "both restarted (SMTP)",
        faults=1,
        tally=result,
        delay=max_delay(embedded, due, since=restarted),
        clock_moves=moves,
        email_duplicates_per_kill=str(len(in_flight)),
    )
    print(f"\nlast reminder sent {max_delay(embedded, due, since=restarted)} after the restart")
    assert result.lost == 0, not_sent(embedded, due)
    assert result.unwanted == 0
    assert result.duplicates == len(in_flight) <= sending.SEND_THREADS
