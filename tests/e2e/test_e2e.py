"""End to end: the whole regimen through real beat and worker processes and a real broker.

A shared file clock is moved from one due time to the next; every reminder must reach the
outbox exactly once, in due order for each patient, on PostgreSQL + Redis and on the embedded
default (SQLite + file broker). The broker and the processes' logs are searched for patient data.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
import redis
from sqlalchemy import select

from aftercare.cli.demo import play
from aftercare.reminders import states
from aftercare.runtime import set_runtime
from aftercare.storage.db import Database
from aftercare.storage.models import Reminder
from tests.factories import PATIENT_EMAIL, PATIENT_NAME, PATIENT_PHONE, enrol
from tests.stacks import TREATED, Stack, sent_log, start_aftercare

pytestmark = pytest.mark.e2e

PATIENT_DATA = [PATIENT_NAME, PATIENT_NAME.split()[0], PATIENT_PHONE, PATIENT_EMAIL, "7911123456"]


def _run_whole_regimen(
    stack: Stack, processes: list[subprocess.Popen[bytes]], *worker: str
) -> None:
    set_runtime(stack.rt)
    try:
        enrol(stack.rt, now=TREATED)
        enrol(
            stack.rt,
            now=TREATED,
            name="Second Patient",
            phone="07912 345678",
            email="second@example.org",
            timezone="America/New_York",
            parameters={"daily_days": 7},
        )
    finally:
        set_runtime(None)
    processes.append(start_aftercare(stack, "worker", *worker, name="worker"))
    processes.append(start_aftercare(stack, "beat", name="beat"))
    order: list[str] = []

    def record(now: datetime) -> None:
        order.append(now.isoformat())

    play(stack.rt, stack.clock, on_step=record, step_timeout=90)

    with stack.rt.db.session() as s:
        reminders = s.scalars(select(Reminder).order_by(Reminder.due_at, Reminder.id)).all()
    scheduled = [r for r in reminders if r.state != states.SKIPPED]
    assert len(scheduled) > 60
    assert {r.state for r in scheduled} == {states.SENT}
    sent = sent_log(stack)
    # Exactly once: every reminder's key appears once, and nothing else was sent.
    assert sorted(sent) == sorted(f"reminder-{r.id}" for r in scheduled)
    # In order: a reminder never reaches the outbox before one due earlier to the same patient
    # (different patients' reminders go concurrently).
    by_key = {f"reminder-{r.id}": r for r in scheduled}
    for channel in ("sms", "email"):
        path = stack.data_dir / "outbox" / channel / "sent.log"
        keys = path.read_text().split()
        for session_id in {r.session_id for r in scheduled}:
            due = [by_key[k].due_at for k in keys if by_key[k].session_id == session_id]
            assert due == sorted(due)
        assert len({by_key[k].session_id for k in keys}) == 2
    with stack.rt.db.session() as s:
        sent_at = {r.id: (r.due_at, r.sent_at) for r in s.scalars(select(Reminder))}
    # Sent at the (simulated) moment it was due, not later.
    assert all(
        sent_time is not None and timedelta(0) <= sent_time - due_time < timedelta(seconds=2)
        for due_time, sent_time in (sent_at[r.id] for r in scheduled)
    )
    assert len(order) >= 40
    _assert_no_patient_data_in_logs(stack)


def _assert_no_patient_data_in_logs(stack: Stack) -> None:
    text = "".join(p.read_text(errors="replace") for p in stack.logs.glob("*.log"))
    assert "aftercare.send" in text, "the worker log was not captured"
    for value in [*PATIENT_DATA, "Second Patient", "second@example.org", "stockings"]:
        assert value not in text


def test_whole_regimen_on_postgres_and_redis_reaches_outbox_exactly_once_in_order(
    pg_redis_stack: Stack, processes: list[subprocess.Popen[bytes]]
) -> None:
    _run_whole_regimen(pg_redis_stack, processes, "--pool=prefork", "--concurrency=2")


def test_whole_regimen_on_postgres_and_rabbitmq_reaches_outbox_exactly_once_in_order(
    pg_rabbit_stack: Stack, processes: list[subprocess.Popen[bytes]]
) -> None:
    _run_whole_regimen(pg_rabbit_stack, processes, "--pool=prefork", "--concurrency=2")


def test_whole_regimen_on_embedded_default_reaches_outbox_exactly_once_in_order(
    embedded_stack: Stack, processes: list[subprocess.Popen[bytes]]
) -> None:
    _run_whole_regimen(embedded_stack, processes)


def test_broker_messages_carry_reminder_ids_only_and_no_long_eta(
    pg_redis_stack: Stack, redis_url: str
) -> None:
    stack = pg_redis_stack
    set_runtime(stack.rt)
    try:
        for _ in range(3):
            enrol(stack.rt, now=TREATED)
    finally:
        set_runtime(None)
    # Everything is due: 120 days later. Dispatch once with no worker running.
    stack.clock.set(TREATED + timedelta(days=120))
    result = subprocess.run(
        [sys.executable, "-m", "aftercare.cli.main", "dispatch"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["claimed"] == summary["published"] > 100
    client = redis.Redis.from_url(redis_url)
    raw = client.lrange("aftercare.send", 0, -1)
    assert len(raw) * stack.rt.settings.send_batch >= summary["published"]
    ids: list[int] = []
    for item in raw:
        envelope = json.loads(item)
        headers = envelope["headers"]
        assert headers["task"] == "aftercare.send"
        assert headers.get("eta") is None
        assert headers.get("countdown") is None
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        assert kwargs == {}
        assert len(args) == 1
        assert all(isinstance(i, int) for i in args[0])
        ids += args[0]
    assert len(ids) == len(set(ids)) == summary["published"]
    # Nothing anywhere in the broker names the patient or quotes a message.
    everything = b""
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"list":
            everything += b"".join(client.lrange(key, 0, -1))
        elif kind == b"string":
            everything += client.get(key) or b""
        elif kind == b"set":
            everything += b"".join(client.smembers(key))
        elif kind == b"hash":
            everything += b"".join(k + v for k, v in client.hgetall(key).items())
        elif kind == b"zset":
            everything += b"".join(client.zrange(key, 0, -1))
    decoded = everything + b"".join(base64.b64decode(json.loads(item)["body"]) for item in raw)
    for value in [*PATIENT_DATA, "stockings", "Riverside"]:
        assert value.encode() not in decoded
    db = Database(stack.rt.settings.effective_database_url)
    with db.session() as s:
        queued = s.scalars(select(Reminder.id).where(Reminder.state == states.QUEUED)).all()
    db.dispose()
    assert sorted(ids) == sorted(queued)
