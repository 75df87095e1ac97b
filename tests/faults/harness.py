"""The fault suite's tools: real processes to start and kill, a private Redis to lose, a driver
that moves the shared file clock, and readers of what each provider received.

Everything that waits is bounded (a deadline per wait, a maximum number of clock moves), so a
stuck pipeline fails the test instead of hanging CI.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import redis
from aiosmtpd.controller import Controller
from sqlalchemy import func, select, update

from aftercare.reminders import states
from aftercare.runtime import set_runtime
from aftercare.storage.models import DeliveryAttempt, Reminder
from tests.factories import enrol
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.stacks import TREATED, Stack

IN_FLIGHT = (states.SCHEDULED, states.QUEUED, states.SENDING)
# How long queued/sending work must sit before recovery takes it (AFTERCARE_STALE_AFTER).
STALE_AFTER = timedelta(seconds=300)
# One clock move that makes every stuck reminder stale.
PAST_STALE = STALE_AFTER + timedelta(seconds=5)

# Settings for every process of a fault scenario: a fast dispatcher, recovery every second of
# real time, and stuck work recognised after five minutes of *simulated* time.
FAULT_ENV = {
    "AFTERCARE_RECOVER_INTERVAL": "1",
    "AFTERCARE_STALE_AFTER": str(int(STALE_AFTER.total_seconds())),
    "AFTERCARE_SEND_BATCH": "3",
    "AFTERCARE_SMS_MPS": "1000",
}

# Steps whose SMS text differs between reminders of one patient, so that messages at a provider
# that keeps only (recipient, text) can be told apart. (Every "take them off tonight" reads the
# same; in a real regimen they are a day apart, in a burst they are not.)
SMS_STEPS = (
    "welcome",
    "warning-signs",
    "keep-moving",
    "continuous-end",
    "daily-wear",
    "completion",
    "checkin",
)
TWILIO_FROM = "+447700900123"
PUBLIC_URL = "https://clinic.example"

SENDING_DUE = "Sending due task"
SIGKILLED_CHILD = re.compile(r"exited with 'signal 9 \(SIGKILL\)'")


_TRACE = os.environ.get("AFTERCARE_FAULTS_TRACE") == "1"
_STARTED = time.monotonic()


def trace(event: str) -> None:
    """With AFTERCARE_FAULTS_TRACE=1 (and pytest -s), print what the harness waits for."""
    if _TRACE:
        print(f"[faults {time.monotonic() - _STARTED:7.1f}s] {event}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def twilio_env(fake: FakeTwilio) -> dict[str, str]:
    """Settings that send SMS through the real Twilio client to the fake Twilio."""
    return {
        "AFTERCARE_SMS_TRANSPORT": "twilio",
        "AFTERCARE_TWILIO_API_BASE": fake.url,
        "AFTERCARE_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "AFTERCARE_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "AFTERCARE_TWILIO_FROM": TWILIO_FROM,
        "AFTERCARE_PUBLIC_BASE_URL": PUBLIC_URL,
    }


# Processes -----------------------------------------------------------------------------------


@dataclass
class Fleet:
    """Real ``aftercare`` processes, each the leader of its own process group, so that a
    prefork worker and its children can be SIGKILLed together, as a power cut would."""

    stack: Stack
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _graveyard: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _starting: list[tuple[str, Callable[[], bool]]] = field(default_factory=list)

    def log(self, name: str) -> Path:
        return self.stack.logs / f"{name}.log"

    def _popen(
        self, args: Sequence[str], *, name: str, env: dict[str, str] | None
    ) -> subprocess.Popen[bytes]:
        self.stack.logs.mkdir(exist_ok=True)
        with self.log(name).open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "aftercare.cli.main", *args],
                env={**self.stack.env, **(env or {})},
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def start(
        self, *args: str, name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        assert name not in self.procs or self.procs[name].poll() is not None, name
        proc = self._popen(args, name=name, env=env)
        self.procs[name] = proc
        return proc

    def worker(
        self,
        name: str = "worker",
        *,
        env: dict[str, str] | None = None,
        concurrency: int = 2,
        wait: bool = True,
    ) -> None:
        """A prefork worker; unless ``wait`` is False, returns once it is consuming."""
        self._expect(
            name,
            " ready.",
            [
                "worker",
                "--pool=prefork",
                f"--concurrency={concurrency}",
                f"--hostname={name}-{len(self._graveyard)}@%h",
            ],
            env,
        )
        if wait:
            self.wait_ready()

    def beat(
        self, name: str = "beat", *, env: dict[str, str] | None = None, wait: bool = True
    ) -> None:
        """Celery beat; unless ``wait`` is False, returns once it sent its first request."""
        self._expect(name, SENDING_DUE, ["beat"], env)
        if wait:
            self.wait_ready()

    def up(self, *, worker_env: dict[str, str] | None = None, beats: int = 1) -> None:
        """A worker and ``beats`` beats, started together; returns once all are running."""
        self.worker(env=worker_env, wait=False)
        for index in range(beats):
            self.beat("beat" if index == 0 else f"beat-{index}", wait=False)
        self.wait_ready()

    def _expect(self, name: str, sign: str, args: list[str], env: dict[str, str] | None) -> None:
        before = self._count(name, sign)
        proc = self.start(*args, name=name, env=env)

        def running() -> bool:
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"
            return self._count(name, sign) > before

        self._starting.append((name, running))

    def wait_ready(self) -> None:
        """Wait until every process started without waiting is up."""
        for name, running in self._starting:
            wait_for(running, timeout=60, what=f"{name} to start")
            trace(f"{name} up")
        self._starting.clear()

    def _count(self, name: str, text: str) -> int:
        path = self.log(name)
        return path.read_text(errors="replace").count(text) if path.exists() else 0

    def dispatch(
        self, *, name: str = "dispatch", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """One ``aftercare dispatch`` run, started (not waited for)."""
        proc = self._popen(["dispatch"], name=name, env=env)
        self._graveyard.append(proc)
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL the process and every child it has (its whole process group)."""
        proc = self.procs.pop(name)
        _killpg(proc, signal.SIGKILL)
        proc.wait(timeout=10)
        self._graveyard.append(proc)

    def child_kills(self, name: str) -> int:
        """How many pool children of worker ``name`` died of SIGKILL (crash points)."""
        if not self.log(name).exists():
            return 0
        return len(SIGKILLED_CHILD.findall(self.log(name).read_text(errors="replace")))

    def stop_all(self) -> None:
        """SIGKILL everything started (whole process groups): nothing here needs a clean exit,
        and a test's processes must never outlive it."""
        for proc in [*self.procs.values(), *self._graveyard]:
            _killpg(proc, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=10)
        self.procs.clear()


