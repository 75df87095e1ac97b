"""Re-plan a live session's future after a change to its patient's time zone or channels: rows
are updated in place, keyed by their (step, occurrence, channel) slot."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import update
from sqlalchemy.orm import Session

from aftercare.errors import Conflict
from aftercare.planning.planner import PlannedReminder, plan
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.reminders import states
from aftercare.sessions.actions import session_reminders
from aftercare.storage import bulk
from aftercare.storage.models import Patient, Reminder, TreatmentSession
from aftercare.validation import clean_channels

# Never handed to a provider: such a row may be re-planned in place.
UNSENT_FINAL: Final = frozenset({states.CANCELLED, states.SKIPPED, states.EXPIRED})


def replan(
    db_session: Session,
    session: TreatmentSession,
    patient: Patient,
    *,
    registry: RegimenRegistry,
    quiet: QuietHours,
    now: datetime,
) -> list[int]:
    """Re-plan a live session's future for the patient's zone and channels: [cancelled,
    re-planned, added]. Rows are updated in place, keyed by their (step, occurrence, channel)
    slot."""
    try:
        regimen = registry.get(session.regimen_id)
    except KeyError as exc:
        raise Conflict(f"session {session.id}'s regimen is no longer available") from exc
    channels = clean_channels(patient.channel_list, ("channels",))
    planned = plan(
        regimen=regimen,
        treated_at=session.treated_at,
        timezone=patient.timezone,
        parameters=dict(session.parameters),
        channels=channels,
        quiet=quiet,
        recorded_at=session.recorded_at,
    )
    future = {
        (p.step, p.occurrence, p.channel): p
        for p in planned
        if p.state == states.SCHEDULED and p.due_utc > now
    }
    session.timezone = patient.timezone
    session.channels = ",".join(channels)
    waiting = states.PAUSED if session.status == "paused" else states.SCHEDULED
    existing = {
        (r.step, r.occurrence, r.channel): r
        for r in session_reminders(db_session=db_session, session_id=session.id)
    }
    stale = [
        r.id
        for key, r in existing.items()
        if r.state in states.PENDING
        and key not in future
        and (r.due_at > now or r.channel not in channels)
    ]
    pending = sorted(states.PENDING)
    cancelled = states.transition(
        db_session,
        stale,
        source=pending,
        target=states.CANCELLED,
        now=now,
        reason="re-planned after a change to the patient's details",
    )
    moved = 0
    new: list[PlannedReminder] = []
    for key, item in future.items():
        row = existing.get(key)
        if row is None:
            new.append(item)
        elif row.state in states.PENDING:
            moved += _move(
                db_session, row.id, from_states=pending, item=item, waiting=waiting, now=now
            )
        elif row.state in UNSENT_FINAL and row.attempts == 0:
            # A slot emptied by an earlier edit (a channel dropped, then chosen again) is
            # planned again in place: the unique slot allows one row, and it was never sent.
            moved += _move(
                db_session, row.id, from_states=[row.state], item=item, waiting=waiting, now=now
            )
    bulk.add_reminders(
        db_session.connection(),
        [(session.id, new)],
        now,
        state=waiting,
        reason="planned after a change to the patient's details",
    )
    db_session.flush()
    return [len(cancelled), moved, len(new)]


def _move(
    db_session: Session,
    reminder_id: int,
    *,
    from_states: Sequence[str],
    item: PlannedReminder,
    waiting: str,
    now: datetime,
) -> int:
    result = db_session.scalars(
        update(Reminder)
        .where(Reminder.id == reminder_id, Reminder.state.in_(list(from_states)))
        .values(
            state=waiting,
            template=item.template,
            nominal_at=item.nominal_utc,
            due_at=item.due_utc,
            expires_at=item.expires_utc,
            critical=item.critical,
            updated_at=now,
            reason="re-planned after a change to the patient's details",
        )
        .returning(Reminder.id)
        .execution_options(synchronize_session=False)
    )
    return len(list(result))
