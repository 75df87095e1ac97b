"""Infrastructure faults: Redis lost (with everything queued in it), PostgreSQL unreachable
mid-dispatch, the clock jumping a day, SMTP and Twilio down for ten minutes.

The failure model: PostgreSQL is durable; Redis may lose every message it holds; providers may
be unreachable or answer 5xx for a long time. Real worker and beat processes, a shared file
clock; time-based recovery is reached by moving the clock.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from aftercare.reminders import states
from aftercare.staff.service import hash_password, issue_token
from aftercare.storage.models import DeliveryAttempt, Reminder, StaffUser
from aftercare.web.app import create_app
from tests.faults.conftest import Recorder
from tests.faults.harness import (
    PAST_STALE,
    SMS_STEPS,
    Fleet,
    LoopbackSmtp,
    OutageTwilio,
    PrivateRedis,
    SmtpRecorder,
    all_ids,
    broker_send_ids,
    drive,
    due_reminders,
    enrol_many,
    make_burst,
    max_delay,
    not_sent,
    outbox_sends,
    reminders,
    settle,
    smtp_sends,
    state_counts,
    states_of,
    twilio_env,
    twilio_sends,
    wait_sent,
)
from tests.faults.report import tally
from tests.stacks import TREATED, Stack
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e


def _api_enrol(stack: Stack, index: int) -> int:
    """Enrol one patient the way staff do: POST /api/v1/sessions with a staff token."""
    now = stack.clock.now()
    with stack.rt.db.session() as s:
        nurse = StaffUser(
            email=f"nurse{index}@riverside.example",
            password_hash=hash_password("a long enough password"),
            role="staff",
            created_at=now,
        )
        s.add(nurse)
        s.flush()
        token = issue_token(db_session=s, staff_id=nurse.id, now=now)[1]
    body = {
        "patient": {
            "name": "Jordan Blake",
            "phone": f"07911 {100000 + index}",
            "email": f"jordan{index}@example.org",
            "timezone": "Europe/London",
            "channels": ["sms", "email"],
        },
        "treated_at": now.isoformat(),
        "regimen": "micro-sclerotherapy",
        "parameters": {"daily_days": 14, "checkin_week": 10},
        "consent": True,
        "contraindications_checked": True,
    }
    with TestClient(create_app(stack.rt)) as client:
        response = client.post(
            "/api/v1/sessions", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 201, response.text
    session_id: int = response.json()["id"]
    return session_id


def test_redis_lost_with_everything_queued_and_again_mid_send(
    private_redis: PrivateRedis,
    private_redis_stack: Stack,
    fleet: Fleet,
    fault_table: Recorder,
) -> None:
    stack = private_redis_stack
    enrol_many(stack, 4)
    burst = make_burst(stack)
    # Everything is claimed and handed to Redis; no worker has taken any of it yet.
    assert fleet.dispatch().wait(timeout=60) == 0
    assert sorted(all_ids(broker_send_ids(private_redis.client()))) == sorted(burst)

    private_redis.kill()
    # Staff go on enrolling while the broker is gone: through the API and the service.
    enrolled = [_api_enrol(stack, 1), *enrol_many(stack, 2, start=50)]
    assert len(enrolled) == 3
    # A dispatcher run meanwhile fails to publish and gives its claim back to the schedule.
    assert fleet.dispatch(name="dispatch-down").wait(timeout=90) != 0
    assert state_counts(stack)[states.QUEUED] == len(burst)
    private_redis.start()

    fleet.up()
    settle(stack)
    # The lost messages are found in the database once stale, and sent; lose Redis again
    # while that is going on.
    stack.clock.set(stack.clock.now() + timedelta(seconds=305))
    wait_sent(stack, len(outbox_sends(stack)) + 40)
    private_redis.kill()
    time.sleep(1.0)
    private_redis.start()

    expected = due_reminders(stack)
    moves = drive(stack, watch=expected, max_moves=20)

    result = tally(expected=expected, sends=outbox_sends(stack))
    fault_table.record(
        "Redis SIGKILLed (no persistence) with all work queued, and again mid-send",
        faults=private_redis.kills,
        tally=result,
        delay=max_delay(stack, expected, since=TREATED),
        clock_moves=moves + 1,
        enrolled_while_down=len(enrolled),
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(stack, expected)
    assert set(burst) <= set(expected)
    assert set(states_of(stack, expected).values()) == {states.SENT}


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[TcpProxy]:
    """A cuttable TCP forwarder in front of the local PostgreSQL."""
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    proxy = TcpProxy(host, int(port or 5432))
    proxy.start()
    yield proxy
    proxy.stop()


def test_postgres_unreachable_mid_dispatch_loses_and_duplicates_nothing(
    fault_stack: Stack, pg_url: str, pg_proxy: TcpProxy, fleet: Fleet, fault_table: Recorder
) -> None:
    """The worker and beat reach PostgreSQL through a proxy that is cut twice while reminders
    are being claimed and sent: transactions die half-way, commits go unanswered. (The test
    itself reads the database directly.)"""
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    fault_stack.env["AFTERCARE_DATABASE_URL"] = pg_url.replace(
        f"@{host_port}/", f"@127.0.0.1:{pg_proxy.port}/"
    )
    enrol_many(fault_stack, 4)
    burst = make_burst(fault_stack)
    fleet.up()
    cuts = 0

    def cut_when_sent(count: int) -> None:
        nonlocal cuts
        wait_sent(fault_stack, count)
        pg_proxy.stop()
        cuts += 1
        time.sleep(2.0)
        pg_proxy.start()

    cut_when_sent(len(burst) // 5)
    # Every send task that ran during the cut failed, and its reminders wait in 'queued' (or
    # 'sending') until they are stale. Cut again while recovery is sending them.
    settle(fault_stack)
    fault_stack.clock.set(fault_stack.clock.now() + PAST_STALE)
    cut_when_sent(len(outbox_sends(fault_stack)) + 20)

    moves = 1 + drive(fault_stack, watch=burst)

    result = tally(expected=burst, sends=outbox_sends(fault_stack))
    fault_table.record(
        "PostgreSQL unreachable mid-dispatch (connections cut for 2 s)",
        faults=cuts,
        tally=result,
        delay=max_delay(fault_stack, burst, since=TREATED),
        clock_moves=moves,
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, burst)
    assert set(states_of(fault_stack, burst).values()) == {states.SENT}


# Monday 23 March 2026, 09:00 UTC: 15 minutes before the end of continuous wear.
FREEZE = TREATED + timedelta(hours=72) - timedelta(minutes=15)
ZONES = ("Europe/London", "Europe/Helsinki", "Asia/Tokyo")


def test_clock_jumping_a_day_sends_what_is_still_useful_and_expires_the_rest(
    fault_stack: Stack, fleet: Fleet, fault_table: Recorder
) -> None:
    """The service stops at 09:00 on the day continuous wear ends and comes back a day later.
    The critical end-of-continuous-wear message still goes; a morning "put them on" still
    within its validity goes; one past it is expired with its reason; nothing else is sent."""
    for index, zone in enumerate(ZONES):
        enrol_many(fault_stack, 2, start=10 * index, timezone=zone)
    with fault_stack.rt.db.session() as s:
        s.execute(
            update(Reminder)
            .where(Reminder.due_at < FREEZE)
            .values(state=states.SKIPPED, reason="sent before this scenario")
        )
    fault_stack.clock.set(FREEZE)
    fleet.up()
    assert settle(fault_stack)
    jump = FREEZE + timedelta(days=1)

    fault_stack.clock.set(jump)
    assert settle(fault_stack, idle=5.0)

    overdue = [r for r in reminders(fault_stack) if r.state != states.SKIPPED and r.due_at <= jump]
    useful = [r.id for r in overdue if r.critical or r.expires_at is None or r.expires_at >= jump]
    stale = [r.id for r in overdue if r.id not in useful]
    result = tally(expected=useful, sends=outbox_sends(fault_stack), withheld=stale)
    fault_table.record(
        "clock jumps forward a day (3 time zones)",
        faults=1,
        tally=result,
        critical_sent_late=sum(1 for r in overdue if r.critical),
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, useful)
    assert result.unwanted == 0, "a stale message was sent"
    after = {r.id: r for r in reminders(fault_stack, [*useful, *stale])}
    assert {after[i].state for i in useful} == {states.SENT}
    assert {(after[i].state, after[i].reason) for i in stale} == {
        (states.EXPIRED, "too late to be useful")
    }
    critical = [r for r in overdue if r.critical]
    assert {r.step for r in critical} == {"continuous-end"}
    assert len(critical) == 2 * len(ZONES) * 2  # SMS and email, every patient
    late_but_useful = {after[i].step for i in useful if not after[i].critical}
    assert "daily-wear" in late_but_useful
    assert stale, "the scenario must expire something"
    # Nothing that was not yet due went out early.
    assert set(outbox_sends(fault_stack)) <= set(useful)


@pytest.fixture
def smtp_behind_proxy() -> Iterator[tuple[LoopbackSmtp, TcpProxy]]:
    server = LoopbackSmtp(SmtpRecorder())
    server.start()
    proxy = TcpProxy("127.0.0.1", server.port)
    proxy.start()
    yield server, proxy
    proxy.stop()
    server.stop()


OUTAGE = timedelta(minutes=10)


def test_smtp_and_twilio_down_for_ten_minutes_then_everything_goes_once(
    fault_stack: Stack,
    fleet: Fleet,
    smtp_behind_proxy: tuple[LoopbackSmtp, TcpProxy],
    fault_table: Recorder,
) -> None:
    """Twilio answers 503 and the SMTP server refuses connections for ten minutes of simulated
    time: every attempt is a transient error, retried with backoff measured on the shared
    clock; once both are back every reminder is delivered exactly once, none given up."""
    smtp, smtp_proxy = smtp_behind_proxy
    twilio = OutageTwilio(clock=fault_stack.clock.now)
    with twilio:
        fault_stack.env.update(twilio_env(twilio))
        fault_stack.env.update(
            AFTERCARE_EMAIL_TRANSPORT="smtp",
            AFTERCARE_SMTP_URL=f"smtp://127.0.0.1:{smtp_proxy.port}?starttls=off&timeout=5",
            AFTERCARE_EMAIL_FROM="care@riverside.example",
        )
        enrol_many(fault_stack, 2)
        burst = make_burst(fault_stack, steps=SMS_STEPS)
        start = fault_stack.clock.now()
        twilio.down = True
        smtp_proxy.stop()
        fleet.up()

        # Through the outage in 30-second steps (finer than the shortest backoff, 15 s, would
        # not change which attempt falls in which step much), then on to each next retry
        # time, a minute at least, once the providers are back.
        steps = 0
        while True:
            settle(fault_stack)
            if not state_counts(fault_stack).get(states.SCHEDULED):
                break
            assert steps < 60, "the retries did not finish"
            with fault_stack.rt.db.session() as s:
                next_due = s.scalar(
                    select(func.min(Reminder.due_at)).where(Reminder.state == states.SCHEDULED)
                )
            assert next_due is not None
            now = fault_stack.clock.now()
            if twilio.down:
                target = min(max(next_due, now + timedelta(seconds=30)), start + OUTAGE)
                if target == start + OUTAGE:
                    # Both come back at the very moment the clock reaches the end.
                    twilio.down = False
                    smtp_proxy.start()
            else:
                target = max(next_due, now + timedelta(seconds=60))
            fault_stack.clock.set(target)
            steps += 1

        sms = twilio_sends(fault_stack, ((m.sid or "", m.to, m.body) for m in twilio.stored()))
        refused = sum(1 for answer in twilio.answers() if answer.startswith("503"))
    sends = [*sms, *smtp_sends(smtp.recorder.received)]
    result = tally(expected=burst, sends=sends)
    with fault_stack.rt.db.session() as s:
        tries = s.execute(
            select(
                DeliveryAttempt.reminder_id, DeliveryAttempt.started_at, DeliveryAttempt.outcome
            ).order_by(DeliveryAttempt.id)
        ).all()
    failed_tries = sum(1 for _ in tries) - len(burst)
    fault_table.record(
        "SMTP refusing connections and Twilio answering 503 for 10 simulated minutes",
        faults=failed_tries,
        tally=result,
        delay=max_delay(fault_stack, burst, since=start),
        twilio_503s=refused,
    )
    assert result.duplicates == 0
    assert result.lost == 0, not_sent(fault_stack, burst)
    assert set(states_of(fault_stack, burst).values()) == {states.SENT}
    # Recovery is prompt: every reminder went out at its first attempt after the outage, and
    # none was given up on during it.
    back = start + OUTAGE
    assert all(outcome == "transient" for _, started, outcome in tries if started < back)
    assert all(outcome == "sent" for _, started, outcome in tries if started >= back)
    # Retries back off on the shared clock: each gap at least half the nominal backoff.
    by_reminder: dict[int, list[timedelta]] = {}
    for reminder_id, started, _outcome in tries:
        by_reminder.setdefault(reminder_id, []).append(started - start)
    for offsets in by_reminder.values():
        gaps = [b - a for a, b in itertools.pairwise(offsets)]
        for n, gap in enumerate(gaps, start=1):
            assert gap >= timedelta(seconds=15 * 2 ** (n - 1)), offsets
    assert max(len(o) for o in by_reminder.values()) >= 4
