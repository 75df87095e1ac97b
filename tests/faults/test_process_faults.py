"""Process faults: workers and dispatchers killed at every point of the send path, dispatchers
racing, the broker delivering a task twice. Every due reminder reaches the provider exactly once.

Real processes (``aftercare worker|beat|dispatch``) on PostgreSQL + Redis with a shared file
clock. Crash points (aftercare/faults.py) make a pool child SIGKILL itself at a precise
instruction; Celery forks a new child and, with acks_late + reject_on_worker_lost, the broker
redelivers the task. What a dead process left in ``queued`` or ``sending`` is recovered once it
is older than AFTERCARE_STALE_AFTER, which the test reaches by moving the clock, not by waiting.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Iterator, Sequence, Sized
from functools import partial

import pytest
import redis
from celery import Celery

from aftercare import faults
from aftercare.reminders import dispatch, retry, states
from aftercare.worker.celeryconfig import SEND_QUEUE
from tests.fakes.twilio import FakeTwilio
from tests.faults.conftest import Recorder
from tests.faults.harness import (
    PAST_STALE,
    SENDING_DUE,
    SMS_STEPS,
    Fleet,
    broker_send_ids,
    drive,
    enrol_many,
    make_burst,
    max_delay,
    not_sent,
    outbox_sends,
    state_counts,
    states_of,
    twilio_env,
    twilio_sends,
    wait_for,
)
from tests.faults.report import tally
from tests.stacks import TREATED, Stack

pytestmark = pytest.mark.e2e

CRASHES = {
    "before_send": ("worker killed before the provider call", "before_send=0.05"),
    "after_send": ("worker killed after the provider accepted", "after_send=0.05"),
    "after_record": ("worker killed after storing the result", "after_record=0.15"),
}


def _draws_in_forked_children(rng: random.Random, children: int = 2) -> list[float]:
    draws = []
    for _ in range(children):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one draw, then exit without running pytest's teardown
            os.write(write, repr(rng.random()).encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        draws.append(float(os.read(read, 64)))
        os.close(read)
    return draws


@pytest.mark.parametrize("rng", [faults._rng, retry._rng], ids=["crash-points", "retry-jitter"])
def test_every_forked_pool_child_draws_its_own_random_numbers(rng: random.Random) -> None:
    """Prefork children inherit their parent's generator: unless it is reseeded at fork, every
    child replacing a crashed one crashes at the same point again (and every worker process
    jitters its retries identically)."""
    first, second = _draws_in_forked_children(rng)
    assert first != second


@pytest.mark.parametrize("point", list(CRASHES))
def test_worker_killed_at_a_crash_point_loses_and_duplicates_nothing(
    point: str, fault_stack: Stack, fleet: Fleet, fault_table: Recorder
) -> None:
    title, spec = CRASHES[point]
    enrol_many(fault_stack, 4)
    burst = make_burst(fault_stack)
    fleet.up(worker_env={"AFTERCARE_FAULTS": spec})

    moves = drive(fault_stack, watch=burst)

    kills = fleet.child_kills("worker")
    result = tally(expected=burst, sends=outbox_sends(fault_stack))
    fault_table.record(
        f"{title} ({spec})",
        faults=kills,
        tally=result,
        delay=max_delay(fault_stack, burst, since=TREATED),
        clock_moves=moves,
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, burst)
    assert kills >= 2, "the crash point was hardly ever reached"
    assert set(states_of(fault_stack, burst).values()) == {states.SENT}


def _at_least(items: Callable[[], Sized], count: int) -> bool:
    return len(items()) >= count


def _killed(fleet: Fleet, worker: str) -> bool:
    return fleet.child_kills(worker) > 0


def _hangs_reach(fake: FakeTwilio, count: int) -> bool:
    return fake.answers().count("hang") >= count


def test_worker_process_group_sigkilled_mid_run_then_replaced(
    fault_stack: Stack, fleet: Fleet, fault_table: Recorder
) -> None:
    """A real SIGKILL of the whole worker (main process and pool) at arbitrary instructions:
    the messages it had prefetched stay unacknowledged in Redis (for the visibility timeout,
    an hour), so the database must recover its reminders. SMS go to the fake Twilio, a separate
    process the kill cannot touch, whose message list answers reconciliation."""
    with FakeTwilio(clock=fault_stack.clock.now) as fake:
        fault_stack.env.update(twilio_env(fake))
        enrol_many(fault_stack, 8, channels=("sms",))
        burst = make_burst(fault_stack, steps=SMS_STEPS)
        fleet.beat(wait=False)
        kills = 0
        for fraction in (0.25, 0.6):
            fleet.worker()
            target = int(len(burst) * fraction)
            wait_for(partial(_at_least, fake.stored, target), timeout=60, what="sends")
            fleet.kill("worker")
            kills += 1
        fleet.worker()

        moves = drive(fault_stack, watch=burst)

        sends = twilio_sends(fault_stack, ((m.sid or "", m.to, m.body) for m in fake.stored()))
    result = tally(expected=burst, sends=sends)
    fault_table.record(
        "worker process group SIGKILLed mid-run, fresh worker started (Twilio)",
        faults=kills,
        tally=result,
        delay=max_delay(fault_stack, burst, since=TREATED),
        clock_moves=moves,
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, burst)
    assert result.unwanted == 0
    assert set(states_of(fault_stack, burst).values()) == {states.SENT}


def test_provider_timing_out_after_accepting_while_a_batch_outlives_stale_after(
    fault_stack: Stack, fleet: Fleet, fault_table: Recorder
) -> None:
    """Twilio stores a message and then answers nothing (the client's read times out), drops
    the connection after accepting, or loses the request. While a worker hangs on such a call
    the rest of its batch waits in ``sending``; here the hang lasts past AFTERCARE_STALE_AFTER
    (the clock moves while it hangs, as twenty 20-second read timeouts in one batch would), so
    recovery reconciles those reminders while their worker is still alive and will get to them.
    """
    with FakeTwilio(clock=fault_stack.clock.now, hang_seconds=3.0) as fake:
        fault_stack.env.update(twilio_env(fake), AFTERCARE_SEND_BATCH="5")
        enrol_many(fault_stack, 4, channels=("sms",))
        burst = make_burst(fault_stack, steps=SMS_STEPS)
        fake.script(*(["ok"] * 9 + ["hang"] + ["ok"] * 5 + ["drop", "lost"]) * 3)
        fleet.up()
        for hangs in (1, 2, 3):
            wait_for(partial(_hangs_reach, fake, hangs), timeout=60, what="a hanging request")
            fault_stack.clock.set(fault_stack.clock.now() + PAST_STALE)

        moves = 3 + drive(fault_stack, watch=burst)

        sends = twilio_sends(fault_stack, ((m.sid or "", m.to, m.body) for m in fake.stored()))
        faults = sum(1 for a in fake.answers() if a in ("hang", "drop", "lost"))
    result = tally(expected=burst, sends=sends)
    fault_table.record(
        "provider times out after accepting / drops / loses requests; batch outlives "
        "STALE_AFTER (Twilio)",
        faults=faults,
        tally=result,
        delay=max_delay(fault_stack, burst, since=TREATED),
        clock_moves=moves,
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, burst)
    assert result.unwanted == 0
    assert set(states_of(fault_stack, burst).values()) == {states.SENT}


def test_dispatcher_killed_after_claiming_loses_nothing(
    fault_stack: Stack, fleet: Fleet, fault_table: Recorder
) -> None:
    """``aftercare dispatch`` dies right after committing its claim, before publishing: the
    claimed reminders sit in ``queued`` with no broker message until recovery requeues them.
    Then the beat-driven dispatcher inside the worker is killed the same way, at random."""
    enrol_many(fault_stack, 4)
    burst = make_burst(fault_stack)
    doomed = {"AFTERCARE_FAULTS": "dispatch_after_claim=1", "AFTERCARE_DISPATCH_BATCH": "25"}
    # Three at once, each dying after its own claim (SKIP LOCKED keeps the claims apart).
    doomed_runs = [fleet.dispatch(name=f"dispatch-{run}", env=doomed) for run in range(3)]
    assert [proc.wait(timeout=60) for proc in doomed_runs] == [-9, -9, -9]
    cli_kills = len(doomed_runs)
    assert state_counts(fault_stack)[states.QUEUED] == 75
    assert broker_send_ids(redis.Redis.from_url(fault_stack.env["AFTERCARE_BROKER_URL"])) == []
    fleet.up(worker_env={"AFTERCARE_FAULTS": "dispatch_after_claim=0.3"})
    # Beat asks for a dispatch four times a second: some of those pool children die too.
    wait_for(partial(_killed, fleet, "worker"), timeout=30, what="a dispatcher to die")

    moves = drive(fault_stack, watch=burst)

    kills = cli_kills + fleet.child_kills("worker")
    result = tally(expected=burst, sends=outbox_sends(fault_stack))
    fault_table.record(
        "dispatcher killed after its claim, before publishing",
        faults=kills,
        tally=result,
        delay=max_delay(fault_stack, burst, since=TREATED),
        clock_moves=moves,
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, burst)
    assert set(states_of(fault_stack, burst).values()) == {states.SENT}


def _summary(fleet: Fleet, name: str) -> dict[str, int]:
    lines = [line for line in fleet.log(name).read_text().splitlines() if '"claimed"' in line]
    summaries = [json.loads(line) for line in lines if '"ts"' not in line]
    assert len(summaries) == 1, f"{name} printed no summary"
    return summaries[0]  # type: ignore[no-any-return]


def test_two_dispatchers_racing_on_postgres_never_claim_the_same_reminder(
    fault_stack: Stack, fleet: Fleet, fault_table: Recorder
) -> None:
    """Two ``aftercare dispatch`` processes at once, in small batches, then two beats at once:
    ``FOR UPDATE SKIP LOCKED`` hands each reminder to exactly one of them."""
    enrol_many(fault_stack, 6)
    burst = make_burst(fault_stack)
    # One reminder per claim: the two contend for the same rows hundreds of times.
    small = {"AFTERCARE_DISPATCH_BATCH": "1"}
    racers = [fleet.dispatch(name=f"dispatch-{n}", env=small) for n in ("a", "b")]
    for proc in racers:
        assert proc.wait(timeout=90) == 0
    claimed = [_summary(fleet, f"dispatch-{n}")["claimed"] for n in ("a", "b")]
    published = [
        i
        for chunk in broker_send_ids(redis.Redis.from_url(fault_stack.env["AFTERCARE_BROKER_URL"]))
        for i in chunk
    ]
    assert sum(claimed) == len(published) == len(set(published)) == len(burst)
    assert all(claimed), f"the dispatchers did not overlap: {claimed}"
    # The second half of the regimen falls due again for two beats racing each other.
    second = enrol_many(fault_stack, 2, start=100)
    assert second
    more = make_burst(fault_stack)
    fleet.up(beats=2)

    expected = [*burst, *more]
    # Nothing gets stuck here, so a pause is only a slow machine: give it time, not recovery.
    moves = drive(fault_stack, watch=expected, idle=3.0)

    result = tally(expected=expected, sends=outbox_sends(fault_stack))
    fault_table.record(
        "two dispatchers racing on PostgreSQL (2 x dispatch, then 2 beats)",
        faults=2,
        tally=result,
        claims_each=" / ".join(str(c) for c in claimed),
        delay=max_delay(fault_stack, expected, since=TREATED),
        clock_moves=moves,
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, expected)
    assert moves == 0, "nothing should have been stuck"


@pytest.fixture
def publisher(fault_stack: Stack) -> Iterator[Celery]:
    app = Celery("fault-publisher", set_as_current=False)
    app.conf.update(
        broker_url=fault_stack.env["AFTERCARE_BROKER_URL"],
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=False,
    )
    yield app
    app.close()


def test_every_send_task_delivered_twice_by_the_broker_sends_once(
    fault_stack: Stack, fleet: Fleet, publisher: Celery, fault_table: Recorder
) -> None:
    """At-least-once delivery taken to the extreme: every chunk is published twice with the
    same task id (a redelivery) and once more with a new id, to a worker whose two pool
    processes run the copies concurrently."""
    enrol_many(fault_stack, 4)
    burst = make_burst(fault_stack)
    copies = 0

    def publish_thrice(ids: Sequence[int]) -> None:
        nonlocal copies
        task_id = str(uuid.uuid4())
        for tid in (task_id, task_id, str(uuid.uuid4())):
            publisher.send_task("aftercare.send", args=[list(ids)], task_id=tid, queue=SEND_QUEUE)
        copies += 2

    dispatch.dispatch_due(
        db=fault_stack.rt.db,
        clock=fault_stack.clock,
        publish=publish_thrice,
        batch_size=500,
        chunk_size=3,
    )
    client = redis.Redis.from_url(fault_stack.env["AFTERCARE_BROKER_URL"])
    queued = broker_send_ids(client)
    assert len(queued) == 3 * len({tuple(c) for c in queued}) > 0
    fleet.worker(wait=False)
    fleet.worker("worker-2", wait=False)
    fleet.beat()

    moves = drive(fault_stack, watch=burst, idle=3.0)

    result = tally(expected=burst, sends=outbox_sends(fault_stack))
    fault_table.record(
        "each send task delivered three times by the broker",
        faults=copies,
        tally=result,
        delay=max_delay(fault_stack, burst, since=TREATED),
        clock_moves=moves,
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, burst)
    assert moves == 0, "nothing should have been stuck"


def _requests_sent(fleet: Fleet, names: Sequence[str], count: int) -> bool:
    return all(
        fleet.log(name).read_text(errors="replace").count(SENDING_DUE) >= count for name in names
    )


def test_two_beats_on_one_data_folder_both_run_cleanly(fault_stack: Stack, fleet: Fleet) -> None:
    """A second beat on the same data folder is harmless: neither keeps a schedule file there
    for the other to break (two beats sharing ``celerybeat-schedule`` failed in shelve.sync,
    FileNotFoundError, about one run in six), and both keep asking for dispatches."""
    names = ("beat-a", "beat-b")
    for name in names:
        fleet.beat(name, wait=False)
    fleet.wait_ready()
    # Four requests a second each (AFTERCARE_DISPATCH_INTERVAL=0.25): dozens of schedule updates.
    wait_for(partial(_requests_sent, fleet, names, 40), timeout=60, what="both beats to tick")

    for name in names:
        assert fleet.procs[name].poll() is None, f"{name} exited"
        assert "Traceback" not in fleet.log(name).read_text(errors="replace"), name
    assert sorted(p.name for p in fault_stack.data_dir.iterdir() if "beat" in p.name) == []
