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
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aftercare.flags.service import raise_flag
from aftercare.inbound.replies import CALL_BACK, Replies
from aftercare.inbound.senders import (
    acknowledged_since,
    checkin_was_asked,
    match_sender,
    normalise_number,
    stored_message,
)
from aftercare.oncall.ack import acknowledge_by_sms
from aftercare.reminders.consent import restore_sms_consent, withdraw_sms_consent
from aftercare.sessions.course import checkin_outcome
from aftercare.storage.models import InboundMessage, Patient, TreatmentSession
from aftercare.triage.data import Severity
from aftercare.triage.language import LANGUAGE_NAMES
from aftercare.triage.verdict import Verdict

# The check-in SMS asks: 1 faded well, 2 still fading, 3 still dark or painful, or worried.
CONCERNING_ANSWER: Final = "3"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """What was stored and what to answer (``reply`` None: an empty response)."""

    inbound_id: int
    kind: str
    reply: str | None
    duplicate: bool = False


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
    existing = stored_message(db_session=db_session, sid=sid)
    if existing is not None:
        return _again(existing)
    phone = normalise_number(from_number)
    body = body.replace("\x00", "")  # PostgreSQL text cannot hold NUL
    # An on-call staff member answering a page with ACK: not a patient's reply.
    staff_reply = acknowledge_by_sms(db_session, phone=phone, body=body, now=now)
    if staff_reply is not None:
        return _store_staff_ack(db_session, sid, phone, body, now=now, reply=staff_reply)
    verdict = replies.triage.triage(body)
    patient, session = match_sender(db_session=db_session, phone=phone)
    message = InboundMessage(
        provider_sid=sid,
        from_number=phone,
        patient_id=patient.id if patient else None,
        session_id=session.id if session else None,
        body=body,
        received_at=now,
        kind=verdict.kind,
        severity=verdict.severity,
        checkin_answer=verdict.answer,
    )
    try:
        # A concurrent retry of the same webhook loses here, on the unique provider id.
        with db_session.begin_nested():
            db_session.add(message)
    except IntegrityError:
        again = stored_message(db_session=db_session, sid=sid)
        if again is None:
            raise
        return _again(again)
    context = _Context(db_session, message, patient, session, phone, now, replies)
    message.response_text = _act(context, verdict)
    log.info(
        "inbound %s: %s, %s (patient %s, session %s)",
        message.id,
        message.kind,
        message.severity,
        message.patient_id,
        message.session_id,
    )
    return Received(message.id, message.kind, message.response_text)


def _store_staff_ack(
    db_session: Session, sid: str, phone: str, body: str, *, now: datetime, reply: str
) -> Received:
    message = InboundMessage(
        provider_sid=sid,
        from_number=phone,
        body=body,
        received_at=now,
        kind="page_ack",
        severity="info",
        response_text=reply,
    )
    try:
        with db_session.begin_nested():
            db_session.add(message)
    except IntegrityError:
        again = stored_message(db_session=db_session, sid=sid)
        if again is None:
            raise
        return _again(again)
    log.info("inbound %s: page_ack", message.id)
    return Received(message.id, message.kind, reply)


@dataclass(frozen=True)
class _Context:
    db_session: Session
    message: InboundMessage
    patient: Patient | None
    session: TreatmentSession | None
    phone: str
    now: datetime
    replies: Replies

    @property
    def quoted(self) -> str:
        return f"“{self.message.body}”"


def _flag(
    ctx: _Context,
    kind: str,
    text: str,
    *,
    severity: Severity,
    told: str | None,
    signs: tuple[str, ...] = (),
) -> None:
    # A text from a number no patient has is flagged too (patient_id None): it may be a patient
    # writing from another phone, or a relative; the flag links to the message and its number.
    raise_flag(
        ctx.db_session,
        kind=kind,
        patient_id=ctx.patient.id if ctx.patient else None,
        session_id=ctx.session.id if ctx.session else None,
        inbound_id=ctx.message.id,
        text=text,
        severity=severity,
        signs=signs,
        told=told,
        now=ctx.now,
    )


def _act(ctx: _Context, verdict: Verdict) -> str | None:
    """Do what the message asks; return the reply text, or None for an empty reply."""
    if verdict.kind == "opt_out" and verdict.keyword is not None:
        # Twilio confirms STOP itself and blocks any reply to it, so none is sent.
        withdraw_sms_consent(
            db_session=ctx.db_session,
            phone=ctx.phone,
            source=f"sms:{verdict.keyword}",
            now=ctx.now,
        )
        return None
    if verdict.kind == "opt_in":
        return _opt_in(ctx, verdict)
    if verdict.kind == "help":
        return ctx.replies.help()
    reply = _answer(ctx, verdict)
    if verdict.stop:
        # A request to stop in words: Twilio does not act on it, so we do, and say so.
        withdraw_sms_consent(
            db_session=ctx.db_session, phone=ctx.phone, source="sms:words", now=ctx.now
        )
        stopped = ctx.replies.answer("stopped")
        if verdict.kind == "opt_out":
            _flag(
                ctx,
                "opt_out",
                f"Asked to stop texts; SMS stopped. Reply: {ctx.quoted}",
                severity="info",
                told=stopped,
            )
            return stopped
        reply = f"{reply}\n{stopped}" if reply else stopped
    return reply


