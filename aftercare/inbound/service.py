"""Act on an SMS from a patient: store it, then opt out or in, answer HELP, record a check-in
answer, or flag it for staff, and say what to reply.

The message is stored before anything else, keyed by the provider's id, so a webhook that is
retried is recognised and answered the same way without acting twice. Nothing is ever dropped:
a message nobody understood is stored and flagged, whether or not the number is a patient's.
Logs carry ids and the classification only, never the text or the number.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Final

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aftercare.flags.service import raise_flag
from aftercare.inbound.senders import (
    acknowledged_since,
    checkin_was_asked,
    match_sender,
    normalise_number,
    stored_message,
)
from aftercare.messages.render import MessageRenderer
from aftercare.oncall.ack import acknowledge_by_sms
from aftercare.patients.consent import restore_sms_consent, withdraw_sms_consent
from aftercare.regimens.loader import RegimenRegistry
from aftercare.sessions.course import checkin_outcome
from aftercare.storage.models import InboundMessage, Patient, TreatmentSession
from aftercare.triage.data import Severity
from aftercare.triage.language import LANGUAGE_NAMES
from aftercare.triage.verdict import Triager, Verdict, default_triager

# The check-in SMS asks: 1 faded well, 2 still fading, 3 still dark or painful, or worried.
CONCERNING_ANSWER: Final = "3"

log = logging.getLogger(__name__)

# Sent if an answer cannot be built from the triage data (it is checked at start-up, so this is
# a last resort): a patient reporting warning signs must never go unanswered.
FALLBACK_SAFETY_ADVICE = (
    "If you suddenly feel breathless or have chest pain, call 999 now. For pain, swelling, "
    "warmth or redness in a leg, blisters, broken skin or a rash, call NHS 111 or your clinic."
)
CALL_BACK = "We will try to call you today."


@lru_cache(maxsize=1)
def _default_regimens() -> RegimenRegistry:
    """The shipped regimens (read on the first call), for callers given no registry."""
    from aftercare.settings import Settings

    return RegimenRegistry.load(Settings.model_fields["schedules_dir"].default)


@dataclass(frozen=True)
class Replies:
    """The texts sent back to a patient: HELP and check-in thanks from templates/sms, the
    triage answers (by severity, and the safety line in each language) from
    schedules/triage/answers.yaml."""

    renderer: MessageRenderer
    clinic_name: str
    clinic_phone: str
    triage: Triager = field(default_factory=default_triager)
    # Which step of a session's regimen asks the check-in question (``check_in: true``).
    regimens: RegimenRegistry = field(default_factory=_default_regimens)

    def checkin_steps(self, regimen_id: str) -> frozenset[str]:
        """The steps of ``regimen_id`` that ask the check-in question (none if unknown)."""
        try:
            return self.regimens.get(regimen_id).checkin_steps
        except KeyError:
            return frozenset()

    # When the clinic next answers its phone ("The clinic opens again at 08:30 tomorrow."),
    # told with an urgent answer; empty when AFTERCARE_OPENING_HOURS is not set.
    next_open: str = ""

    def _render(self, template: str, **extra: object) -> str:
        context = {"clinic_name": self.clinic_name, "clinic_phone": self.clinic_phone, **extra}
        return self.renderer.render_sms(template, context).body

    def help(self, *, resubscribed: bool = False) -> str:
        return self._render("help", resubscribed=resubscribed)

    def checkin_thanks(self) -> str:
        return self._render("checkin-thanks")

    def answer(self, key: str) -> str:
        """One of answers.yaml's answers, with the clinic's name and number."""
        text = self.triage.data.answers.answers.get(key)
        if text is None:
            log.error("no triage answer %r; sending the built-in safety advice", key)
            return FALLBACK_SAFETY_ADVICE
        return " ".join(
            text.format_map(
                {"clinic_name": self.clinic_name, "clinic_phone": self.clinic_phone}
            ).split()
        )

    def alarm(self, verdict: Verdict, *, known: bool) -> str:
        """The answer to an emergency (999 first) or an urgent reply (clinic, 111, what to do)."""
        if verdict.emergency:
            return self.answer("emergency")
        parts = [self.answer("urgent" if known else "urgent_unknown_sender")]
        if self.next_open:
            parts.append(self.next_open)
        advice = self.triage.data.answers.advice
        parts += [" ".join(advice[a].split()) for a in verdict.advice if a in advice]
        if known:
            parts.append(CALL_BACK)
        return " ".join(parts)

    def interpreter(self, language: str) -> str:
        """The safety line in English and in the reply's language."""
        safety = self.triage.data.answers.languages.safety
        lines = [f"{self.clinic_name}: " + " ".join(safety["en"].split())]
        if language in safety and language != "en":
            lines.append(" ".join(safety[language].split()))
        return "\n".join(lines)


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
