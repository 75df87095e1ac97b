"""Gauges read from the database at scrape time, for the web app's ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from aftercare.oncall.metrics import oncall_metrics
from aftercare.reminders import states
from aftercare.runtime import Runtime
from aftercare.storage.models import Flag, Reminder


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
            oncall = list(oncall_metrics(s, now=now))
        yield reminders
        yield flags
        yield GaugeMetricFamily(
            "aftercare_reminders_overdue",
            "Reminders due more than 5 minutes ago and not yet sent",
            value=overdue or 0,
        )
        yield from oncall
