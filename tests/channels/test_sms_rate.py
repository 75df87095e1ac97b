"""The per-sender sending rate: one limit shared by every worker through Redis.

The limiter reserves slots ``1 / (0.97 * AFTERCARE_SMS_MPS)`` seconds apart per sender, with no
burst allowance, so any one-second window holds at most ``MPS`` sends. The burst test runs two
real worker processes against the fake Twilio, which enforces the same limit and answers 429
when it is exceeded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from aftercare.channels.base import SmsMessage, TransportError
from aftercare.channels.twilio.ratelimit import (
    LocalRateLimiter,
    RateLimiterUnavailable,
    RateLimitTimeout,
    RedisRateLimiter,
    build_rate_limiter,
    interval_for,
)
from aftercare.channels.twilio.senders import pick_sender
from aftercare.channels.twilio.transport import TwilioTransport
from aftercare.clock import FileClock
from aftercare.reminders import states
from aftercare.runtime import Runtime, set_runtime
from aftercare.settings import Settings
from aftercare.storage.models import Reminder
from tests.channels.test_twilio import CLINIC_NUMBER, PUBLIC_URL, STATUS_CALLBACK, free_port
from tests.conftest import TEST_SECRET, _truncate
from tests.factories import enrol
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, window_counts

MPS = 5
WORKER = [sys.executable, "-m", "aftercare.cli.main", "worker"]
BURST = 40
TREATED = datetime(2026, 3, 20, 10, 0, tzinfo=UTC)  # 10:00 in London: not quiet hours


class SteppedTime:
    """A monotonic clock that only moves when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# The limiter on its own ---------------------------------------------------------------------


def test_local_limiter_spaces_one_senders_sends_by_the_interval() -> None:
    time_ = SteppedTime()
    limiter = LocalRateLimiter(mps=MPS, monotonic=time_.monotonic, sleep=time_.sleep)
    waits = [limiter.acquire(CLINIC_NUMBER) for _ in range(6)]
    assert waits[0] == 0
    assert waits[1:] == pytest.approx([interval_for(MPS)] * 5)
    # Five sends take at least one second: never more than MPS in a second.
    assert time_.now - 1000.0 >= 5 * (1 / MPS)


def test_local_limiter_senders_do_not_wait_for_each_other() -> None:
    time_ = SteppedTime()
    limiter = LocalRateLimiter(mps=MPS, monotonic=time_.monotonic, sleep=time_.sleep)
    for _ in range(3):
        limiter.reserve(CLINIC_NUMBER)
    assert limiter.reserve("ClinicName") == 0


def test_local_limiter_when_slot_too_far_then_refuses_without_reserving() -> None:
    time_ = SteppedTime()
    limiter = LocalRateLimiter(mps=0.1, max_wait=1.0, monotonic=time_.monotonic)
    assert limiter.reserve(CLINIC_NUMBER) == 0
    with pytest.raises(RateLimitTimeout):
        limiter.reserve(CLINIC_NUMBER)
    time_.now += interval_for(0.1)
    assert limiter.reserve(CLINIC_NUMBER) == 0  # the refused call took no slot


def test_redis_limiter_is_shared_by_separate_limiters_per_sender(redis_url: str) -> None:
    # Two limiters stand for two worker processes.
    first = RedisRateLimiter(redis_url, mps=0.5)
    second = RedisRateLimiter(redis_url, mps=0.5)
    assert first.reserve(CLINIC_NUMBER) == 0
    wait = second.reserve(CLINIC_NUMBER)
    assert 0 < wait <= interval_for(0.5)
    assert second.reserve("ClinicName") == 0


def test_redis_limiter_when_slot_too_far_then_refuses_without_reserving(redis_url: str) -> None:
    limiter = RedisRateLimiter(redis_url, mps=0.1, max_wait=1.0)
    assert limiter.reserve(CLINIC_NUMBER) == 0
    with pytest.raises(RateLimitTimeout):
        limiter.reserve(CLINIC_NUMBER)
    other = RedisRateLimiter(redis_url, mps=0.1, max_wait=60.0)
    assert other.reserve(CLINIC_NUMBER) <= interval_for(0.1)  # only one slot was taken


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_reserve_many_takes_each_senders_slots_in_order_up_to_the_lead_and_no_further(
    kind: str, redis_url: str
) -> None:
    """One call reserves a batch's slots: a sender's slots are spaced by the interval, one
    further away than ``within`` is not taken (nor any later one of that sender), and other
    senders are not held up by it."""
    time_ = SteppedTime()
    limiter: LocalRateLimiter | RedisRateLimiter = (
        LocalRateLimiter(mps=1, monotonic=time_.monotonic, sleep=time_.sleep)
        if kind == "local"
        else RedisRateLimiter(redis_url, mps=1)
    )
    interval = interval_for(1)
    slots = limiter.reserve_many(
        [CLINIC_NUMBER, CLINIC_NUMBER, CLINIC_NUMBER, "ClinicName", CLINIC_NUMBER], within=1.5
    )
    assert [s.held for s in slots] == [True, True, False, True, False]
    assert slots[0].wait == 0
    assert slots[3].wait == 0
    assert slots[1].wait == pytest.approx(interval, abs=0.05)
    assert slots[2].wait == pytest.approx(2 * interval, abs=0.05)  # how far it is
    # The refused slots were not taken: the next one is still the third.
    (again,) = limiter.reserve_many([CLINIC_NUMBER], within=60)
    assert again.held
    assert again.wait == pytest.approx(2 * interval, abs=0.05)


