"""The baseline Celery app: one task that does nothing, configured like Aftercare's app
(JSON, late acks, prefetch 4, no results) on the same Redis database.

The worker is started as ``celery -A bench.noop_app worker`` with ``BENCH_BROKER_URL`` set; the
benchmark process calls :func:`configure` instead.
"""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "bench.noop"

app = Celery("bench_noop", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15"),
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=4,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    broker_transport_options={"visibility_timeout": 3600},
)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(reminder_id: int) -> None:
    """Nothing: what a worker costs per task before any work is done."""


def configure(broker_url: str) -> None:
    app.conf.broker_url = broker_url