def _opt_in(ctx: _Context, verdict: Verdict) -> str | None:
    restored = restore_sms_consent(
        db_session=ctx.db_session, phone=ctx.phone, source=f"sms:{verdict.keyword}", now=ctx.now
    )
    if restored or verdict.keyword != "YES":
        return ctx.replies.help(resubscribed=True)
    # Not a resubscription: after the check-in ("Want another session?") a Yes asks to book.
    if _checkin_asked(ctx):
        return _booking(ctx)
    told = ctx.replies.answer("not_understood")
    _flag(
        ctx,
        "unrecognised_reply",
        f"Replied {ctx.quoted}, but had not opted out and no question was open",
        severity="info",
        told=told,
    )
    return told


def _checkin_asked(ctx: _Context) -> bool:
    return ctx.session is not None and checkin_was_asked(
        db_session=ctx.db_session,
        session_id=ctx.session.id,
        steps=ctx.replies.checkin_steps(ctx.session.regimen_id),
    )


def _booking(ctx: _Context) -> str:
    told = ctx.replies.answer("booking")
    _flag(
        ctx,
        "booking_request",
        f"Would like another session. Reply: {ctx.quoted}",
        severity="concern",
        told=told,
    )
    ctx.message.kind = "booking"
    ctx.message.severity = "concern"
    return told


def _signs_text(verdict: Verdict) -> str:
    return ", ".join(verdict.signs) or "none named"


def _answer(ctx: _Context, verdict: Verdict) -> str | None:
    """Flag what staff must see and say what the triage level calls for."""
    replies = ctx.replies
    known = ctx.patient is not None
    if verdict.alarm and verdict.kind == "urgent":
        told = replies.alarm(verdict, known=known)
        level = "EMERGENCY" if verdict.emergency else "URGENT"
        _flag(
            ctx,
            "urgent_reply",
            f"{level}: {_signs_text(verdict)}. Reply: {ctx.quoted}",
            severity=verdict.severity,
            signs=verdict.signs,
            told=told,
        )
        return told
    if verdict.interpreter:
        told = replies.interpreter(verdict.language)
        name = LANGUAGE_NAMES.get(verdict.language, verdict.language)
        _flag(
            ctx,
            "unrecognised_reply",
            f"Needs an interpreter ({name}): not understood. Reply: {ctx.quoted}",
            severity="urgent",
            told=told,
        )
        return told
    if verdict.kind == "opt_out":
        return None  # _act confirms the stop
    if verdict.kind == "booking":
        return _booking(ctx)
    if verdict.kind == "checkin_answer":
        return _checkin(ctx, verdict)
    if verdict.kind in ("concern", "question"):
        told = replies.answer("concern")
        what = "Question for a nurse" if verdict.kind == "question" else "Concern"
        kind = (
            "checkin_concern"
            if verdict.kind == "concern" and _checkin_asked(ctx)
            else "unrecognised_reply"
        )
        _flag(
            ctx,
            kind,
            f"{what}: {_signs_text(verdict)}. Reply: {ctx.quoted}",
            severity="concern",
            signs=verdict.signs,
            told=told,
        )
        return told
    if verdict.kind == "expected":
        # May describe a symptom: always answered, with what is expected and the safety net.
        return replies.answer("expected")
    if verdict.kind == "chatter":
        return _acknowledge(ctx)
    told = replies.answer("not_understood")
    _flag(
        ctx,
        "unrecognised_reply",
        f"Not understood. Reply: {ctx.quoted}",
        severity=verdict.severity,
        told=told,
    )
    return told


def _acknowledge(ctx: _Context) -> str | None:
    """Thanks and chatter: one acknowledgement per number every few hours, then silence."""
    hours = ctx.replies.triage.data.answers.acknowledge_every_hours
    recent = acknowledged_since(
        db_session=ctx.db_session,
        phone=ctx.phone,
        since=ctx.now - timedelta(hours=hours),
        besides=ctx.message.id,
    )
    return None if recent else ctx.replies.answer("acknowledge")


def _checkin(ctx: _Context, verdict: Verdict) -> str | None:
    """Record the answer on the session once its check-in has been asked; before that a bare
    "1" or "fading" means something else, so staff read it instead. A concerning answer is
    flagged for a call back whenever it comes."""
    answer = verdict.answer or ""
    asked = _checkin_asked(ctx)
    if asked and ctx.session is not None:
        ctx.session.checkin_answer = answer
        ctx.session.checkin_outcome = checkin_outcome(answer)
        ctx.session.checkin_answered_at = ctx.now
    if answer == CONCERNING_ANSWER or verdict.severity == "concern":
        told = ctx.replies.answer("concern")
        if ctx.patient is not None:
            told = f"{told} {CALL_BACK}"
        _flag(
            ctx,
            "checkin_concern",
            f"Check-in answer {answer} (still dark, painful or worried): {ctx.quoted}",
            severity="concern",
            signs=verdict.signs,
            told=told,
        )
        return told
    if asked:
        return ctx.replies.checkin_thanks()
    told = ctx.replies.answer("not_understood")
    _flag(
        ctx,
        "unrecognised_reply",
        f"Check-in answer {answer} before the check-in: {ctx.quoted}",
        severity="info",
        told=told,
    )
    return told
