"""What follows a reminder failing for good: staff are told, a number the provider refused gets
no more SMS, and the email version of a failed SMS goes out instead, once.

Called in the transaction that moved the reminder to ``failed`` (by delivery, or by a status
callback), so the flag, the block and the email reminder commit together with the failure.
Every step is idempotent: a failure reported twice (an error, then an "undelivered" callback)
flags once and creates one email.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aftercare.audit.service import record as audit
from aftercare.channels.twilio import codes
from aftercare.flags.service import raise_flag
from aftercare.inbound.service import withdraw_sms_consent
from aftercare.reminders import states
from aftercare.storage.models import Flag, Patient, Reminder, TreatmentSession

log = logging.getLogger(__name__)

# Twilio's "the recipient has opted out" (they texted STOP to this sender).
OPT_OUT_SOURCE: Final = f"provider:{codes.OPTED_OUT}"


def after_failure(
    *,
    db_session: Session,
    reminder_id: int,
    now: datetime,
    code: str | None,
    opted_out: bool = False,
    block: bool = False,
    cause: str,
) -> int | None:
    """Flag a failed reminder for staff (once), stop SMS to a number that opted out or (with
    ``block``, for a permanent send error) was refused, and create the email version of a failed
    SMS. Returns the email reminder's id when one was created.

    No email replaces an SMS refused because the patient opted out: they withdrew consent to
    texts, and a STOP does not turn texts into emails either.
    """
    reminder = db_session.get_one(Reminder, reminder_id)
    session = db_session.get_one(TreatmentSession, reminder.session_id)
    patient = db_session.get_one(Patient, session.patient_id)
    notes = [f"{reminder.channel.upper()} reminder '{reminder.step}' failed: {cause}."]
    opted_out = opted_out or codes.is_opted_out(code)
    if reminder.channel == "sms" and patient.phone:
        if opted_out:
            withdraw_sms_consent(
                db_session=db_session, phone=patient.phone, source=OPT_OUT_SOURCE, now=now
            )
            notes.append("The patient has opted out of SMS at the provider.")
        elif block and codes.number_refused(code):
            block_sms_number(db_session=db_session, phone=patient.phone, code=code, now=now)
            notes.append("No more SMS go to this number until it is corrected.")
    email_id = None
    if reminder.channel == "sms" and not opted_out:
        email_id = fall_back_to_email(db_session=db_session, reminder=reminder, now=now)
        notes.append(_fallback_note(db_session, reminder, patient, email_id))
    _flag_once(db_session, reminder=reminder, patient=patient, text=" ".join(notes), now=now)
    return email_id


def block_sms_number(*, db_session: Session, phone: str, code: str | None, now: datetime) -> None:
    """Stop SMS to ``phone`` for every patient with it, until staff correct the number."""
    patients = db_session.scalars(
        select(Patient).where(
            Patient.phone == phone, Patient.erased_at.is_(None), Patient.sms_blocked_at.is_(None)
        )
    )
    for patient in patients:
        patient.sms_blocked_at = now
        # The code only: a provider's message can quote the number.
        patient.sms_blocked_reason = code
        audit(
            db_session=db_session,
            action="sms_blocked",
            actor_id=None,
            now=now,
            patient_id=patient.id,
            detail={"code": code},
        )


def fall_back_to_email(*, db_session: Session, reminder: Reminder, now: datetime) -> int | None:
    """Schedule the email version of a failed SMS reminder, due now, unless one exists.

    An email address is enough, even when the patient chose SMS only: the address was given to
    the clinic, these messages carry aftercare the patient needs, and each email has a one-click
    unsubscribe. Not when they have unsubscribed from email or the session is cancelled.
    """
    session = db_session.get_one(TreatmentSession, reminder.session_id)
    patient = db_session.get_one(Patient, session.patient_id)
    if (
        reminder.channel != "sms"
        or not patient.email
        or patient.email_opted_out_at is not None
        or patient.erased_at is not None
        or session.status == "cancelled"
        or _email_slot_taken(db_session, reminder)
    ):
        return None
    email = Reminder(
        session_id=reminder.session_id,
        step=reminder.step,
        occurrence=reminder.occurrence,
        channel="email",
        template=reminder.template,
        nominal_at=reminder.nominal_at,
        due_at=now,
        # A late fallback of a time-bound reminder expires as the SMS would have.
        expires_at=reminder.expires_at,
        critical=reminder.critical,
        state=states.SCHEDULED,
        attempts=0,
        updated_at=now,
        reason="fallback: the SMS could not be delivered",
        fallback_of_id=reminder.id,
    )
    try:
        # The slot's unique constraint settles a race between two failure reports.
        with db_session.begin_nested():
            db_session.add(email)
    except IntegrityError:
        return None
    log.info("reminder %s: email fallback %s scheduled", reminder.id, email.id)
    return email.id


def _email_slot_taken(db_session: Session, reminder: Reminder) -> bool:
    return bool(
        db_session.scalar(
            select(
                exists().where(
                    Reminder.session_id == reminder.session_id,
                    Reminder.step == reminder.step,
                    Reminder.occurrence == reminder.occurrence,
                    Reminder.channel == "email",
                )
            )
        )
    )


def _fallback_note(
    db_session: Session, reminder: Reminder, patient: Patient, email_id: int | None
) -> str:
    if email_id is not None:
        return "The email version is being sent instead."
    if _email_slot_taken(db_session, reminder):
        return "The email version was planned as well."
    if not patient.email:
        return "There is no email address to send it to instead."
    if patient.email_opted_out_at is not None:
        return "The patient has unsubscribed from email, so none was sent instead."
    return "No email was sent instead."


def _flag_once(
    db_session: Session, *, reminder: Reminder, patient: Patient, text: str, now: datetime
) -> None:
    already = db_session.scalar(
        select(
            exists().where(
                Flag.kind == "delivery_failed",
                Flag.reminder_id == reminder.id,
            )
        )
    )
    if already:
        return
    raise_flag(
        db_session,
        kind="delivery_failed",
        patient_id=patient.id,
        session_id=reminder.session_id,
        reminder_id=reminder.id,
        text=text,
        now=now,
    )
