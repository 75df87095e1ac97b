"""End to end, a course of treatment: two sessions of the same patient three weeks apart, played
through real beat and worker processes and a real broker on a shared file clock (PostgreSQL +
Redis, and the embedded default). The patient gets exactly one stream of daily messages at a
time and one check-in, the later session's; nothing superseded is ever sent."""

from __future__ import annotations

import subprocess
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from aftercare.cli.demo import play
from aftercare.reminders import states
from aftercare.runtime import set_runtime
from aftercare.sessions import enrolment
from aftercare.storage.models import Reminder
from tests.factories import session_request
from tests.stacks import TREATED, Stack, sent_log, start_aftercare

pytestmark = pytest.mark.e2e

SECOND = TREATED + timedelta(weeks=3)
LONDON = ZoneInfo("Europe/London")


def _record(stack: Stack, at: datetime) -> int:
    with stack.rt.db.session() as s:
        return enrolment.enrol(
            db_session=s,
            request=session_request(treated_at=at.isoformat()),
            registry=stack.rt.registry,
            quiet=stack.rt.quiet,
            now=at,
            actor_id=None,
        ).id


def _two_sessions_three_weeks_apart(
    stack: Stack, processes: list[subprocess.Popen[bytes]], *worker: str
) -> None:
    set_runtime(stack.rt)
    try:
        first = _record(stack, TREATED)
    finally:
        set_runtime(None)
    processes.append(start_aftercare(stack, "worker", *worker, name="worker"))
    processes.append(start_aftercare(stack, "beat", name="beat"))
    recorded: list[tuple[int, datetime]] = []

    def record_the_second(now: datetime) -> None:
        # Once the first session's next message is later than three weeks, the clock moves to
        # exactly three weeks and the second session is recorded then.
        with stack.rt.db.session() as s:
            next_due = s.scalar(
                select(func.min(Reminder.due_at)).where(Reminder.state == states.SCHEDULED)
            )
        if not recorded and (next_due is None or next_due > SECOND):
            stack.clock.set(SECOND)
            recorded.append((_record(stack, SECOND), SECOND))

    play(stack.rt, stack.clock, on_step=record_the_second, step_timeout=90)

    second, at = recorded[0]
    second_at = at.astimezone(LONDON)
    with stack.rt.db.session() as s:
        reminders = s.scalars(select(Reminder).order_by(Reminder.due_at, Reminder.id)).all()
        s.expunge_all()
    assert {r.session_id for r in reminders} == {first, second}
    assert {r.state for r in reminders} <= {states.SENT, states.SKIPPED, states.SUPERSEDED}
    sent = [r for r in reminders if r.state == states.SENT]
    superseded = [r for r in reminders if r.state == states.SUPERSEDED]
    # Exactly once, and nothing superseded reached the outbox.
    assert sorted(sent_log(stack)) == sorted(f"reminder-{r.id}" for r in sent)
    assert superseded
    assert {r.session_id for r in superseded} == {first}
    assert {r.reason for r in superseded} == {
        f"superseded by session {second} (treated {second_at.day} {second_at:%b %Y})"
    }
    # One stream of daily messages: never two on a day, the first session's all before the
    # second's began.
    daily = [r for r in sent if r.step == "daily-wear"]
    per_day = Counter(r.due_at.astimezone(LONDON).date() for r in daily)
    assert max(per_day.values()) == 1
    assert max(r.due_at for r in daily if r.session_id == first) < min(
        r.due_at for r in daily if r.session_id == second
    )
    # One check-in: the later session's, by SMS and by email.
    checkins = [r for r in sent if r.step == "checkin"]
    assert sorted((r.session_id, r.channel) for r in checkins) == [
        (second, "email"),
        (second, "sms"),
    ]
    assert {r.session_id for r in superseded if r.step == "checkin"} == {first}
    # Sun advice after the second session comes from it alone.
    assert {r.session_id for r in sent if r.step == "sun" and r.due_at > SECOND} == {second}


def test_two_sessions_three_weeks_apart_on_postgres_and_redis_send_one_plan(
    pg_redis_stack: Stack, processes: list[subprocess.Popen[bytes]]
) -> None:
    _two_sessions_three_weeks_apart(pg_redis_stack, processes, "--pool=prefork", "--concurrency=2")


def test_two_sessions_three_weeks_apart_on_embedded_default_send_one_plan(
    embedded_stack: Stack, processes: list[subprocess.Popen[bytes]]
) -> None:
    _two_sessions_three_weeks_apart(embedded_stack, processes)
