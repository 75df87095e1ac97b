"""Who sent an inbound SMS and whether it came before: the number in E.164 form, the patient with
it and their session, whether that session's check-in question has gone out, and the message
already stored under the provider's id (a retried webhook)."""

from __future__ import annotations

from datetime import datetime

import phonenumbers
from sqlalchemy import case, exists, select
from sqlalchemy.orm import Session

from aftercare.storage.models import InboundMessage, Patient, Reminder, TreatmentSession


def normalise_number(raw: str) -> str:
    """The sender in E.164 form when it parses as a phone number, else as given (bounded)."""
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return raw.strip()[:20]
    if not phonenumbers.is_possible_number(number):
        return raw.strip()[:20]
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def match_sender(
    *, db_session: Session, phone: str
) -> tuple[Patient | None, TreatmentSession | None]:
    """The most recent patient (not erased) with this number, and their latest active session
    (else their latest session of any status, so a late answer still lands somewhere)."""
    patient = db_session.scalars(
        select(Patient)
        .where(Patient.phone == phone, Patient.erased_at.is_(None))
        .order_by(Patient.created_at.desc(), Patient.id.desc())
        .limit(1)
    ).first()
    if patient is None:
        return None, None
    session = db_session.scalars(
        select(TreatmentSession)
        .where(TreatmentSession.patient_id == patient.id)
        .order_by(
            case((TreatmentSession.status == "active", 0), else_=1),
            TreatmentSession.treated_at.desc(),
            TreatmentSession.id.desc(),
        )
        .limit(1)
    ).first()
    return patient, session


def checkin_was_asked(*, db_session: Session, session_id: int, steps: frozenset[str]) -> bool:
    """Whether the session's check-in question (``steps``, those its regimen marks
    ``check_in: true``) has gone out (on any channel)."""
    if not steps:
        return False
    return bool(
        db_session.scalar(
            select(
                exists().where(
                    Reminder.session_id == session_id,
                    Reminder.step.in_(sorted(steps)),
                    Reminder.sent_at.is_not(None),
                )
            )
        )
    )


def stored_message(*, db_session: Session, sid: str) -> InboundMessage | None:
    """The inbound message stored under the provider's id ``sid``, if any."""
    return db_session.scalars(
        select(InboundMessage).where(InboundMessage.provider_sid == sid)
    ).first()


def acknowledged_since(*, db_session: Session, phone: str, since: datetime, besides: int) -> bool:
    """Whether chatter from ``phone`` (other than message ``besides``) was answered since."""
    return bool(
        db_session.scalar(
            select(
                exists().where(
                    InboundMessage.from_number == phone,
                    InboundMessage.id != besides,
                    InboundMessage.kind == "chatter",
                    InboundMessage.response_text.is_not(None),
                    InboundMessage.received_at > since,
                )
            )
        )
    )
