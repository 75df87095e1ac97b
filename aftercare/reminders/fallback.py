"""What follows a reminder failing for good: staff are told (urgently when the regimen marks the
step critical, aftercare/silence), a number the provider refused gets
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

from sqlalchemy import exists, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aftercare.channels.twilio import codes
from aftercare.flags.service import raise_flag
from aftercare.planning.planner import PlannedReminder
from aftercare.reminders import states
from aftercare.reminders.consent import block_sms_number, withdraw_sms_consent
from aftercare.reminders.critical import flag_critical_failure
from aftercare.storage.models import Flag, Patient, Reminder, TreatmentSession
from aftercare.storage.rows import reminder_rows

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
    if reminder.critical:
        # A safety-critical message (the regimen says which) that failed is urgent, not routine.
        flag_critical_failure(
            db_session, reminder=reminder, patient_id=patient.id, detail=" ".join(notes), now=now
        )
    else:
        _flag_once(db_session, reminder=reminder, patient=patient, text=" ".join(notes), now=now)
    return email_id


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
    planned = PlannedReminder(
        step=reminder.step,
        occurrence=reminder.occurrence,
        channel="email",
        template=reminder.template,
        nominal_utc=reminder.nominal_at,
        due_utc=now,
        # A late fallback of a time-bound reminder expires as the SMS would have.
        expires_utc=reminder.expires_at,
        critical=reminder.critical,
        state=states.SCHEDULED,
    )
    row = reminder_rows(
        reminder.session_id, [planned], now, reason="fallback: the SMS could not be delivered"
    )[0]
    try:
        # The slot's unique constraint settles a race between two failure reports.
        with db_session.begin_nested():
            email_id = db_session.execute(
                insert(Reminder).returning(Reminder.id), {**row, "fallback_of_id": reminder.id}
            ).scalar_one()
    except IntegrityError:
        return None
    log.info("reminder %s: email fallback %s scheduled", reminder.id, email_id)
    return email_id


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
