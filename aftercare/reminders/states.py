"""The reminder state machine and its guarded transitions.

Every transition is one conditional UPDATE (``WHERE id IN (...) AND state = <from>``) that
returns the ids it actually moved. A row count of 0 means someone else already did the work,
so a task that runs twice, or two workers racing, change nothing the second time.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import update
from sqlalchemy.orm import Session

from aftercare.planning.quiet import QuietHours
from aftercare.storage.models import Reminder

SCHEDULED: Final = "scheduled"
QUEUED: Final = "queued"
SENDING: Final = "sending"
SENT: Final = "sent"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
SKIPPED: Final = "skipped"
EXPIRED: Final = "expired"
PAUSED: Final = "paused"
# Replaced by a later session of the same regimen (the reason names it): never sent, final.
SUPERSEDED: Final = "superseded"

FINAL: Final = frozenset({DELIVERED, FAILED, CANCELLED, SKIPPED, EXPIRED, SUPERSEDED})
# Reminders that have not yet been handed to a provider.
PENDING: Final = frozenset({SCHEDULED, QUEUED, PAUSED})

ALLOWED: Final[dict[str, frozenset[str]]] = {
    SCHEDULED: frozenset({QUEUED, CANCELLED, SKIPPED, EXPIRED, PAUSED, SUPERSEDED}),
    # queued -> superseded: a send task already on the broker then finds it not queued.
    QUEUED: frozenset(
        {SENDING, SCHEDULED, CANCELLED, EXPIRED, PAUSED, SKIPPED, FAILED, SUPERSEDED}
    ),
    # sending -> scheduled: a transient failure (or a reconciled lost send) is retried later.
    SENDING: frozenset({SENT, FAILED, SCHEDULED}),
    SENT: frozenset({DELIVERED, FAILED}),
    # A late "delivered" callback may follow "failed"/"undelivered" from an earlier hop.
    FAILED: frozenset({DELIVERED}),
    PAUSED: frozenset({SCHEDULED, CANCELLED, SKIPPED, EXPIRED, SUPERSEDED}),
    DELIVERED: frozenset(),
    CANCELLED: frozenset(),
    SKIPPED: frozenset(),
    EXPIRED: frozenset(),
    # Final: nothing (a resume, a re-plan, a late enrolment) brings it back.
    SUPERSEDED: frozenset(),
}


class Outcome(StrEnum):
    """What a delivery call came to when that is not a reminder state (a send, or a check that
    held, expired or failed a reminder, returns the state it moved to). Compares equal to its
    text, which task summaries count."""

    # Checked and composed: to be sent (never returned by delivery).
    SEND = "send"
    # Not (or no longer) queued: another worker, a pause or a cancel got there first.
    NOT_QUEUED = "not-queued"
    # Moved back to scheduled, out of quiet hours.
    DEFERRED = "deferred"
    # Recovery took the claim over before this worker sent it.
    TAKEN_OVER = "taken-over"
    # A transient provider error: back on the schedule after a backoff.
    RETRY = "retry"
    # The provider has no record of an earlier attempt: sent again.
    RESEND = "resend"
    # A send that may have reached the provider, whose lookup failed.
    AMBIGUOUS = "ambiguous"
    # The provider has no record yet: recovery asks again later.
    UNCONFIRMED = "unconfirmed"
    # Reconcile found the reminder no longer sending.
    NOT_SENDING = "not-sending"
    # An unexpected exception, raised once the batch is recorded.
    ERROR = "error"


class IllegalTransition(ValueError):
    pass


def transition(
    db_session: Session,
    ids: Collection[int],
    *,
    source: str | Sequence[str],
    target: str,
    now: datetime,
    **values: Any,
) -> list[int]:
    """Move the reminders in ``ids`` that are in ``source`` to ``target``; return those moved."""
    sources = [source] if isinstance(source, str) else list(source)
    for s in sources:
        if target not in ALLOWED[s]:
            raise IllegalTransition(f"{s} -> {target}")
    if not ids:
        return []
    statement = (
        update(Reminder)
        .where(Reminder.id.in_(list(ids)), Reminder.state.in_(sources))
        .values(state=target, updated_at=now, **values)
        .returning(Reminder.id)
        .execution_options(synchronize_session=False)
    )
    return list(db_session.scalars(statement))


def allowed_at(due: datetime, *, channel: str, zone: ZoneInfo, quiet: QuietHours) -> datetime:
    """When a reminder due at ``due`` may go out: an SMS never inside quiet hours (the first
    minute after them), an email at once."""
    return quiet.defer(due, zone) if channel == "sms" else due


def reschedule(
    db_session: Session,
    reminder: Reminder,
    *,
    source: str,
    due: datetime,
    zone: ZoneInfo,
    quiet: QuietHours,
    now: datetime,
    reason: str | None,
) -> list[int]:
    """The quiet-hours rule, in one place: put ``reminder`` back on the schedule at ``due``,
    an SMS deferred out of quiet hours (:func:`allowed_at`). Returns the ids moved."""
    return transition(
        db_session,
        [reminder.id],
        source=source,
        target=SCHEDULED,
        now=now,
        due_at=allowed_at(due, channel=reminder.channel, zone=zone, quiet=quiet),
        reason=reason,
    )
