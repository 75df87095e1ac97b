"""Real stacks for end-to-end tests: a shared file clock, a database, a broker, and helpers to
start real ``aftercare`` worker/beat processes with the same settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from aftercare.clock import FileClock
from aftercare.reminders import states
from aftercare.runtime import Runtime, set_runtime
from aftercare.settings import Settings
from aftercare.storage.migrate import upgrade
from aftercare.storage.models import Reminder
from tests.conftest import TEST_SECRET, _truncate
from tests.factories import enrol

TREATED = datetime(2026, 3, 20, 9, 15, tzinfo=UTC)  # spans the UK clocks change on 29 March


@dataclass
class Stack:
    env: dict[str, str]
    rt: Runtime
    clock: FileClock
    data_dir: Path
    logs: Path


def make_stack(tmp_path: Path, extra: dict[str, str]) -> Stack:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERCARE_")}
    env.update(
        AFTERCARE_DATA_DIR=str(data_dir),
        AFTERCARE_CLOCK=f"file:{data_dir / 'clock'}",
        AFTERCARE_SMS_TRANSPORT="outbox",
        AFTERCARE_EMAIL_TRANSPORT="outbox",
        AFTERCARE_DISPATCH_INTERVAL="0.3",
        AFTERCARE_SECRET_KEY=TEST_SECRET,
        AFTERCARE_LOG_LEVEL="DEBUG",
        # A configured database sends nothing while these are placeholders.
        AFTERCARE_CLINIC_NAME="Riverside Vein Clinic",
        AFTERCARE_CLINIC_PHONE="020 7946 0000",
    )
    env.update(extra)  # a scenario's own settings win over these defaults
    settings = Settings.from_environment(env)
    rt = Runtime(settings)
    clock = FileClock(data_dir / "clock")
    rt.clock = clock
    clock.set(TREATED)
    return Stack(env=env, rt=rt, clock=clock, data_dir=data_dir, logs=tmp_path / "logs")


@pytest.fixture
def pg_redis_stack(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[Stack]:
    stack = make_stack(
        tmp_path, {"AFTERCARE_DATABASE_URL": pg_url, "AFTERCARE_BROKER_URL": redis_url}
    )
    yield stack
    _truncate(stack.rt.db)
    stack.rt.db.dispose()


@pytest.fixture
def pg_rabbit_stack(tmp_path: Path, pg_url: str, rabbit_url: str) -> Iterator[Stack]:
    stack = make_stack(
        tmp_path, {"AFTERCARE_DATABASE_URL": pg_url, "AFTERCARE_BROKER_URL": rabbit_url}
    )
    yield stack
    _truncate(stack.rt.db)
    stack.rt.db.dispose()


@pytest.fixture
def embedded_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = make_stack(tmp_path, {})
    upgrade(stack.rt.settings.effective_database_url)
    yield stack
    stack.rt.db.dispose()


def start_aftercare(stack: Stack, *args: str, name: str) -> subprocess.Popen[bytes]:
    stack.logs.mkdir(exist_ok=True)
    with (stack.logs / f"{name}.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aftercare.cli.main", *args],
            env=stack.env,
            stdout=out,
            stderr=out,
        )


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


def sent_log(stack: Stack) -> list[str]:
    keys: list[str] = []
    for channel in ("sms", "email"):
        path = stack.data_dir / "outbox" / channel / "sent.log"
        if path.exists():
            keys += path.read_text().split()
    return keys


def enrol_all_due(stack: Stack, sessions: int) -> None:
    """Enrol ``sessions`` sessions at TREATED, then make every reminder due at TREATED: a burst
    far bigger than one claim batch (as at 08:00 for a whole cohort)."""
    set_runtime(stack.rt)
    try:
        for _ in range(sessions):
            enrol(stack.rt, now=TREATED)
    finally:
        set_runtime(None)
    with stack.rt.db.session() as s:
        s.execute(
            update(Reminder)
            .where(Reminder.state == states.SCHEDULED)
            .values(due_at=TREATED, expires_at=None)
        )
