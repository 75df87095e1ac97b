"""Celery configuration, derived from Aftercare's settings when Celery first reads it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from celery.schedules import crontab

from aftercare.settings import DISPATCH_QUEUE, SEND_QUEUE, Settings

# ``aftercare worker --queues`` takes these short names or the queue names themselves.
QUEUES = {"dispatch": DISPATCH_QUEUE, "send": SEND_QUEUE}
# Seconds between passes of silence detection (aftercare/silence/checkins.py).
SILENCE_INTERVAL = 600.0


def parse_queues(text: str) -> list[str]:
    """Queue names from a comma-separated list of ``dispatch``/``send`` (or the full names)."""
    chosen: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        name = QUEUES.get(part, part)
        if name not in QUEUES.values():
            raise ValueError(f"unknown queue {part!r}; use dispatch, send or both")
        if name not in chosen:
            chosen.append(name)
    return chosen


def celery_settings(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        # A task is acknowledged only after it ran; if the worker dies it is delivered again,
        # and the reminder state machine makes the second run harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 4,
        "task_default_queue": SEND_QUEUE,
        "task_routes": {
            "aftercare.dispatch": {"queue": DISPATCH_QUEUE},
            "aftercare.recover": {"queue": DISPATCH_QUEUE},
            "aftercare.retention": {"queue": DISPATCH_QUEUE},
            "aftercare.silence": {"queue": DISPATCH_QUEUE},
            "aftercare.send": {"queue": SEND_QUEUE},
            "aftercare.paging": {"queue": DISPATCH_QUEUE},
            "aftercare.page": {"queue": SEND_QUEUE},
        },
        "beat_schedule": {
            "dispatch-due-reminders": {
                "task": "aftercare.dispatch",
                "schedule": settings.dispatch_interval,
                # A dispatch request that waited out several intervals is pointless.
                "options": {"expires": max(settings.dispatch_interval * 5, 10.0)},
            },
            # Pages to on-call staff: sent, escalated and recovered (aftercare/oncall).
            "page-on-call": {
                "task": "aftercare.paging",
                "schedule": settings.dispatch_interval,
                "options": {"expires": max(settings.dispatch_interval * 5, 10.0)},
            },
            "recover-stuck-reminders": {
                "task": "aftercare.recover",
                "schedule": settings.recover_interval,
                "options": {"expires": max(settings.recover_interval * 2, 10.0)},
            },
            # Check-ins gone silent are counted in days: a pass every few minutes is plenty.
            "find-silent-checkins": {
                "task": "aftercare.silence",
                "schedule": SILENCE_INTERVAL,
                "options": {"expires": SILENCE_INTERVAL},
            },
            # Daily, at a quiet hour: anonymise patients whose regimen ended long ago.
            "anonymise-expired-patients": {
                "task": "aftercare.retention",
                "schedule": crontab(minute=30, hour=3),
                "options": {"expires": 6 * 3600},
            },
        },
        # The schedule is kept in memory, not in a shelve file: two beats sharing a data folder
        # (a second one started by mistake, an old one not yet gone) broke each other's file
        # (FileNotFoundError in shelve.sync). Every entry is idempotent, so all a restart
        # forgets is when each last ran: the intervals start again, and a daily retention run
        # missed while beat was down happens at the next 03:30.
        "beat_scheduler": "celery.beat:Scheduler",
        "worker_hijack_root_logger": False,
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "timezone": "UTC",
        "enable_utc": True,
    }
    options = settings.broker_transport_options()
    if options:
        conf["broker_transport_options"] = options
    return conf


class LazyConfig(Mapping[str, Any]):
    """Celery configuration read from the runtime's settings on first access, not at import."""

    def __init__(self) -> None:
        self._values: dict[str, Any] | None = None

    def _data(self) -> dict[str, Any]:
        if self._values is None:
            from aftercare.runtime import get_runtime

            self._values = celery_settings(get_runtime().settings)
        return self._values

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())
