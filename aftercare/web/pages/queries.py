"""Read-only look-ups the staff pages need beyond the services' own (counts for the dashboard,
patient search, names for ids). Nothing here writes."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from aftercare.flags.service import open_flags
from aftercare.reminders import states
from aftercare.storage.models import (
    Flag,
    InboundMessage,
    Patient,
    Reminder,
    StaffUser,
    TreatmentSession,
)


@dataclass(frozen=True)
class DayCounts:
    """Today's messages (in the clinic's zone) and the sessions in progress."""

    sent: int
    delivered: int
    failed: int
    due_later: int
    active_sessions: int
    paused_sessions: int


def day_counts(db_session: Session, *, start: datetime, end: datetime, now: datetime) -> DayCounts:
    sent_today = Reminder.sent_at >= start, Reminder.sent_at < end
    sent, delivered = db_session.execute(
        select(func.count(), func.count().filter(Reminder.state == states.DELIVERED)).where(
            *sent_today
        )
    ).one()
    failed = db_session.scalar(
        select(func.count()).where(
            Reminder.state == states.FAILED, Reminder.updated_at >= start, Reminder.updated_at < end
        )
    )
    due_later = db_session.scalar(
        select(func.count()).where(
            Reminder.state.in_([states.SCHEDULED, states.QUEUED]),
            Reminder.due_at >= now,
            Reminder.due_at < end,
        )
    )
    by_status = dict(
        db_session.execute(
            select(TreatmentSession.status, func.count()).group_by(TreatmentSession.status)
        ).all()
    )
    return DayCounts(
        sent=int(sent),
        delivered=int(delivered),
        failed=int(failed or 0),
        due_later=int(due_later or 0),
        active_sessions=int(by_status.get("active", 0)),
        paused_sessions=int(by_status.get("paused", 0)),
    )


def recent_failures(
    db_session: Session, *, since: datetime, limit: int = 10
) -> Sequence[tuple[Reminder, Patient]]:
    """Failed reminders updated since ``since``, newest first, with their patients."""
    rows = db_session.execute(
        select(Reminder, Patient)
        .join(TreatmentSession, TreatmentSession.id == Reminder.session_id)
        .join(Patient, Patient.id == TreatmentSession.patient_id)
        .where(Reminder.state == states.FAILED, Reminder.updated_at >= since)
        .order_by(Reminder.updated_at.desc(), Reminder.id.desc())
        .limit(limit)
    ).all()
    return [(r, p) for r, p in rows]


def recent_sessions(
    db_session: Session, *, limit: int = 8
) -> Sequence[tuple[TreatmentSession, Patient]]:
    rows = db_session.execute(
        select(TreatmentSession, Patient)
        .join(Patient, Patient.id == TreatmentSession.patient_id)
        .order_by(TreatmentSession.recorded_at.desc(), TreatmentSession.id.desc())
        .limit(limit)
    ).all()
    return [(s, p) for s, p in rows]


def find_patients(
    db_session: Session, *, text: str, phone: str | None, limit: int = 50
) -> Sequence[Patient]:
    """Patients whose name or email contains ``text`` or whose phone is ``phone``; newest
    first. An empty ``text`` lists the newest patients."""
    query = select(Patient).order_by(Patient.created_at.desc(), Patient.id.desc()).limit(limit)
    if text:
        needle = text.lower()
        matches = [
            func.lower(Patient.name).contains(needle, autoescape=True),
            func.lower(Patient.email).contains(needle, autoescape=True),
        ]
        if phone:
            matches.append(Patient.phone == phone)
        query = query.where(or_(*matches))
    return db_session.scalars(query).all()


@dataclass(frozen=True)
class FlagRow:
    """An open flag with its patient, or None and the sender's number for a text from a number
    no patient has."""

    flag: Flag
    patient: Patient | None
    phone: str | None


def flags_with_patients(db_session: Session) -> Sequence[FlagRow]:
    """Open flags, urgent first then oldest, each with its patient (or unknown sender)."""
    flags = open_flags(db_session)
    patient_ids = {f.patient_id for f in flags if f.patient_id is not None}
    patients = {
        p.id: p for p in db_session.scalars(select(Patient).where(Patient.id.in_(patient_ids)))
    }
    unknown = {f.inbound_id for f in flags if f.patient_id is None and f.inbound_id is not None}
    senders: dict[int, str] = {
        row.id: row.from_number
        for row in db_session.execute(
            select(InboundMessage.id, InboundMessage.from_number).where(
                InboundMessage.id.in_(unknown)
            )
        )
    }
    rows = []
    for f in flags:
        patient = patients.get(f.patient_id) if f.patient_id is not None else None
        if patient is not None:
            rows.append(FlagRow(f, patient, patient.phone))
        else:
            sender = senders.get(f.inbound_id) if f.inbound_id is not None else None
            rows.append(FlagRow(f, None, sender or None))
    return rows


def patient_flags(db_session: Session, *, patient_id: int) -> Sequence[Flag]:
    """All the patient's flags: open ones first, then newest."""
    return db_session.scalars(
        select(Flag)
        .where(Flag.patient_id == patient_id)
        .order_by(Flag.resolved_at.is_not(None), Flag.created_at.desc(), Flag.id.desc())
    ).all()


def staff_names(db_session: Session, ids: Collection[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = db_session.execute(
        select(StaffUser.id, StaffUser.name, StaffUser.email).where(StaffUser.id.in_(wanted))
    )
    return {i: name or email for i, name, email in rows}


def patient_names(db_session: Session, ids: Collection[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    rows = db_session.execute(select(Patient.id, Patient.name).where(Patient.id.in_(wanted)))
    return {row.id: row.name for row in rows}


@dataclass(frozen=True)
class Outcomes:
    """Sessions by check-in outcome (faded, fading, dark_or_worried), answered this month (in
    the clinic's zone) and all time."""

    this_month: dict[str, int]
    all_time: dict[str, int]


def checkin_outcomes(db_session: Session, *, month_start: datetime) -> Outcomes:
    answered = TreatmentSession.checkin_outcome.is_not(None)
    query = select(TreatmentSession.checkin_outcome, func.count()).group_by(
        TreatmentSession.checkin_outcome
    )
    all_time = {str(k): int(n) for k, n in db_session.execute(query.where(answered)).all()}
    this_month = {
        str(k): int(n)
        for k, n in db_session.execute(
            query.where(answered, TreatmentSession.checkin_answered_at >= month_start)
        ).all()
    }
    return Outcomes(this_month=this_month, all_time=all_time)
