"""The product's own processes, wired to the fake providers: ``aftercare worker`` (prefork) and
``aftercare beat`` with Twilio pointed at the loopback fake and SMTP at the aiosmtpd sink."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from aftercare.clock import SystemClock
from aftercare.reminders.dispatch import DispatchSummary, dispatch_due
from aftercare.worker.tasks import publish_send
from bench.context import Bench
from bench.fakes import ACCOUNT_SID, AUTH_TOKEN, SENDER, SmtpSink, Twilio
from bench.infra import log, wait_until

IN_FLIGHT = ("scheduled", "queued", "sending")
EMAIL_FROM = "clinic@riverside.example"


def provider_env(bench: Bench, twilio: Twilio, sink: SmtpSink, *, mps: float) -> dict[str, str]:
    """A worker that sends SMS to the fake Twilio (``mps`` per sender) and email to the sink."""
    return bench.env(
        sms_transport="twilio",
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_from=SENDER,
        twilio_api_base=twilio.url,
        sms_mps=str(mps),
        email_transport="smtp",
        smtp_url=sink.url,
        email_from=EMAIL_FROM,
        public_base_url="https://aftercare.example",
    )


def start_worker(
    bench: Bench, name: str, env: dict[str, str], *, concurrency: int = 2
) -> subprocess.Popen[bytes]:
    return bench.procs.aftercare(
        name,
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        f"--hostname={name}@%h",
        env=env,
        cwd=bench.scratch,
    )


def start_beat(bench: Bench, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return bench.procs.aftercare(name, "beat", env=env, cwd=bench.scratch)


def dispatch_now(bench: Bench) -> DispatchSummary:
    """What beat asks a worker to do, done here: claim every due reminder and publish it."""
    settings = bench.rt.settings
    return dispatch_due(
        db=bench.rt.db,
        clock=SystemClock(),
        publish=publish_send,
        batch_size=settings.dispatch_batch,
        chunk_size=settings.send_batch,
        time_budget=120.0,
    )


def count_states(bench: Bench, ids: Sequence[int]) -> dict[str, int]:
    with bench.pg.connect() as conn:
        rows = conn.execute(
            "SELECT state, count(*) FROM reminders WHERE id = ANY(%s) GROUP BY state", (list(ids),)
        ).fetchall()
    return dict(rows)  # type: ignore[arg-type]


def pending(bench: Bench, ids: Sequence[int]) -> int:
    states = count_states(bench, ids)
    return sum(states.get(s, 0) for s in IN_FLIGHT)


def wait_delivered(bench: Bench, ids: Sequence[int], *, timeout: float) -> bool:
    return wait_until(lambda: pending(bench, ids) == 0, timeout=timeout, interval=0.1)


def warm_up(bench: Bench, ids: Sequence[int], *, timeout: float = 90.0) -> None:
    """Deliver a few reminders through the freshly started worker (imports, connections and
    template caches of both pool processes), so the measurement starts warm."""
    started = time.monotonic()
    dispatch_now(bench)
    if not wait_delivered(bench, ids, timeout=timeout):
        raise RuntimeError(f"warm-up: {count_states(bench, ids)} after {timeout:.0f} s")
    log(f"worker warm after {time.monotonic() - started:.1f} s")


def heartbeat_after(bench: Bench, since: datetime, *, timeout: float) -> bool:
    """True once the dispatcher (beat -> worker) has recorded a run after ``since``."""

    def beaten() -> bool:
        with bench.pg.connect() as conn:
            row = conn.execute("SELECT at FROM heartbeats WHERE name = 'dispatcher'").fetchone()
        return row is not None and row[0].replace(tzinfo=UTC) > since

    return wait_until(beaten, timeout=timeout, interval=0.2)


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile; ``inf`` entries stand for messages not yet received."""
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]
