"""A stored session as the patient page shows it: each reminder's row (time, message, channel,
state and why), folded into what is done and what is still to come, with the replies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from aftercare.regimens.model import Regimen
from aftercare.reminders import states
from aftercare.sessions import actions
from aftercare.storage.models import DeliveryAttempt, InboundMessage, Reminder, TreatmentSession
from aftercare.web.pages.common import short_when
from aftercare.web.pages.regimen import param_summary, step_title

# Not yet handed to a provider: shown as still to come.
WAITING: Final = frozenset({states.SCHEDULED, states.QUEUED, states.PAUSED})


@dataclass(frozen=True)
class Row:
    """One reminder as the timeline shows it."""

    due: datetime
    title: str
    channel: str
    state: str
    detail: str
    critical: bool


@dataclass
class SessionView:
    session: TreatmentSession
    regimen_name: str
    settings: list[str] = field(default_factory=list)
    done: list[Row] = field(default_factory=list)
    upcoming: list[Row] = field(default_factory=list)
    replies: Sequence[InboundMessage] = ()
    counts: dict[str, int] = field(default_factory=dict)
    # Its place in the patient's course (1 for the first session treated).
    number: int = 0


def still_to_come(views: Sequence[SessionView]) -> list[tuple[SessionView, Row]]:
    """The reminders not yet sent across all the patient's sessions, soonest first."""
    rows = [(view, row) for view in views for row in view.upcoming]
    return sorted(rows, key=lambda pair: pair[1].due)


def _detail(reminder: Reminder, attempts: list[DeliveryAttempt], zone: ZoneInfo) -> str:
    """Why the reminder is where it is: attempts, error codes, reasons (never patient data)."""
    parts: list[str] = []
    if reminder.sent_at is not None and reminder.state in {states.SENT, states.DELIVERED}:
        sent, due = reminder.sent_at.astimezone(zone), reminder.due_at.astimezone(zone)
        parts.append(
            f"sent {sent:%H:%M}" if sent.date() == due.date() else f"sent {short_when(sent, zone)}"
        )
    codes = [a.error_code for a in attempts if a.error_code]
    if codes and codes[-1] not in (reminder.reason or ""):
        parts.append(f"error {codes[-1]}")
    if len(attempts) > 1:
        parts.append(f"{len(attempts)} attempts")
    if reminder.reason and reminder.state not in {states.SENT, states.DELIVERED}:
        parts.append(reminder.reason)
    return "; ".join(parts)


def session_view(
    db_session: Session, session: TreatmentSession, regimen: Regimen | None
) -> SessionView:
    zone = ZoneInfo(session.timezone)
    reminders = actions.session_reminders(db_session=db_session, session_id=session.id)
    attempts = actions.session_attempts(db_session=db_session, session_id=session.id)
    counts: dict[str, int] = {}
    totals: dict[str, int] = {}
    for r in reminders:
        totals[r.step] = max(totals.get(r.step, 0), r.occurrence + 1)
        counts[r.state] = counts.get(r.state, 0) + 1
    view = SessionView(
        session=session,
        regimen_name=regimen.name if regimen else session.regimen_id,
        settings=param_summary(regimen, dict(session.parameters)),
        replies=actions.session_replies(db_session=db_session, session_id=session.id),
        counts=counts,
    )
    for r in reminders:
        row = Row(
            due=r.due_at,
            title=step_title(regimen, r.step, r.occurrence, totals),
            channel=r.channel,
            state=r.state,
            detail=_detail(r, attempts.get(r.id, []), zone),
            critical=r.critical,
        )
        (view.upcoming if r.state in WAITING else view.done).append(row)
    return view
