"""What staff do to a patient: look them up, fix their details (re-planning what is still to
come), or erase them.

Each function takes keyword arguments, works in the caller's transaction (no commit), writes one
audit event, and raises :class:`~aftercare.errors.NotFound`, :class:`~aftercare.errors.Conflict`
or ``ValidationFailed`` for the face to turn into 404, 409 or 422.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from aftercare.audit import service as audit
from aftercare.errors import Conflict, NotFound
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.sessions.actions import LIVE_STATUSES, cancel_pending
from aftercare.sessions.replan import replan
from aftercare.storage.models import (
    DeliveryAttempt,
    Flag,
    InboundMessage,
    Patient,
    Reminder,
    TreatmentSession,
)
from aftercare.validation import (
    FieldError,
    ValidationFailed,
    clean_channels,
    clean_email,
    clean_name,
    clean_phone,
    clean_timezone,
)

EDITABLE: Final = ("name", "phone", "email", "timezone", "channels")
ERASED_NAME: Final = "erased"
ERASED_TEXT: Final = "[erased]"


# Look-ups ------------------------------------------------------------------------------------


def get_patient(*, db_session: Session, patient_id: int, lock: bool = False) -> Patient:
    query = select(Patient).where(Patient.id == patient_id)
    found = db_session.scalar(query.with_for_update() if lock else query)
    if found is None:
        raise NotFound("patient", patient_id)
    return found


def patient_sessions(*, db_session: Session, patient_id: int) -> Sequence[TreatmentSession]:
    return db_session.scalars(
        select(TreatmentSession)
        .where(TreatmentSession.patient_id == patient_id)
        .order_by(TreatmentSession.treated_at, TreatmentSession.id)
    ).all()


# Edit a patient ------------------------------------------------------------------------------


def update_patient(
    *,
    db_session: Session,
    patient_id: int,
    changes: Mapping[str, object],
    actor_id: int | None,
    now: datetime,
    registry: RegimenRegistry,
    quiet: QuietHours,
) -> Patient:
    """Fix a patient's name, phone, email, time zone or channels (only the keys given).

    Validated as at enrolment (errors are located by the field name). A new time zone or channel
    choice re-plans the *future* reminders of each active or paused session in place; reminders
    already sent, and those whose time has passed, are left as they are. A new phone number
    lifts an SMS block set by a provider's refusal of the old one.
    """
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise ValidationFailed([FieldError((unknown[0],), "cannot be changed here")])
    patient = get_patient(db_session=db_session, patient_id=patient_id, lock=True)
    if patient.erased_at is not None:
        raise Conflict(f"patient {patient_id} has been erased")
    cleaned = _clean_changes(patient, changes)
    changed = sorted(k for k, v in cleaned.items() if getattr(patient, k) != v)
    if not changed:
        return patient
    for key in changed:
        setattr(patient, key, cleaned[key])
    if "phone" in changed:
        patient.sms_blocked_at = None
        patient.sms_blocked_reason = None
    totals = [0, 0, 0]
    if {"timezone", "channels"} & set(changed):
        for session in patient_sessions(db_session=db_session, patient_id=patient_id):
            if session.status in LIVE_STATUSES:
                counts = replan(
                    db_session, session, patient, registry=registry, quiet=quiet, now=now
                )
                totals = [a + b for a, b in zip(totals, counts, strict=True)]
    detail: dict[str, audit.DetailValue] = {
        "fields": changed,
        "reminders_cancelled": totals[0],
        "reminders_replanned": totals[1],
        "reminders_added": totals[2],
    }
    audit.record(
        db_session=db_session,
        action="edit",
        actor_id=actor_id,
        now=now,
        patient_id=patient_id,
        detail=detail,
    )
    db_session.flush()
    return patient


def _clean_changes(patient: Patient, changes: Mapping[str, object]) -> dict[str, Any]:
    """The patient's values after the changes, each validated; ValidationFailed names them."""
    errors: list[FieldError] = []

    def attempt(func: Any, value: object, loc: str) -> Any:
        try:
            return func(value, (loc,))
        except ValidationFailed as exc:
            errors.extend(exc.errors)
            return None

    out: dict[str, Any] = {}
    if "name" in changes:
        out["name"] = attempt(clean_name, changes["name"], "name")
    channels = patient.channel_list
    if "channels" in changes:
        channels = attempt(clean_channels, changes["channels"], "channels") or []
        out["channels"] = ",".join(channels)
    out.update(_clean_contacts(patient, changes, channels, attempt))
    if "timezone" in changes:
        out["timezone"] = attempt(clean_timezone, changes["timezone"], "timezone")
    if errors:
        raise ValidationFailed(errors)
    return out