def _killpg(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@dataclass
class PrivateRedis:
    """A throwaway redis-server on a free loopback port, with no persistence: killing it loses
    every queued message, as a crashed Redis without AOF would."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "redis.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.folder),
                ],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(up, timeout=10, what="the private redis-server")
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None
        self.kills += 1

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)


# Data ----------------------------------------------------------------------------------------


def phone(index: int) -> str:
    return f"07911 {200000 + index}"


def enrol_many(stack: Stack, count: int, *, start: int = 0, **overrides: Any) -> list[int]:
    """Enrol ``count`` patients (distinct numbers and addresses) at the stack's current time."""
    set_runtime(stack.rt)
    try:
        return [
            enrol(
                stack.rt,
                now=stack.clock.now(),
                treated_at=TREATED.isoformat(),
                name="Morgan Ellis",
                phone=phone(i),
                email=f"patient{i}@example.org",
                **overrides,
            )
            for i in range(start, start + count)
        ]
    finally:
        set_runtime(None)


def make_burst(stack: Stack, *, steps: Collection[str] | None = None) -> list[int]:
    """Everything scheduled (or only ``steps``) falls due now and never expires; the rest is
    skipped. Returns the reminders of the burst. A burst puts the whole regimen through the send
    path at once, so a run hits many crash points in a few seconds."""
    now = stack.clock.now()
    with stack.rt.db.session() as s:
        if steps is not None:
            s.execute(
                update(Reminder)
                .where(Reminder.state == states.SCHEDULED, Reminder.step.not_in(list(steps)))
                .values(state=states.SKIPPED, reason="not in this scenario")
            )
        return list(
            s.scalars(
                update(Reminder)
                .where(Reminder.state == states.SCHEDULED)
                .values(due_at=now, expires_at=None)
                .returning(Reminder.id)
            )
        )


def state_counts(stack: Stack) -> dict[str, int]:
    with stack.rt.db.session() as s:
        rows = s.execute(select(Reminder.state, func.count()).group_by(Reminder.state))
        return dict(rows.all())  # type: ignore[arg-type,unused-ignore]


def states_of(stack: Stack, ids: Iterable[int]) -> dict[int, str]:
    with stack.rt.db.session() as s:
        rows = s.execute(select(Reminder.id, Reminder.state).where(Reminder.id.in_(list(ids))))
        return dict(rows.all())  # type: ignore[arg-type,unused-ignore]


def not_sent(stack: Stack, ids: Iterable[int]) -> dict[int, tuple[str, str | None, int]]:
    """(state, reason, attempts) of the reminders among ``ids`` that are not sent: for failure
    messages."""
    return {
        r.id: (r.state, r.reason, r.attempts)
        for r in reminders(stack, ids)
        if r.state not in (states.SENT, states.DELIVERED)
    }


def max_delay(stack: Stack, ids: Iterable[int], *, since: datetime) -> timedelta:
    """How long after ``since`` (simulated time) the last of ``ids`` was sent."""
    sent = [r.sent_at for r in reminders(stack, ids) if r.sent_at is not None]
    return max(sent, default=since) - since


def reminders(stack: Stack, ids: Iterable[int] | None = None) -> list[Reminder]:
    with stack.rt.db.session() as s:
        query = select(Reminder).order_by(Reminder.id)
        if ids is not None:
            query = query.where(Reminder.id.in_(list(ids)))
        return list(s.scalars(query))


# Driving the clock ---------------------------------------------------------------------------


def _due_in_flight(stack: Stack) -> int:
    now = stack.clock.now()
    with stack.rt.db.session() as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(Reminder)
                .where(
                    (Reminder.state.in_((states.QUEUED, states.SENDING)))
                    | ((Reminder.state == states.SCHEDULED) & (Reminder.due_at <= now))
                )
            )
            or 0
        )


