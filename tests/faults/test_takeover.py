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
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import select

from aftercare.reminders import delivery, states
from aftercare.storage.models import DeliveryAttempt, Reminder
from tests.faults.conftest import Recorder
from tests.faults.harness import (
    STALE_AFTER,
    Fleet,
    LoopbackSmtp,
    SmtpRecorder,
    drive,
    enrol_many,
    make_burst,
    max_delay,
    not_sent,
    smtp_sends,
    states_of,
    wait_for,
)
from tests.faults.report import tally
from tests.stacks import Stack

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
    enrol_many(fault_stack, 8, channels=("email",))
    burst = make_burst(fault_stack)
    assert len(burst) == 8 * 37
    due = fault_stack.clock.now()
    fleet.beat(wait=False)
    in_flight: list[set[tuple[int, int]]] = []
    for kill in range(KILLS):
        fleet.worker(concurrency=CONCURRENCY)
        target = len(burst) * (kill + 1) // (KILLS + 2)
        wait_for(partial(_received, smtp, target), timeout=60, interval=0.01, what="emails")
        fleet.kill("worker")
        # New at this kill (an earlier kill's may still wait for their resend).
        in_flight.append(_unrecorded(fault_stack, smtp).difference(*in_flight))
        print(f"kill {kill + 1}: accepted and unrecorded {sorted(in_flight[-1])}")
        # At most one email per send thread: each is recorded before its thread sends another.
        assert len(in_flight[-1]) <= CONCURRENCY * delivery.SEND_THREADS, in_flight[-1]
    fleet.worker(concurrency=CONCURRENCY)

    # Never past AFTERCARE_STALE_AFTER (a step of zero: stuck work fails the test), only on to
    # the retry time of reminders that several kills hit (15-30 s backoff, doubling).
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
    # Nothing waited for AFTERCARE_STALE_AFTER: the dead worker's work was taken over at once.
    assert max_delay(fault_stack, burst, since=due) < STALE_AFTER


def _run_clock(stack: Stack, stop: threading.Event) -> None:
    """The shared clock at twice real speed: leases (45 s) are renewed every 5 s of real time,
    10 s of this clock, so a live worker's lease never runs out."""
    while not stop.wait(0.25):
        stack.clock.set(stack.clock.now() + timedelta(seconds=0.5))


def test_live_workers_racing_recovery_and_boot_passes_never_send_an_email_twice(
    fault_stack: Stack, fleet: Fleet, smtp: LoopbackSmtp, fault_table: Recorder
) -> None:
    enrol_many(fault_stack, 8, channels=("email",))
    burst = make_burst(fault_stack)
    stop = threading.Event()
    ticking = threading.Thread(target=_run_clock, args=(fault_stack, stop), daemon=True)
    ticking.start()
    try:
        fleet.worker("worker-a", wait=False)
        fleet.worker("worker-b", wait=False)
        fleet.beat(wait=False)
        fleet.wait_ready()
        # A third worker joins mid-run: its boot-time recovery pass must take nothing live.
        wait_for(partial(_received, smtp, len(burst) // 3), timeout=60, what="emails")
        fleet.worker("worker-c")
        moves = drive(fault_stack, watch=burst, idle=3.0)
    finally:
        stop.set()
        ticking.join(timeout=5)

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
    assert moves == 0
