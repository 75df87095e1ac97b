"""The Celery app. Configuration is read lazily from settings (no import-time side effects)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from celery.signals import before_task_publish, setup_logging

from aftercare.worker.celeryconfig import LazyConfig

app = Celery(
    "aftercare", set_as_current=False, include=["aftercare.worker.tasks", "aftercare.worker.paging"]
)
app.config_from_object(LazyConfig())

MAX_ETA = timedelta(minutes=1)


class LongEtaRefused(RuntimeError):
    """Aftercare never parks future work in the broker; the database holds the future."""


@setup_logging.connect
def _json_logs(**_: Any) -> None:
    """Celery leaves logging to us: JSON lines at the configured level."""
    from aftercare.ops.logs import configure_logging
    from aftercare.runtime import get_runtime

    configure_logging(get_runtime().settings.log_level)


@before_task_publish.connect
def _refuse_long_eta(headers: dict[str, Any] | None = None, **_: Any) -> None:
    eta = (headers or {}).get("eta")
    if eta:
        when = datetime.fromisoformat(eta)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when - datetime.now(UTC) > MAX_ETA:
            raise LongEtaRefused("task ETA more than a minute ahead")