def _progress(stack: Stack) -> tuple[object, ...]:
    with stack.rt.db.session() as s:
        attempts_made = s.scalar(select(func.count()).select_from(DeliveryAttempt))
        by_state = tuple(
            sorted(s.execute(select(Reminder.state, func.count()).group_by(Reminder.state)).all())
        )
    return (attempts_made, by_state)


def settle(stack: Stack, *, idle: float = 1.0, timeout: float = 45.0) -> bool:
    """Wait until nothing due is left in flight (True), or nothing has moved for ``idle``
    seconds (False: what is left is stuck and waits for recovery)."""
    began = time.monotonic()
    deadline = began + timeout
    last, since = _progress(stack), time.monotonic()
    while True:
        if _due_in_flight(stack) == 0:
            trace(f"settled in {time.monotonic() - began:.1f}s")
            return True
        time.sleep(0.1)
        now = _progress(stack)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= idle:
            trace(f"stuck after {time.monotonic() - began:.1f}s: {state_counts(stack)}")
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"the pipeline kept moving for {timeout:.0f}s without settling")


def drive(
    stack: Stack,
    *,
    watch: Collection[int] | None = None,
    step: timedelta = PAST_STALE,
    max_moves: int = 15,
    idle: float = 1.0,
) -> int:
    """Move the shared clock until nothing due is left in flight and none of ``watch`` waits.

    A move happens only once the pipeline has settled: past AFTERCARE_STALE_AFTER (``step``)
    when work is stuck, so that recovery only ever takes work that really is stuck; or to the
    next retry time when a watched reminder was put back on the schedule to retry later.
    Returns the number of moves made.
    """
    for moves in range(max_moves + 1):
        settled = settle(stack, idle=idle)
        later = _next_due(stack, watch) if settled and watch is not None else None
        if settled and later is None:
            return moves
        now = stack.clock.now()
        stack.clock.set(max(later, now) if later is not None else now + step)
        trace(f"clock moved to {stack.clock.now():%H:%M:%S}")
    left = {s: n for s, n in state_counts(stack).items() if s in IN_FLIGHT}
    raise AssertionError(f"still in flight after {max_moves} clock moves: {left}")


