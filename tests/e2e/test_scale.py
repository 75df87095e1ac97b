"""Scaling out: two worker processes and two dispatchers (beats) share the work, no duplicates.

Throughput is measured in bench/, not here; this pins correctness when scaled out.
"""

from __future__ import annotations

import json
import subprocess

from sqlalchemy import func, select

from aftercare.reminders import states
from aftercare.storage.models import Reminder
from tests.stacks import Stack, enrol_all_due, sent_log, start_aftercare

SESSIONS = 40


def test_two_workers_and_two_dispatchers_deliver_everything_once(
    pg_redis_stack: Stack, processes: list[subprocess.Popen[bytes]]
) -> None:
    stack = pg_redis_stack
    enrol_all_due(stack, SESSIONS)
    stack.env["AFTERCARE_DISPATCH_BATCH"] = "100"
    for index in (1, 2):
        processes.append(
            start_aftercare(
                stack,
                "worker",
                "--pool=prefork",
                "--concurrency=2",
                f"--hostname=w{index}@%h",
                name=f"worker{index}",
            )
        )
        processes.append(start_aftercare(stack, "beat", name=f"beat{index}"))

    def pending() -> int:
        with stack.rt.db.session() as s:
            count = s.scalar(
                select(func.count())
                .select_from(Reminder)
                .where(Reminder.state.in_((states.SCHEDULED, states.QUEUED, states.SENDING)))
            )
        return count or 0

    import time

    deadline = time.monotonic() + 240
    while pending() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pending() == 0
    with stack.rt.db.session() as s:
        expected = s.scalars(select(Reminder.id).where(Reminder.state != states.SKIPPED)).all()
        sent = s.scalar(
            select(func.count()).select_from(Reminder).where(Reminder.state == states.SENT)
        )
    keys = sent_log(stack)
    assert len(keys) == len(set(keys)), "a reminder was sent twice"
    assert sorted(keys) == sorted(f"reminder-{i}" for i in expected)
    assert sent == len(expected) > 1000
    # Both workers did real sending work.
    for index in (1, 2):
        log = (stack.logs / f"worker{index}.log").read_text()
        done = [
            json.loads(line)
            for line in log.splitlines()
            if line.startswith("{") and "succeeded" in line and "aftercare.send" in line
        ]
        assert done, f"worker {index} sent nothing"
