"""The product's own processes, wired to the fake providers: ``aftercare worker`` (prefork) and
``aftercare beat`` with Twilio pointed at the loopback fake and SMTP at the aiosmtpd sink. The
production layout is a dispatch worker (``--queues dispatch --concurrency 1``) beside the send
workers (``--queues send``); a worker started without ``queues`` takes both, as one worker does
on the embedded default."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

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
    bench: Bench,
    name: str,
    env: dict[str, str],
    *,
    concurrency: int = 2,
    queues: str = "dispatch,send",
) -> subprocess.Popen[bytes]:
    return bench.procs.aftercare(
        name,
        "worker",
        f"--queues={queues}",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        f"--hostname={name}@%h",
        env=env,
        cwd=bench.scratch,
    )


def start_dispatcher(bench: Bench, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The production dispatch worker: beat's dispatch and recovery tasks, one at a time."""
    return start_worker(bench, name, env, concurrency=1, queues="dispatch")


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
    return dict(rows)


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


def duplicate_sends(
    bench: Bench, twilio: Twilio, sink: SmtpSink, ids: Sequence[int], *, since: datetime
) -> dict[str, int]:
    """Sends the providers got more than once, or that no reminder accounts for: emails with a
    reminder key seen twice, reminders with two successful attempts, and SMS the fake accepted
    whose message SID no delivery attempt recorded (a send the worker did not get to record
    before it was stopped; recovery would reconcile it with Twilio, not send it again)."""
    with bench.pg.connect() as conn:
        recorded = {
            r[0]
            for r in conn.execute(
                "SELECT provider_id FROM delivery_attempts WHERE reminder_id = ANY(%s) "
                "AND started_at >= %s AND provider_id IS NOT NULL",
                (list(ids), since.astimezone(UTC).replace(tzinfo=None)),
            )
        }
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT reminder_id FROM delivery_attempts "
            "WHERE reminder_id = ANY(%s) AND started_at >= %s "
            "AND outcome IN ('sent', 'reconciled') GROUP BY reminder_id HAVING count(*) > 1) t",
            (list(ids), since.astimezone(UTC).replace(tzinfo=None)),
        ).fetchone()
    return {
        "email_repeated": sink.duplicates(),
        "reminders_sent_twice": int(twice[0]) if twice else 0,
        "sms_unrecorded": len(set(twilio.accepted_sids()) - recorded),
    }


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile; ``inf`` entries stand for messages not yet received."""
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]


def duplicates(run: dict[str, Any]) -> int:
    """Real duplicates in a run's detail (a send left unrecorded at a stop is not one)."""
    return int(run.get("email_repeated", 0)) + int(run.get("reminders_sent_twice", 0))
