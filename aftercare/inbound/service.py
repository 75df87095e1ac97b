"""Act on an SMS from a patient: store it, then opt out or in, answer HELP, record a check-in
answer, or flag it for staff, and say what to reply.

The message is stored before anything else, keyed by the provider's id, so a webhook that is
retried is recognised and answered the same way without acting twice. Nothing is ever dropped:
a message nobody understood is stored and flagged, whether or not the number is a patient's.
Logs carry ids and the classification only, never the text or the number.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import phonenumbers
from sqlalchemy import case, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aftercare.audit.service import record as audit
from aftercare.flags.service import raise_flag
from aftercare.inbound.keywords import CONCERNING_ANSWER, Classification, classify
from aftercare.messages.context import CHECKIN_STEP
from aftercare.messages.render import MessageRenderer, TemplateError
from aftercare.storage.models import InboundMessage, Patient, Reminder, TreatmentSession

log = logging.getLogger(__name__)

# Sent if the safety-advice template cannot be rendered (say, a very long clinic name pushes it
# past two segments): a patient reporting warning signs must never go unanswered.
FALLBACK_SAFETY_ADVICE = (
    "If you suddenly feel breathless or have chest pain, call 999 now. For pain, swelling, "
    "warmth or redness in a leg, blisters, broken skin or a rash, call NHS 111 or your clinic."
)


@dataclass(frozen=True)
class Replies:
    """Renders the texts sent back to a patient (templates/sms/*.txt)."""

    renderer: MessageRenderer
    clinic_name: str
    clinic_phone: str

    def _render(self, template: str, **extra: object) -> str:
        context = {"clinic_name": self.clinic_name, "clinic_phone": self.clinic_phone, **extra}
        return self.renderer.render_sms(template, context).body

    def help(self, *, resubscribed: bool = False) -> str:
        return self._render("help", resubscribed=resubscribed)

    def safety_advice(self, *, call_back: bool) -> str:
        try:
            return self._render("safety-advice", call_back=call_back)
        except TemplateError:
            log.exception("safety-advice template failed; sending the built-in advice")
            return FALLBACK_SAFETY_ADVICE

    def checkin_thanks(self) -> str:
        return self._render("checkin-thanks")


@dataclass(frozen=True)
class Received:
    """What was stored and what to answer (``reply`` None: an empty response)."""

    inbound_id: int
    kind: str
    reply: str | None
    duplicate: bool = False


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


def _patients_with(db_session: Session, phone: str) -> list[Patient]:
    return list(
        db_session.scalars(
            select(Patient)
            .where(Patient.phone == phone, Patient.erased_at.is_(None))
            .order_by(Patient.id)
        )
    )


def withdraw_sms_consent(
    *, db_session: Session, phone: str, source: str, now: datetime
) -> list[int]:
    """Stop all SMS to ``phone``: every patient with that number is marked opted out (the first
    withdrawal's time and source are kept). Returns the ids of the patients changed.

    Pending SMS reminders are not touched here: delivery's hold check cancels each one when it
    comes due, so a later START lets the rest of the regimen through.
    """
    changed = []
    for patient in _patients_with(db_session, phone):
        if patient.sms_opted_out_at is not None:
            continue
        patient.sms_opted_out_at = now
        patient.sms_opt_out_source = source[:32]
        audit(
            db_session=db_session,
            action="opt_out",
            actor_id=None,
            now=now,
            patient_id=patient.id,
            detail={"channel": "sms", "source": source[:40]},
        )
        changed.append(patient.id)
    return changed


def restore_sms_consent(
    *, db_session: Session, phone: str, source: str, now: datetime
) -> list[int]:
    """Resume SMS to ``phone`` for every patient with that number who had opted out."""
    changed = []
    for patient in _patients_with(db_session, phone):
        if patient.sms_opted_out_at is None:
            continue
        patient.sms_opted_out_at = None
        patient.sms_opt_out_source = None
        audit(
            db_session=db_session,
            action="opt_in",
            actor_id=None,
            now=now,
            patient_id=patient.id,
            detail={"channel": "sms", "source": source[:40]},
        )
        changed.append(patient.id)
    return changed


def checkin_was_asked(*, db_session: Session, session_id: int) -> bool:
    """Whether the session's check-in question has gone out (on any channel)."""
    return bool(
        db_session.scalar(
            select(
                exists().where(
                    Reminder.session_id == session_id,
                    Reminder.step == CHECKIN_STEP,
                    Reminder.sent_at.is_not(None),
                )
            )
        )
    )


def _find(db_session: Session, sid: str) -> InboundMessage | None:
    return db_session.scalars(
        select(InboundMessage).where(InboundMessage.provider_sid == sid)
    ).first()


def _again(message: InboundMessage) -> Received:
    return Received(message.id, message.kind, message.response_text, duplicate=True)


def receive_sms(
    *,
    db_session: Session,
    sid: str,
    from_number: str,
    body: str,
    now: datetime,
    replies: Replies,
) -> Received:
    """Store one inbound SMS and act on it (no commit); a repeated ``sid`` changes nothing."""
    existing = _find(db_session, sid)
    if existing is not None:
        return _again(existing)
    phone = normalise_number(from_number)
    body = body.replace("\x00", "")  # PostgreSQL text cannot hold NUL
    found = classify(body)
    patient, session = match_sender(db_session=db_session, phone=phone)
    message = InboundMessage(
        provider_sid=sid,
        from_number=phone,
        patient_id=patient.id if patient else None,
        session_id=session.id if session else None,
        body=body,
        received_at=now,
        kind=found.kind,
        checkin_answer=found.answer,
    )
    try:
        # A concurrent retry of the same webhook loses here, on the unique provider id.
        with db_session.begin_nested():
            db_session.add(message)
    except IntegrityError:
        again = _find(db_session, sid)
        if again is None:
            raise
        return _again(again)
    context = _Context(db_session, message, patient, session, phone, now, replies)
    message.response_text = _act(context, found)
    log.info(
        "inbound %s: %s (patient %s, session %s)",
        message.id,
        found.kind,
        message.patient_id,
        message.session_id,
    )
    return Received(message.id, found.kind, message.response_text)


@dataclass(frozen=True)
class _Context:
    db_session: Session
    message: InboundMessage
    patient: Patient | None
    session: TreatmentSession | None
    phone: str
    now: datetime
    replies: Replies


def _flag(ctx: _Context, kind: str, text: str) -> None:
    # A text from a number no patient has is flagged too (patient_id None): it may be a patient
    # writing from another phone, or a relative; the flag links to the message and its number.
    raise_flag(
        ctx.db_session,
        kind=kind,
        patient_id=ctx.patient.id if ctx.patient else None,
        session_id=ctx.session.id if ctx.session else None,
        inbound_id=ctx.message.id,
        text=text,
        now=ctx.now,
    )


def _act(ctx: _Context, found: Classification) -> str | None:
    """Do what the message asks; return the reply text, or None for an empty reply."""
    quoted = f"“{ctx.message.body}”"
    if found.kind == "opt_out":
        # Twilio confirms STOP itself and blocks any reply to it, so none is sent.
        withdraw_sms_consent(
            db_session=ctx.db_session, phone=ctx.phone, source=f"sms:{found.keyword}", now=ctx.now
        )
        return None
    if found.kind == "opt_in":
        restored = restore_sms_consent(
            db_session=ctx.db_session, phone=ctx.phone, source=f"sms:{found.keyword}", now=ctx.now
        )
        if not restored and found.keyword == "YES":
            # Not a resubscription, so perhaps a "yes" to "want another session?".
            _flag(ctx, "unrecognised_reply", f"Replied {quoted}, but had not opted out")
        return ctx.replies.help(resubscribed=True)
    if found.kind == "help":
        return ctx.replies.help()
    if found.kind == "urgent":
        level = "EMERGENCY signs" if found.emergency else "Warning signs"
        signs = ", ".join(found.signs)
        _flag(ctx, "urgent_reply", f"{level} ({signs}); safety advice sent. Reply: {quoted}")
        return ctx.replies.safety_advice(call_back=ctx.patient is not None)
    if found.kind == "checkin_answer":
        return _checkin(ctx, found, quoted)
    _flag(ctx, "unrecognised_reply", f"Reply: {quoted}")
    return None


def _checkin(ctx: _Context, found: Classification, quoted: str) -> str | None:
    """Record the answer on the session once its check-in has been asked; before that a bare
    "1" or "fading" means something else, so staff read it instead. A concerning answer is
    flagged for a call back whenever it comes."""
    answer = found.answer or ""
    asked = ctx.session is not None and checkin_was_asked(
        db_session=ctx.db_session, session_id=ctx.session.id
    )
    if asked and ctx.session is not None:
        ctx.session.checkin_answer = answer
        ctx.session.checkin_answered_at = ctx.now
    if answer == CONCERNING_ANSWER:
        _flag(
            ctx, "checkin_concern", f"Check-in answer 3 (still dark, painful or worried): {quoted}"
        )
        return ctx.replies.safety_advice(call_back=ctx.patient is not None)
    if asked:
        return ctx.replies.checkin_thanks()
    _flag(ctx, "unrecognised_reply", f"Check-in answer {answer} before the check-in: {quoted}")
    return None
