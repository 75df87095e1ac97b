"""What an operator wants to know at a glance: readiness, queue depth, due and overdue work."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select

from aftercare.ops.health import broker_connection
from aftercare.reminders import states
from aftercare.runtime import Runtime
from aftercare.settings import DISPATCH_QUEUE, SEND_QUEUE
from aftercare.storage.models import Flag, Reminder

OVERDUE_AFTER = timedelta(minutes=5)


@dataclass(frozen=True)
class WorkStatus:
    queue_depth: dict[str, int | None]
    due_next_hour: int
    overdue: int
    in_flight: int
    open_flags: int


def queue_depths(rt: Runtime) -> dict[str, int | None]:
    """Messages waiting in each queue (None when the broker cannot be asked)."""
    depths: dict[str, int | None] = {}
    try:
        with broker_connection(rt) as conn:
            channel = conn.channel()
            for queue in (DISPATCH_QUEUE, SEND_QUEUE):
                try:
                    _name, count, _consumers = channel.queue_declare(queue=queue, passive=True)
                    depths[queue] = int(count)
                except Exception:  # noqa: BLE001 - a queue not declared yet has no depth to report
                    depths[queue] = 0
    except Exception:  # noqa: BLE001 - an unreachable broker is reported as "unknown"
        return dict.fromkeys((DISPATCH_QUEUE, SEND_QUEUE))
    return depths


def work_status(rt: Runtime) -> WorkStatus:
    now = rt.clock.now()
    pending = (states.SCHEDULED, states.QUEUED, states.SENDING)
    with rt.db.session() as s:
        due_next_hour = s.scalar(
            select(func.count())
            .select_from(Reminder)
            .where(
                Reminder.state == states.SCHEDULED,
                Reminder.due_at > now,
                Reminder.due_at <= now + timedelta(hours=1),
            )
        )
        overdue = s.scalar(
            select(func.count())
            .select_from(Reminder)
            .where(Reminder.state.in_(pending), Reminder.due_at < now - OVERDUE_AFTER)
        )
        in_flight = s.scalar(
            select(func.count())
            .select_from(Reminder)
            .where(Reminder.state.in_((states.QUEUED, states.SENDING)))
        )
        open_flags = s.scalar(
            select(func.count()).select_from(Flag).where(Flag.resolved_at.is_(None))
        )
    return WorkStatus(
        queue_depth=queue_depths(rt),
        due_next_hour=due_next_hour or 0,
        overdue=overdue or 0,
        in_flight=in_flight or 0,
        open_flags=open_flags or 0,
    )