def test_redis_reserve_many_when_unreachable_then_unavailable() -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", mps=MPS)
    with pytest.raises(RateLimiterUnavailable):
        limiter.reserve_many([CLINIC_NUMBER], within=1.0)


def test_limiter_follows_the_broker_redis_else_runs_in_process(redis_url: str) -> None:
    assert isinstance(build_rate_limiter(broker_url=redis_url, mps=MPS), RedisRateLimiter)
    assert isinstance(build_rate_limiter(broker_url="", mps=MPS), LocalRateLimiter)
    assert isinstance(build_rate_limiter(broker_url="filesystem://", mps=MPS), LocalRateLimiter)


def test_redis_unreachable_then_transient_error_and_nothing_sent() -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", mps=MPS)
    with pytest.raises(RateLimiterUnavailable):
        limiter.reserve(CLINIC_NUMBER)
    with FakeTwilio() as fake:
        transport = TwilioTransport(
            account_sid=ACCOUNT_SID,
            auth_token=AUTH_TOKEN,
            from_=CLINIC_NUMBER,
            status_callback=STATUS_CALLBACK,
            api_base=fake.url,
            limiter=limiter,
        )
        with pytest.raises(TransportError) as failed:
            transport.send(SmsMessage(key="reminder-1", to="+447911123456", body="Hello"))
        assert (failed.value.permanent, failed.value.code) == (False, "rate-limiter")
        assert fake.received == []


# A burst through two real workers -----------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _phones() -> list[str]:
    return [f"+4479111234{i:02d}" for i in range(BURST)]


def _wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("senders", "send_batch"),
    [
        # One reminder per task: the burst spreads over every process.
        ((CLINIC_NUMBER,), "1"),
        # A pool of numbers, several reminders per task: a batch's SMS go out concurrently.
        ((CLINIC_NUMBER, "+15005550007", "+15005550008"), "4"),
    ],
    ids=["one-sender", "sender-pool"],
)
def test_burst_of_due_sms_through_two_workers_stays_under_mps_and_sends_each_once(
    tmp_path: Path,
    pg_url: str,
    redis_url: str,
    processes: list[subprocess.Popen[bytes]],
    senders: tuple[str, ...],
    send_batch: str,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    clock = FileClock(data_dir / "clock")
    clock.set(TREATED)
    fake = FakeTwilio(clock=clock.now, mps=MPS).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERCARE_")}
    env.update(
        AFTERCARE_DATA_DIR=str(data_dir),
        AFTERCARE_CLOCK=f"file:{data_dir / 'clock'}",
        AFTERCARE_DATABASE_URL=pg_url,
        AFTERCARE_BROKER_URL=redis_url,
        AFTERCARE_SMS_TRANSPORT="twilio",
        AFTERCARE_EMAIL_TRANSPORT="outbox",
        AFTERCARE_TWILIO_API_BASE=fake.url,
        AFTERCARE_TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        AFTERCARE_TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        AFTERCARE_TWILIO_FROM=", ".join(senders),
        AFTERCARE_PUBLIC_BASE_URL=PUBLIC_URL,
        AFTERCARE_SMS_MPS=str(MPS),
        AFTERCARE_SEND_BATCH=send_batch,
        AFTERCARE_SECRET_KEY=TEST_SECRET,
        AFTERCARE_LOG_LEVEL="DEBUG",
        AFTERCARE_CLINIC_NAME="Riverside Vein Clinic",
        AFTERCARE_CLINIC_PHONE="020 7946 0000",
    )
    settings = Settings.from_environment(env)
    rt = Runtime(settings)
    rt.clock = clock
    try:
        set_runtime(rt)
        try:
            for i, phone in enumerate(_phones()):
                enrol(
                    rt, now=TREATED, name=f"Patient {i}", phone=phone, email=None, channels=("sms",)
                )
        finally:
            set_runtime(None)
        with rt.db.session() as s:
            s.execute(
                update(Reminder).where(Reminder.step != "welcome").values(state=states.SKIPPED)
            )
        for name in ("worker-a", "worker-b"):
            with (logs / f"{name}.log").open("ab") as out:
                processes.append(
                    subprocess.Popen(
                        [*WORKER, "--pool=prefork", "--concurrency=2"],
                        env=env,
                        stdout=out,
                        stderr=out,
                    )
                )
        dispatched = subprocess.run(
            [sys.executable, "-m", "aftercare.cli.main", "dispatch"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert dispatched.returncode == 0, dispatched.stderr

        def all_sent() -> bool:
            with rt.db.session() as s:
                rows = s.scalars(
                    select(Reminder.state).where(Reminder.state != states.SKIPPED)
                ).all()
            return len(rows) == BURST and set(rows) == {states.SENT}

        _wait_for(all_sent, timeout=120, what="every SMS to be sent")
    finally:
        fake.stop()
        _truncate(rt.db)
        rt.db.dispose()

    assert [r.answer for r in fake.received if r.answer != "201"] == []  # no 429s, no errors
    assert sorted(r.to for r in fake.received) == sorted(_phones())  # each exactly once
    # Each patient's SMS from their own pool number; every sender used, none above its MPS.
    assert {r.to: r.from_ for r in fake.received} == {
        phone: pick_sender(senders, phone) for phone in _phones()
    }
    assert {r.from_ for r in fake.received} == set(senders)
    for sender in senders:
        assert max(window_counts([r.at for r in fake.received if r.from_ == sender])) <= MPS
    worker_logs = [(logs / f"worker-{name}.log").read_text(errors="replace") for name in "ab"]
    assert all('reminder(s)"' in text for text in worker_logs), "one worker sent nothing"
    for text in worker_logs:
        assert "7911123" not in text  # no patient number in any log line
