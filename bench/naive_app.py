"""The design Aftercare replaces, as in Twilio's appointment-reminders tutorial: when an
appointment is booked, ``send_sms_reminder.apply_async((appointment_id,), eta=reminder_time)``
parks one Celery task per reminder in Redis until its time comes.

Configured as the tutorial leaves Celery (early acks, default prefetch), except for a short
Redis ``visibility_timeout`` (``BENCH_VISIBILITY_TIMEOUT``, 10 s) and a restore sweep every
second, which compress into a bounded run what the default one-hour timeout does every hour to
a reminder weeks away: the message still unacknowledged is given to a consumer again, and the
worker holds one more copy of the same task in memory and runs it once more at its ETA.

The task's "send" is an HINCRBY per appointment id, so executions can be counted; every
message the worker receives is counted too (buffered, flushed every 200 receipts or 0.5 s).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis
from celery import Celery
from celery.signals import task_received

QUEUE = "bench.naive"
RECEIVED = "bench:naive:received"
RECEIVED_IDS = "bench:naive:received-ids"
EXECUTED = "bench:naive:executed"
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15")

app = Celery("bench_naive", set_as_current=False)
app.conf.update(
    broker_url=BROKER_URL,
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("BENCH_VISIBILITY_TIMEOUT", "10")),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
)

_client: redis.Redis | None = None
_pending: list[str] = []
_lock = threading.Lock()
_flushed = [time.monotonic()]


def _redis() -> redis.Redis:
    global _client  # noqa: PLW0603 - one connection per process, made after the fork
    if _client is None:
        _client = redis.Redis.from_url(app.conf.broker_url)
    return _client


@app.task(name="bench.naive.send_sms_reminder")  # type: ignore[untyped-decorator]
def send_sms_reminder(appointment_id: int) -> None:
    """Stands in for the tutorial's Twilio call: one count per execution."""
    _redis().hincrby(EXECUTED, str(appointment_id), 1)


@task_received.connect  # type: ignore[untyped-decorator]
def _count_receipt(request: Any = None, **_: Any) -> None:
    """Runs in the worker's consumer for every message it takes, first delivery or not."""
    with _lock:
        _pending.append(str(request.id))
        if len(_pending) < 200 and time.monotonic() - _flushed[0] < 0.5:
            return
        batch = list(_pending)
        _pending.clear()
        _flushed[0] = time.monotonic()
    pipe = _redis().pipeline(transaction=False)
    pipe.incrby(RECEIVED, len(batch))
    pipe.sadd(RECEIVED_IDS, *batch)
    pipe.execute()


def configure(broker_url: str) -> None:
    app.conf.broker_url = broker_url