def _next_due(stack: Stack, ids: Collection[int]) -> datetime | None:
    with stack.rt.db.session() as s:
        return s.scalar(
            select(func.min(Reminder.due_at)).where(
                Reminder.id.in_(list(ids)), Reminder.state.in_(IN_FLIGHT)
            )
        )


def due_reminders(stack: Stack) -> list[int]:
    """Every reminder that has fallen due by the stack's current time (skipped ones excepted)."""
    with stack.rt.db.session() as s:
        return list(
            s.scalars(
                select(Reminder.id).where(
                    Reminder.state != states.SKIPPED, Reminder.due_at <= stack.clock.now()
                )
            )
        )


# Providers -----------------------------------------------------------------------------------


class OutageTwilio(FakeTwilio):
    """The fake Twilio, which answers every message with 503 while ``down`` is set."""

    down = False

    def _post(self, handler: Any, account: str) -> None:
        if self.down:
            with self._lock:
                self._script.appendleft("503:20503")
        super()._post(handler, account)


@dataclass
class SmtpRecorder:
    """An aiosmtpd handler keeping every message it accepted."""

    received: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(bytes(envelope.content))
        return "250 2.0.0 Message accepted for delivery"


class LoopbackSmtp(Controller):  # type: ignore[misc,unused-ignore]
    """aiosmtpd on 127.0.0.1, on a free port the OS picks."""

    def __init__(self, handler: SmtpRecorder) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=0, server_hostname="mail.test")
        self.recorder = handler

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        super()._trigger_server()  # type: ignore[no-untyped-call]


# What the providers received -----------------------------------------------------------------


def outbox_sends(stack: Stack) -> list[int | None]:
    """One entry per outbox send call (duplicates included), as reminder ids."""
    keys: list[str] = []
    for channel in ("sms", "email"):
        path = stack.data_dir / "outbox" / channel / "sent.log"
        if path.exists():
            keys += path.read_text().split()
    return [_reminder_id(k) for k in keys]


def _reminder_id(key: str | None) -> int | None:
    if key and key.startswith("reminder-") and key[9:].isdigit():
        return int(key[9:])
    return None


def smtp_sends(messages: Iterable[bytes]) -> list[int | None]:
    return [_reminder_id(message_from_bytes(data)["X-Aftercare-Key"]) for data in messages]


def twilio_sends(stack: Stack, stored: Iterable[tuple[str, str, str]]) -> list[int | None]:
    """Reminder ids of the messages the fake Twilio stored, given as (sid, to, body).

    A message is matched to its reminder through the provider id delivery recorded; a second
    message with the same recipient and text is the same reminder sent again.
    """
    stored = list(stored)
    by_sid = {sid: (to, body) for sid, to, body in stored}
    owner: dict[tuple[str, str], int] = {}
    with stack.rt.db.session() as s:
        for reminder_id, provider_id in s.execute(
            select(DeliveryAttempt.reminder_id, DeliveryAttempt.provider_id).where(
                DeliveryAttempt.provider_id.is_not(None)
            )
        ):
            if provider_id in by_sid:
                owner.setdefault(by_sid[provider_id], reminder_id)
    return [owner.get((to, body)) for _sid, to, body in stored]


def broker_send_ids(client: redis.Redis, queue: str = "aftercare.send") -> list[list[int]]:
    """The reminder ids of every send task waiting in a Redis queue."""
    chunks = []
    for item in client.lrange(queue, 0, -1):
        envelope = json.loads(item)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        chunks.append([int(i) for i in args[0]])
    return chunks


def wait_sent(stack: Stack, at_least: int, *, timeout: float = 30.0) -> None:
    wait_for(
        lambda: len(outbox_sends(stack)) >= at_least,
        timeout=timeout,
        interval=0.02,
        what=f"{at_least} sends",
    )


def all_ids(chunks: Iterable[Iterable[int]]) -> Iterator[int]:
    for chunk in chunks:
        yield from chunk
