"""Silent check-ins: a check-in nobody answered, or one that could not go by SMS because the
patient had opted out. Each raises an ``info`` flag once per session, so staff can call.

Which step is the check-in, and how many days of silence count as unanswered, are the
regimen's (``check_in: {unanswered_after_days}``, for the steps marked ``check_in: true``); a
regimen without it is not checked.
Run by a periodic beat task; ``now`` is the injected clock's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from aftercare.flags.service import raise_flag
from aftercare.regimens.loader import RegimenRegistry
from aftercare.regimens.model import Checkin
from aftercare.reminders import states
from aftercare.storage.models import Flag, Patient, Reminder, TreatmentSession

UNANSWERED: Final = "checkin_unanswered"
OPTED_OUT: Final = "opted_out_before_checkin"
# Sessions whose check-in staff no longer expect to go out or be answered.
INACTIVE: Final = ("cancelled", "paused")
# Flags raised per kind in one pass; the rest wait for the next pass.
BATCH: Final = 500


@dataclass
class Summary:
    unanswered: int = 0
    opted_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def find_silent_checkins(
    *, db_session: Session, registry: RegimenRegistry, now: datetime
) -> Summary:
    """Flag (no commit) every check-in gone silent by ``now``, each session once."""
    summary = Summary()
    for regimen in registry:
        if regimen.checkin is None:
            continue
        summary.unanswered += _unanswered(db_session, regimen.id, regimen.checkin, now)
        summary.opted_out += _opted_out(db_session, regimen.id, regimen.checkin, now)
    return summary


def _not_flagged(kind: str) -> object:
    return ~exists().where(Flag.session_id == TreatmentSession.id, Flag.kind == kind)


def _unanswered(db_session: Session, regimen_id: str, checkin: Checkin, now: datetime) -> int:
    wait = timedelta(days=checkin.unanswered_after_days)
    first_sent = func.min(Reminder.sent_at)
    rows = db_session.execute(
        select(TreatmentSession.id, TreatmentSession.patient_id, first_sent)
        .join(Reminder, Reminder.session_id == TreatmentSession.id)
        .join(Patient, Patient.id == TreatmentSession.patient_id)
        .where(
            TreatmentSession.regimen_id == regimen_id,
            TreatmentSession.status.not_in(INACTIVE),
            TreatmentSession.checkin_answered_at.is_(None),
            Patient.erased_at.is_(None),
            Reminder.step.in_(checkin.steps),
            Reminder.sent_at.is_not(None),
            _not_flagged(UNANSWERED),  # type: ignore[arg-type]
        )
        .group_by(TreatmentSession.id, TreatmentSession.patient_id)
        .having(first_sent <= now - wait)
        .order_by(TreatmentSession.id)
        .limit(BATCH)
    ).all()
    raised = 0
    for session_id, patient_id, sent_at in rows:
        # An answer recorded on another session of the course (the latest) answers this one.
        answered = db_session.scalar(
            select(
                exists().where(
                    TreatmentSession.patient_id == patient_id,
                    TreatmentSession.checkin_answered_at >= sent_at,
                )
            )
        )
        if answered or not _claim(db_session, session_id, UNANSWERED):
            continue
        raise_flag(
            db_session,
            kind=UNANSWERED,
            patient_id=patient_id,
            session_id=session_id,
            text=(
                f"The check-in sent on {sent_at:%d %b %Y} has had no answer for "
                f"{checkin.unanswered_after_days} days or more. Call the patient to ask how "
                "the treated area has healed and whether they want another session."
            ),
            now=now,
        )
        raised += 1
    return raised


def _opted_out(db_session: Session, regimen_id: str, checkin: Checkin, now: datetime) -> int:
    rows = db_session.execute(
        select(TreatmentSession.id, TreatmentSession.patient_id, Patient.sms_opted_out_at)
        .join(Reminder, Reminder.session_id == TreatmentSession.id)
        .join(Patient, Patient.id == TreatmentSession.patient_id)
        .where(
            TreatmentSession.regimen_id == regimen_id,
            TreatmentSession.status.not_in(INACTIVE),
            Patient.erased_at.is_(None),
            Patient.sms_opted_out_at.is_not(None),
            Reminder.step.in_(checkin.steps),
            Reminder.channel == "sms",
            Reminder.sent_at.is_(None),
            Reminder.nominal_at <= now,
            # Replaced by a later session's check-in, never meant to go, or maybe on its way.
            Reminder.state.not_in((states.SUPERSEDED, states.SKIPPED, states.SENDING)),
            _not_flagged(OPTED_OUT),  # type: ignore[arg-type]
        )
        .distinct()
        .order_by(TreatmentSession.id)
        .limit(BATCH)
    ).all()
    raised = 0
    for session_id, patient_id, opted_out_at in rows:
        if not _claim(db_session, session_id, OPTED_OUT):
            continue
        email_sent = db_session.scalar(
            select(
                exists().where(
                    Reminder.session_id == session_id,
                    Reminder.step.in_(checkin.steps),
                    Reminder.channel == "email",
                    Reminder.sent_at.is_not(None),
                )
            )
        )
        reach = (
            "The email version was sent."
            if email_sent
            else "No other version has been sent. Decide how to reach them (a call, a letter)."
        )
        raise_flag(
            db_session,
            kind=OPTED_OUT,
            patient_id=patient_id,
            session_id=session_id,
            text=(
                f"The patient opted out of SMS on {opted_out_at:%d %b %Y}, before their "
                f"check-in, so the check-in text was not sent. {reach}"
            ),
            now=now,
        )
        raised += 1
    return raised


def _claim(db_session: Session, session_id: int, kind: str) -> bool:
    """Lock the session row (PostgreSQL; SQLite has one writer) and check again that no flag
    of ``kind`` exists for it, so two passes at once still flag it once."""
    db_session.scalar(
        select(TreatmentSession.id).where(TreatmentSession.id == session_id).with_for_update()
    )
    return not db_session.scalar(
        select(exists().where(Flag.session_id == session_id, Flag.kind == kind))
    )
