"""Turn a stored reminder into the message its channel sends (rendering is pure)."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parseaddr
from zoneinfo import ZoneInfo

from aftercare.channels.base import Attachment, EmailMessage, Message, SmsMessage
from aftercare.messages.calendar import regimen_calendar
from aftercare.messages.context import build_context, sms_first_name
from aftercare.messages.render import MessageRenderer
from aftercare.planning.planner import step_instants
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.security import sign
from aftercare.storage.models import Patient, Reminder, TreatmentSession


@dataclass(frozen=True)
class Clinic:
    name: str
    phone: str
    public_base_url: str
    email_from: str
    secret_key: str
    # A mailbox someone reads (Reply-To); empty: no email invites a reply.
    email_reply_to: str = ""
    # Discreet messages for a patient who made no choice (Patient.discreet is None).
    discreet_default: bool = False


class MissingAddress(ValueError):
    """The patient has no phone number or email address for this channel."""


def message_key(reminder_id: int) -> str:
    """A reminder's message's idempotency key (the outbox's file name, ids only)."""
    return f"reminder-{reminder_id}"


def unsubscribe_url(clinic: Clinic, patient: Patient) -> str:
    token = sign(patient.public_id, secret=clinic.secret_key)
    return f"{clinic.public_base_url.rstrip('/')}/unsubscribe/{token}"


def audience(*, patient: Patient, session: TreatmentSession, clinic: Clinic) -> dict[str, bool]:
    """How this patient is written to: discreetly or not, and whether they get no emails (so
    some SMS repeat the safety advice); and whether emails may invite a reply."""
    gets_email = (
        "email" in session.channels.split(",")
        and bool(patient.email)
        and patient.email_opted_out_at is None
    )
    return {
        "discreet": clinic.discreet_default if patient.discreet is None else patient.discreet,
        "sms_only": not gets_email,
        "email_reply": bool(clinic.email_reply_to),
    }


def compose(
    *,
    reminder: Reminder,
    session: TreatmentSession,
    patient: Patient,
    registry: RegimenRegistry,
    renderer: MessageRenderer,
    quiet: QuietHours,
    clinic: Clinic,
) -> Message:
    regimen = registry.get(session.regimen_id)
    # Defaults first: a session recorded before a parameter was added still renders.
    parameters = {name: p.default for name, p in regimen.parameters.items()}
    parameters.update({k: v for k, v in session.parameters.items() if isinstance(v, int | str)})
    instants = step_instants(
        regimen=regimen,
        treated_at=session.treated_at,
        zone=ZoneInfo(session.timezone),
        parameters=parameters,
        quiet=quiet,
    )
    unsubscribe = unsubscribe_url(clinic, patient) if reminder.channel == "email" else None
    context = build_context(
        regimen=regimen,
        patient_name=patient.name,
        clinic_name=clinic.name,
        clinic_phone=clinic.phone,
        timezone=session.timezone,
        parameters=parameters,
        instants=instants,
        step=reminder.step,
        occurrence=reminder.occurrence,
        unsubscribe_url=unsubscribe,
        **audience(patient=patient, session=session, clinic=clinic),
    )
    key = message_key(reminder.id)
    if reminder.channel == "sms":
        if not patient.phone:
            raise MissingAddress("no phone number")
        greeting = sms_first_name(str(context["first_name"]))
        sms = renderer.render_sms(reminder.template, {**context, "first_name": greeting})
        return SmsMessage(key=key, to=patient.phone, body=sms.body)
    if not patient.email:
        raise MissingAddress("no email address")
    email = renderer.render_email(reminder.template, context)
    assert unsubscribe is not None
    mailto = parseaddr(clinic.email_from)[1] or clinic.email_from
    attachments: tuple[Attachment, ...] = ()
    if regimen.step(reminder.step).attach_calendar:
        ics = regimen_calendar(
            regimen=regimen,
            # Stable per session (repeat sends update the same events); hashed, never shown.
            session_key=f"{patient.public_id}:{session.id}",
            treated_at=session.treated_at,
            timezone=session.timezone,
            parameters=parameters,
            instants=instants,
            clinic_name=clinic.name,
            clinic_phone=clinic.phone,
            stamp=session.recorded_at,  # fixed, so a resend carries an identical file
        )
        attachments = (Attachment("aftercare.ics", "text/calendar", ics),)
    return EmailMessage(
        key=key,
        to=patient.email,
        subject=email.subject,
        text=email.text,
        html=email.html,
        headers={
            "List-Unsubscribe": f"<{unsubscribe}>, <mailto:{mailto}?subject=unsubscribe>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            **({"Reply-To": clinic.email_reply_to} if clinic.email_reply_to else {}),
        },
        attachments=attachments,
    )
