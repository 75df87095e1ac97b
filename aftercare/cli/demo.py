"""``aftercare demo``: the whole regimen through the real dispatcher, worker and outbox, fast.

Time is accelerated by a shared file clock: the demo moves it to the next reminder's due time,
waits until the real beat/dispatcher and worker processes have delivered everything due, prints
what reached the outbox, and moves on. Three months play in well under two minutes.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from aftercare.clock import FileClock
from aftercare.reminders import states
from aftercare.runtime import Runtime, set_runtime
from aftercare.sessions.enrolment import enrol_planned
from aftercare.sessions.service import SessionRequest
from aftercare.settings import Settings
from aftercare.storage.migrate import upgrade
from aftercare.storage.models import Reminder

IN_FLIGHT = (states.SCHEDULED, states.QUEUED, states.SENDING)
STEP_TIMEOUT = 60.0


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERCARE_")}
    env.update(
        AFTERCARE_DATA_DIR=str(data_dir),
        AFTERCARE_CLOCK=f"file:{data_dir / 'clock'}",
        AFTERCARE_SMS_TRANSPORT="outbox",
        AFTERCARE_EMAIL_TRANSPORT="outbox",
        AFTERCARE_DISPATCH_INTERVAL="0.3",
        AFTERCARE_CLINIC_NAME=os.environ.get("AFTERCARE_CLINIC_NAME", "Riverside Vein Clinic"),
        AFTERCARE_CLINIC_PHONE=os.environ.get("AFTERCARE_CLINIC_PHONE", "020 7946 0000"),
        AFTERCARE_LOG_LEVEL="WARNING",
    )
    return env


def _describe(path: Path) -> str:
    if path.suffix == ".json":
        return str(json.loads(path.read_text(encoding="utf-8"))["body"])
    mime: Message = message_from_bytes(path.read_bytes())
    return f"Subject: {mime['Subject']}"


def run_demo(*, data_dir: Path | None, timezone: str, daily_days: int | None) -> int:
    import subprocess

    folder = data_dir or Path(tempfile.mkdtemp(prefix="aftercare-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = _env(folder)
    settings = Settings.from_environment(env)
    rt = Runtime(settings)
    set_runtime(rt)
    clock = FileClock(folder / "clock")
    zone = ZoneInfo(timezone)
    # A mid-morning treatment today, in the patient's zone.
    start = (
        datetime.now(UTC).astimezone(zone).replace(hour=10, minute=30, second=0, microsecond=0)
    ).astimezone(UTC)
    clock.set(start)
    upgrade(settings.effective_database_url)
    params: dict[str, object] = {} if daily_days is None else {"daily_days": daily_days}
    request = SessionRequest(
        name="Alex Morgan",
        phone="07911 123456",
        email="alex.morgan@example.com",
        timezone=timezone,
        channels=("sms", "email"),
        treated_at=start.isoformat(),
        parameters=params,
    )
    with rt.db.session() as db_session:
        enrolled = enrol_planned(
            db_session=db_session,
            request=request,
            registry=rt.registry,
            quiet=rt.quiet,
            now=start,
            actor_id=None,
        )
        session_id, valid = enrolled.session.id, enrolled.valid
    total = len([r for r in valid.plan if r.state == "scheduled"])
    print(f"Demo data in {folder}")
    print(
        f"Enrolled session {session_id}: treated {start.astimezone(zone):%a %d %b %Y %H:%M} "
        f"({timezone}); {total} reminders planned. Playing the regimen on a fast clock...\n"
    )
    base = [sys.executable, "-m", "aftercare.cli.main"]
    logs = (folder / "demo.log").open("ab")
    procs = [
        subprocess.Popen([*base, "worker"], env=env, stdout=logs, stderr=logs),  # noqa: S603
        subprocess.Popen([*base, "beat"], env=env, stdout=logs, stderr=logs),  # noqa: S603
    ]
    began = time.monotonic()
    try:
        delivered = _play(rt, clock, zone, folder)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()
    print(
        f"\n{delivered} of {total} messages delivered through dispatcher, worker and outbox "
        f"in {time.monotonic() - began:.0f} s of real time."
    )
    return 0 if delivered == total else 1


class Stalled(RuntimeError):
    """The worker did not finish what was due within the step timeout."""


def play(
    rt: Runtime,
    clock: FileClock,
    *,
    on_step: Callable[[datetime], None],
    step_timeout: float = STEP_TIMEOUT,
) -> None:
    """Move the shared clock from one due time to the next until nothing is left to send.

    After each move, wait until every reminder due by then has left scheduled/queued/sending
    (delivered by the real beat, dispatcher and worker processes), then call ``on_step``.
    """
    while True:
        with rt.db.session() as db_session:
            next_due = db_session.scalar(
                select(func.min(Reminder.due_at)).where(Reminder.state == states.SCHEDULED)
            )
        if next_due is None:
            return
        clock.set(max(next_due, clock.now()))
        deadline = time.monotonic() + step_timeout
        while True:
            with rt.db.session() as db_session:
                pending = db_session.scalar(
                    select(func.count())
                    .select_from(Reminder)
                    .where(Reminder.state.in_(IN_FLIGHT), Reminder.due_at <= clock.now())
                )
            if not pending:
                break
            if time.monotonic() > deadline:
                raise Stalled(f"{pending} reminder(s) due at {clock.now()} were not delivered")
            time.sleep(0.05)
        on_step(clock.now())
        clock.set(clock.now() + timedelta(seconds=1))


def _play(rt: Runtime, clock: FileClock, zone: ZoneInfo, folder: Path) -> int:
    seen: set[Path] = set()

    def show(now: datetime) -> None:
        outbox = sorted((folder / "outbox").glob("*/*"), key=lambda p: p.stat().st_mtime_ns)
        for path in outbox:
            if path in seen or path.suffix not in (".json", ".eml"):
                continue
            seen.add(path)
            channel = path.parent.name.upper()
            print(f"[{now.astimezone(zone):%a %d %b %H:%M}] {channel:<5} {_describe(path)}")

    try:
        play(rt, clock, on_step=show)
    except Stalled as exc:
        print(f"The worker stopped delivering: {exc}")
    return len(seen)
