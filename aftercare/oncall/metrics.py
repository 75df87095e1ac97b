"""On-call figures for ``/metrics``, read from the database at scrape time.

Time to acknowledge is a summary over every emergency or urgent flag acknowledged so far
(``rate(..._sum) / rate(..._count)`` is the recent mean); the oldest unacknowledged flag's age
is what an alert watches (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aftercare.storage.models import Flag


def oncall_metrics(db_session: Session, *, now: datetime) -> Iterator[Metric]:
    waiting = GaugeMetricFamily(
        "aftercare_flags_unacknowledged",
        "Open emergency and urgent flags nobody has said they are calling back about",
        labels=["severity"],
    )
    oldest: datetime | None = None
    counts = {"emergency": 0, "urgent": 0}
    for severity, count, first in db_session.execute(
        select(Flag.severity, func.count(), func.min(Flag.created_at))
        .where(Flag.urgent, Flag.resolved_at.is_(None), Flag.acknowledged_at.is_(None))
        .group_by(Flag.severity)
    ).all():
        counts[severity] = int(count)
        if first is not None and (oldest is None or first < oldest):
            oldest = first
    for severity, count in counts.items():
        waiting.add_metric([severity], count)
    yield waiting
    yield GaugeMetricFamily(
        "aftercare_flag_oldest_unacknowledged_seconds",
        "Age of the oldest open emergency or urgent flag nobody has acknowledged (0: none)",
        value=0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0),
    )
    acked = db_session.execute(
        select(Flag.created_at, Flag.acknowledged_at).where(
            Flag.urgent, Flag.acknowledged_at.is_not(None)
        )
    ).all()
    yield SummaryMetricFamily(
        "aftercare_flag_time_to_acknowledge_seconds",
        "From an emergency or urgent flag being raised to someone saying they are calling back",
        count_value=len(acked),
        sum_value=sum(
            max((acked_at - created).total_seconds(), 0.0)
            for created, acked_at in acked
            if acked_at is not None
        ),
    )