def _clean_contacts(
    patient: Patient,
    changes: Mapping[str, object],
    channels: Sequence[str],
    attempt: Callable[[Any, object, str], Any],
) -> dict[str, Any]:
    """Phone and email after the changes: checked when changed or needed by a chosen channel,
    cleared when emptied and not needed."""
    out: dict[str, Any] = {}
    for key, cleaner in (("phone", clean_phone), ("email", clean_email)):
        value = changes.get(key, getattr(patient, key))
        channel = "sms" if key == "phone" else "email"
        if value in (None, "") and channel not in channels:
            if key in changes:
                out[key] = None
        elif key in changes or channel in channels:
            out[key] = attempt(cleaner, value, key)
    return out


# Erase a patient -----------------------------------------------------------------------------

_CODE = re.compile(r"[0-9a-z_]{1,32}")


def _code_or_none(answer: str | None) -> str | None:
    """A check-in answer kept only when it is a code ("1", "still_dark"), never free text."""
    return answer if answer is not None and _CODE.fullmatch(answer) else None


def erase_patient(
    *,
    db_session: Session,
    patient_id: int,
    actor_id: int | None,
    now: datetime,
    action: str = "erase",
) -> Patient:
    """Remove a patient's personal data everywhere; keep an anonymous record of the erasure.

    Name, phone and email are replaced; message bodies and numbers of their replies, flag texts
    and notes, and providers' error texts (which can quote a number or address) are scrubbed;
    every live session is cancelled with its pending reminders. Ids, states and times stay, so
    counts and the audit log still add up. ``action`` names the audit event (``erase`` for
    staff, ``retention_erase`` for the retention task).
    """
    patient = get_patient(db_session=db_session, patient_id=patient_id, lock=True)
    if patient.erased_at is not None:
        raise Conflict(f"patient {patient_id} has already been erased")
    phone = patient.phone
    cancelled = 0
    sessions = patient_sessions(db_session=db_session, patient_id=patient_id)
    for session in sessions:
        cancelled += cancel_pending(db_session, session, now, "patient erased")
        if session.status in LIVE_STATUSES:
            session.status = "cancelled"
            session.cancelled_at = now
    session_ids = [s.id for s in sessions]
    reminder_ids = select(Reminder.id).where(Reminder.session_id.in_(session_ids))
    db_session.execute(
        update(DeliveryAttempt)
        .where(DeliveryAttempt.reminder_id.in_(reminder_ids))
        .values(error_detail=None)
        .execution_options(synchronize_session=False)
    )
    replies = InboundMessage.patient_id == patient_id
    if phone:
        # Messages from the number that were never matched to a patient are theirs too.
        replies = replies | (
            InboundMessage.patient_id.is_(None) & (InboundMessage.from_number == phone)
        )
    unmatched: list[int] = []
    for message in db_session.scalars(select(InboundMessage).where(replies)):
        if message.patient_id is None:
            unmatched.append(message.id)
        message.body = ERASED_TEXT
        message.from_number = ""
        message.response_text = None
        message.checkin_answer = _code_or_none(message.checkin_answer)
    for session in sessions:
        session.checkin_answer = _code_or_none(session.checkin_answer)
    db_session.execute(
        update(Flag)
        # Flags on their texts from before the number was theirs quote the text as well.
        .where((Flag.patient_id == patient_id) | Flag.inbound_id.in_(unmatched))
        .values(text=ERASED_TEXT, resolution_note=None)
        .execution_options(synchronize_session=False)
    )
    patient.name = ERASED_NAME
    patient.phone = None
    patient.email = None
    patient.sms_blocked_reason = None
    patient.sms_opt_out_source = None
    # Old unsubscribe links stop naming this row.
    patient.public_id = secrets.token_hex(16)
    patient.erased_at = now
    audit.record(
        db_session=db_session,
        action=action,
        actor_id=actor_id,
        now=now,
        patient_id=patient_id,
        detail={"sessions": len(session_ids), "reminders_cancelled": cancelled},
    )
    db_session.flush()
    return patient
