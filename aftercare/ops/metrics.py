"""Prometheus metrics.

Two sources, each correct however many processes run:

* the web app's ``/metrics`` reads the database at scrape time (reminders by state, channel and
  step; open flags; overdue work), so every API replica reports the same truth;
* each worker counts what it does (sends by outcome, provider errors, send lateness, claim batch
  sizes) and serves them on ``AFTERCARE_WORKER_METRICS_PORT`` (prefork children aggregate through
  prometheus_client's multiprocess mode).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from aftercare.reminders import states
from aftercare.runtime import Runtime
from aftercare.storage.models import Flag, Reminder

SENDS = Counter(
    "aftercare_worker_sends", "Reminders handled by this worker, by outcome", ["outcome"]
)
PROVIDER_ERRORS = Counter(
    "aftercare_worker_provider_errors",
    "Provider errors by transport and code",
    ["transport", "code"],
)
LATENESS = Histogram(
    "aftercare_worker_send_lateness_seconds",
    "Provider hand-off time minus due time",
    ["channel"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
CLAIM_BATCH = Histogram(
    "aftercare_dispatch_claim_batch_size",
    "Reminders claimed per dispatcher round trip",
    buckets=(0, 1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        now = self.rt.clock.now()
        reminders = GaugeMetricFamily(
            "aftercare_reminders",
            "Reminders by state, channel and step",
            labels=["state", "channel", "step"],
        )
        flags = GaugeMetricFamily("aftercare_flags_open", "Open flags by kind", labels=["kind"])
        with self.rt.db.session() as s:
            rows = s.execute(
                select(Reminder.state, Reminder.channel, Reminder.step, func.count()).group_by(
                    Reminder.state, Reminder.channel, Reminder.step
                )
            ).all()
            for state, channel, step, count in rows:
                reminders.add_metric([state, channel, step], count)
            for kind, count in s.execute(
                select(Flag.kind, func.count())
                .where(Flag.resolved_at.is_(None))
                .group_by(Flag.kind)
            ).all():
                flags.add_metric([kind], count)
            overdue = s.scalar(
                select(func.count())
                .select_from(Reminder)
                .where(
                    Reminder.state.in_((states.SCHEDULED, states.QUEUED, states.SENDING)),
                    Reminder.due_at < now - timedelta(minutes=5),
                )
            )
        yield reminders
        yield flags
        yield GaugeMetricFamily(
            "aftercare_reminders_overdue",
            "Reminders due more than 5 minutes ago and not yet sent",
            value=overdue or 0,
        )
