"""The one reminder-row mapping: a planned reminder as the ``reminders`` row every path stores
(enrolment, CSV import, a re-plan, an email fallback), as a tuple in :data:`REMINDER_COLUMNS`
order or as a dict."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

from aftercare.planning.planner import PlannedReminder

# The reason a reminder planned as skipped (a catch-up superseded before enrolment) is stored with.
SKIPPED_REASON: Final = "catch-up: superseded before enrolment"

REMINDER_COLUMNS: Final = (
    "session_id",
    "step",
    "occurrence",
    "channel",
    "template",
    "nominal_at",
    "due_at",
    "expires_at",
    "critical",
    "state",
    "attempts",
    "updated_at",
    "reason",
)


def reminder_values(
    session_id: int,
    item: PlannedReminder,
    now: datetime,
    *,
    state: str | None = None,
    reason: str | None = None,
) -> tuple[Any, ...]:
    """``item``'s row in :data:`REMINDER_COLUMNS` order; ``state`` and ``reason`` override the
    plan's (a re-plan stores new rows paused or scheduled, with why)."""
    if reason is None and item.state == "skipped":
        reason = SKIPPED_REASON
    return (
        session_id,
        item.step,
        item.occurrence,
        item.channel,
        item.template,
        item.nominal_utc,
        item.due_utc,
        item.expires_utc,
        item.critical,
        item.state if state is None else state,
        0,
        now,
        reason,
    )


def reminder_rows(
    session_id: int,
    plan: Iterable[PlannedReminder],
    now: datetime,
    *,
    state: str | None = None,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    """The ``reminders`` rows of a planned session as dicts, every column the table has a value
    for (see :func:`reminder_values`)."""
    return [
        dict(
            zip(
                REMINDER_COLUMNS,
                reminder_values(session_id, item, now, state=state, reason=reason),
                strict=True,
            )
        )
        for item in plan
    ]
