"""What staff do: enrol, pause, resume or cancel a session, edit or erase a patient, resolve a
flag.

Shared by the JSON API and the staff pages. Each function takes keyword arguments, works in the
caller's transaction (no commit), writes one audit event, and raises :class:`NotFound`,
:class:`Conflict` or ``ValidationFailed`` for the face to turn into 404, 409 or 422.
Reminders only ever move by guarded UPDATEs (``WHERE state IN (...)``), so a dispatcher that
claims a reminder at the same moment either wins (it goes out) or loses (it does not), never both.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from aftercare.audit import service as audit
from aftercare.flags import service as flags
from aftercare.planning.planner import PlannedReminder, plan
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.reminders import states
from aftercare.sessions import course
from aftercare.sessions.service import (
    SessionRequest,
    ValidSession,
    record_session,
    validate_request,
)
from aftercare.sessions.validation import (
    FieldError,
    ValidationFailed,
    clean_channels,
    clean_email,
    clean_name,
    clean_phone,
    clean_timezone,
)
from aftercare.storage.models import (
    DeliveryAttempt,
    Flag,
    InboundMessage,
    Patient,
    Reminder,
    TreatmentSession,
)

EDITABLE: Final = ("name", "phone", "email", "timezone", "channels")
ERASED_NAME: Final = "erased"
ERASED_TEXT: Final = "[erased]"
# Never handed to a provider: such a row may be re-planned in place.
UNSENT_FINAL: Final = frozenset({states.CANCELLED, states.SKIPPED, states.EXPIRED})
LIVE_STATUSES: Final = frozenset({"active", "paused"})


class NotFound(LookupError):
    """No such row; ``what`` names it for the 404 message."""

    def __init__(self, what: str, ident: int) -> None:
        super().__init__(f"{what} {ident} not found")


class Conflict(ValueError):
    """The change makes no sense in the row's current state (a 409)."""


# Look-ups ------------------------------------------------------------------------------------


def get_session(*, db_session: Session, session_id: int, lock: bool = False) -> TreatmentSession:
    query = select(TreatmentSession).where(TreatmentSession.id == session_id)
    found = db_session.scalar(query.with_for_update() if lock else query)
    if found is None:
        raise NotFound("session", session_id)
    return found


def get_patient(*, db_session: Session, patient_id: int, lock: bool = False) -> Patient:
    query = select(Patient).where(Patient.id == patient_id)
    found = db_session.scalar(query.with_for_update() if lock else query)
    if found is None:
        raise NotFound("patient", patient_id)
    return found


def session_reminders(*, db_session: Session, session_id: int) -> Sequence[Reminder]:
    """The session's reminders as stored now, in due order."""
    return db_session.scalars(
        select(Reminder)
        .where(Reminder.session_id == session_id)
        .order_by(Reminder.due_at, Reminder.id)
        .execution_options(populate_existing=True)
    ).all()


def session_attempts(*, db_session: Session, session_id: int) -> dict[int, list[DeliveryAttempt]]:
    """Delivery attempts of the session's reminders, by reminder id."""
    rows = db_session.scalars(
        select(DeliveryAttempt)
        .join(Reminder, Reminder.id == DeliveryAttempt.reminder_id)
        .where(Reminder.session_id == session_id)
        .order_by(DeliveryAttempt.id)
    )
    out: dict[int, list[DeliveryAttempt]] = {}
    for row in rows:
        out.setdefault(row.reminder_id, []).append(row)
    return out


def session_replies(*, db_session: Session, session_id: int) -> Sequence[InboundMessage]:
    return db_session.scalars(
        select(InboundMessage)
        .where(InboundMessage.session_id == session_id)
        .order_by(InboundMessage.received_at, InboundMessage.id)
    ).all()


def patient_sessions(*, db_session: Session, patient_id: int) -> Sequence[TreatmentSession]:
    return db_session.scalars(
        select(TreatmentSession)
        .where(TreatmentSession.patient_id == patient_id)
        .order_by(TreatmentSession.treated_at, TreatmentSession.id)
    ).all()


# Enrol ---------------------------------------------------------------------------------------


def enrol(
    *,
    db_session: Session,
    request: SessionRequest,
    registry: RegimenRegistry,
    quiet: QuietHours,
    now: datetime,
    actor_id: int | None,
    patient_id: int | None = None,
    match: bool = True,
    booking_flag_id: int | None = None,
) -> TreatmentSession:
    """Validate, plan and store a new session (and its patient); audited as ``enrol``."""
    return enrol_planned(
        db_session=db_session,
        request=request,
        registry=registry,
        quiet=quiet,
        now=now,
        actor_id=actor_id,
        patient_id=patient_id,
        match=match,
        booking_flag_id=booking_flag_id,
    ).session


@dataclass(frozen=True)
class Enrolled:
    session: TreatmentSession
    # What was validated and planned: ``plan`` is the session's reminders as first stored, in
    # due order (superseding may since have moved some: see ``superseded``).
    valid: ValidSession
    # The session was added to a patient already known.
    matched_existing: bool
    # {session id: reminders superseded} by settling the patient's course.
    superseded: dict[int, int] = field(default_factory=dict)


def enrol_planned(
    *,
    db_session: Session,
    request: SessionRequest,
    registry: RegimenRegistry,
    quiet: QuietHours,
    now: datetime,
    actor_id: int | None,
    patient_id: int | None = None,
    match: bool = True,
    booking_flag_id: int | None = None,
) -> Enrolled:
    """As :func:`enrol`, also returning what was validated and planned and whether the patient
    was already known.

    The session goes to ``patient_id`` when given (its details fill any the request leaves
    out); else, when ``match``, to the known patient with the same phone (or email) and name;
    else to a new patient. Adding to a known patient settles the course: a later session of the
    same regimen supersedes what an earlier one has not sent. ``booking_flag_id``: the open
    ``booking_request`` flag this session answers, resolved and linked to it.
    """
    patient: Patient | None = None
    if patient_id is not None:
        patient = _known_patient(db_session, patient_id)
        request = _with_patient_details(request, patient)
    valid = validate_request(request, registry=registry, quiet=quiet, now=now)
    connection = db_session.connection()
    if patient is None and match:
        found = course.find_known_patient(
            connection, name=valid.name, phone=valid.phone, email=valid.email
        )
        if found is not None:
            patient = get_patient(db_session=db_session, patient_id=found, lock=True)
    if patient is not None:
        _complete_contact(patient, valid)
    session = record_session(
        db_session=db_session, valid=valid, now=now, patient=patient, created_by_id=actor_id
    )
    superseded: dict[int, int] = {}
    if patient is not None:
        superseded = course.settle_course(
            connection, patient_id=patient.id, registry=registry, now=now
        )
    detail: dict[str, audit.DetailValue] = {
        "regimen": valid.regimen.id,
        "channels": [str(c) for c in valid.channels],
        "matched_existing": patient is not None,
    }
    if superseded:
        detail["superseded"] = sum(superseded.values())
    audit.record(
        db_session=db_session,
        action="enrol",
        actor_id=actor_id,
        now=now,
        patient_id=session.patient_id,
        session_id=session.id,
        detail=detail,
    )
    if booking_flag_id is not None:
        _link_booking(db_session, booking_flag_id, session, actor_id=actor_id, now=now)
    db_session.flush()
    return Enrolled(session, valid, patient is not None, superseded)


def _known_patient(db_session: Session, patient_id: int) -> Patient:
    """The patient a session is explicitly added to; a 422 naming ``patient_id`` otherwise."""
    patient = db_session.scalar(select(Patient).where(Patient.id == patient_id).with_for_update())
    if patient is None:
        raise ValidationFailed([FieldError(("patient_id",), f"no patient {patient_id}")])
    if patient.erased_at is not None:
        raise ValidationFailed(
            [FieldError(("patient_id",), f"patient {patient_id} has been erased")]
        )
    return patient


def _with_patient_details(request: SessionRequest, patient: Patient) -> SessionRequest:
    """The request with the patient's stored details wherever it gives none."""
    return replace(
        request,
        name=patient.name if request.name in (None, "") else request.name,
        phone=patient.phone if request.phone in (None, "") else request.phone,
        email=patient.email if request.email in (None, "") else request.email,
        timezone=patient.timezone if request.timezone in (None, "") else request.timezone,
        channels=patient.channel_list if request.channels is None else request.channels,
    )


def _complete_contact(patient: Patient, valid: ValidSession) -> None:
    """A known patient gains a contact detail or channel the new session needs (none that
    they already have is overwritten: that is "Edit contact details")."""
    if patient.phone is None and valid.phone:
        patient.phone = valid.phone
    if patient.email is None and valid.email:
        patient.email = valid.email
    chosen = patient.channel_list
    wanted = [*chosen, *(c for c in valid.channels if c not in chosen)]
    if wanted != chosen:
        patient.channels = ",".join(wanted)
    if valid.discreet is not None:  # an explicit choice at this enrolment is the latest word
        patient.discreet = valid.discreet


def _link_booking(
    db_session: Session,
    flag_id: int,
    session: TreatmentSession,
    *,
    actor_id: int | None,
    now: datetime,
) -> None:
    """Resolve the patient's ``booking_request`` flag by the session just recorded."""
    flag = db_session.get(Flag, flag_id, with_for_update=True)
    if (
        flag is None
        or flag.kind != "booking_request"
        or flag.patient_id != session.patient_id
        or flag.resolved_at is not None
    ):
        raise ValidationFailed(
            [FieldError(("flag",), "is not an open booking request of this patient")]
        )
    flags.resolve_flag(
        db_session,
        flag=flag,
        staff_id=actor_id,
        now=now,
        note=f"Session {session.id} recorded",
    )
    flag.booked_session_id = session.id
    audit.record(
        db_session=db_session,
        action="resolve_flag",
        actor_id=actor_id,
        now=now,
        patient_id=flag.patient_id,
        session_id=session.id,
        detail={"flag_id": flag.id, "kind": flag.kind},
    )


# Pause, resume, cancel -----------------------------------------------------------------------


def _pending_ids(db_session: Session, session_id: int, in_states: Collection[str]) -> list[int]:
    return list(
        db_session.scalars(
            select(Reminder.id).where(
                Reminder.session_id == session_id, Reminder.state.in_(list(in_states))
            )
        )
    )


def _refuse_unless(session: TreatmentSession, allowed: Collection[str], verb: str) -> None:
    if session.status in allowed:
        return
    if session.status == "paused" and verb == "pause":
        raise Conflict(f"session {session.id} is already paused")
    if session.status == "active" and verb == "resume":
        raise Conflict(f"session {session.id} is not paused")
    done = "cancelled" if verb == "cancel" else f"{verb}d"
    raise Conflict(f"session {session.id} is {session.status}: it cannot be {done}")


def pause_session(
    *, db_session: Session, session_id: int, actor_id: int | None, now: datetime
) -> TreatmentSession:
    """Hold every reminder not yet handed to a provider (``scheduled``/``queued`` -> ``paused``).

    A reminder already being sent finishes; one a worker has queued is not sent, because the
    worker's own guarded ``queued -> sending`` finds it paused.
    """
    session = get_session(db_session=db_session, session_id=session_id, lock=True)
    _refuse_unless(session, {"active"}, "pause")
    session.status = "paused"
    session.paused_at = now
    held = states.transition(
        db_session,
        _pending_ids(db_session, session_id, (states.SCHEDULED, states.QUEUED)),
        source=(states.SCHEDULED, states.QUEUED),
        target=states.PAUSED,
        now=now,
        reason="session paused",
    )
    _audit(
        db_session, "pause", session, actor_id=actor_id, now=now, detail={"reminders": len(held)}
    )
    return session


def resume_session(
    *,
    db_session: Session,
    session_id: int,
    actor_id: int | None,
    now: datetime,
    quiet: QuietHours,
) -> TreatmentSession:
    """Put paused reminders back on the schedule.

    One whose time passed during the pause goes out now (an SMS at the next minute outside quiet
    hours), unless that is past its validity window: then it is ``expired``, not sent late. A
    critical reminder never expires.
    """
    session = get_session(db_session=db_session, session_id=session_id, lock=True)
    _refuse_unless(session, {"paused"}, "resume")
    session.status = "active"
    session.paused_at = None
    zone = ZoneInfo(session.timezone)
    paused = db_session.scalars(
        select(Reminder).where(Reminder.session_id == session_id, Reminder.state == states.PAUSED)
    ).all()
    counts = {states.SCHEDULED: 0, states.EXPIRED: 0}
    for reminder in paused:
        due = max(reminder.due_at, now)
        if reminder.channel == "sms":
            due = quiet.defer(due, zone)
        late = reminder.expires_at is not None and due > reminder.expires_at
        if late and not reminder.critical:
            moved = states.transition(
                db_session,
                [reminder.id],
                source=states.PAUSED,
                target=states.EXPIRED,
                now=now,
                reason="expired while the session was paused",
            )
            counts[states.EXPIRED] += len(moved)
        else:
            moved = states.transition(
                db_session,
                [reminder.id],
                source=states.PAUSED,
                target=states.SCHEDULED,
                now=now,
                due_at=due,
                reason=None,
            )
            counts[states.SCHEDULED] += len(moved)
    _audit(
        db_session,
        "resume",
        session,
        actor_id=actor_id,
        now=now,
        detail={"rescheduled": counts[states.SCHEDULED], "expired": counts[states.EXPIRED]},
    )
    return session


def cancel_session(
    *, db_session: Session, session_id: int, actor_id: int | None, now: datetime
) -> TreatmentSession:
    """Stop the session for good: every reminder not yet sent is ``cancelled``."""
    session = get_session(db_session=db_session, session_id=session_id, lock=True)
    _refuse_unless(session, LIVE_STATUSES, "cancel")
    cancelled = _cancel_pending(db_session, session, now, "session cancelled")
    session.status = "cancelled"
    session.cancelled_at = now
    _audit(
        db_session, "cancel", session, actor_id=actor_id, now=now, detail={"reminders": cancelled}
    )
    return session


def _cancel_pending(
    db_session: Session, session: TreatmentSession, now: datetime, reason: str
) -> int:
    pending = sorted(states.PENDING)
    return len(
        states.transition(
            db_session,
            _pending_ids(db_session, session.id, pending),
            source=pending,
            target=states.CANCELLED,
            now=now,
            reason=reason,
        )
    )


def _audit(
    db_session: Session,
    action: str,
    session: TreatmentSession,
    *,
    actor_id: int | None,
    now: datetime,
    detail: Mapping[str, audit.DetailValue],
) -> None:
    audit.record(
        db_session=db_session,
        action=action,
        actor_id=actor_id,
        now=now,
        patient_id=session.patient_id,
        session_id=session.id,
        detail=detail,
    )
    db_session.flush()


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
                counts = _replan(
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
    for key, cleaner in (("phone", clean_phone), ("email", clean_email)):
        value = changes.get(key, getattr(patient, key))
        channel = "sms" if key == "phone" else "email"
        if value in (None, "") and channel not in channels:
            if key in changes:
                out[key] = None
        elif key in changes or channel in channels:
            out[key] = attempt(cleaner, value, key)
    if "timezone" in changes:
        out["timezone"] = attempt(clean_timezone, changes["timezone"], "timezone")
    if errors:
        raise ValidationFailed(errors)
    return out


def _replan(
    db_session: Session,
    session: TreatmentSession,
    patient: Patient,
    *,
    registry: RegimenRegistry,
    quiet: QuietHours,
    now: datetime,
) -> list[int]:
    """Re-plan a live session's future for the patient's zone and channels: [cancelled,
    re-planned, added]. Rows are updated in place, keyed by their (step, occurrence, channel)
    slot."""
    try:
        regimen = registry.get(session.regimen_id)
    except KeyError as exc:
        raise Conflict(f"session {session.id}'s regimen is no longer available") from exc
    channels = clean_channels(patient.channel_list, ("channels",))
    planned = plan(
        regimen=regimen,
        treated_at=session.treated_at,
        timezone=patient.timezone,
        parameters=dict(session.parameters),
        channels=channels,
        quiet=quiet,
        recorded_at=session.recorded_at,
    )
    future = {
        (p.step, p.occurrence, p.channel): p
        for p in planned
        if p.state == states.SCHEDULED and p.due_utc > now
    }
    session.timezone = patient.timezone
    session.channels = ",".join(channels)
    waiting = states.PAUSED if session.status == "paused" else states.SCHEDULED
    existing = {
        (r.step, r.occurrence, r.channel): r
        for r in session_reminders(db_session=db_session, session_id=session.id)
    }
    stale = [
        r.id
        for key, r in existing.items()
        if r.state in states.PENDING
        and key not in future
        and (r.due_at > now or r.channel not in channels)
    ]
    pending = sorted(states.PENDING)
    cancelled = states.transition(
        db_session,
        stale,
        source=pending,
        target=states.CANCELLED,
        now=now,
        reason="re-planned after a change to the patient's details",
    )
    moved = added = 0
    for key, item in future.items():
        row = existing.get(key)
        if row is None:
            db_session.add(_new_row(session, item, waiting, now))
            added += 1
        elif row.state in states.PENDING:
            moved += _move(
                db_session, row.id, from_states=pending, item=item, waiting=waiting, now=now
            )
        elif row.state in UNSENT_FINAL and row.attempts == 0:
            # A slot emptied by an earlier edit (a channel dropped, then chosen again) is
            # planned again in place: the unique slot allows one row, and it was never sent.
            moved += _move(
                db_session, row.id, from_states=[row.state], item=item, waiting=waiting, now=now
            )
    db_session.flush()
    return [len(cancelled), moved, added]


def _move(
    db_session: Session,
    reminder_id: int,
    *,
    from_states: Sequence[str],
    item: PlannedReminder,
    waiting: str,
    now: datetime,
) -> int:
    result = db_session.scalars(
        update(Reminder)
        .where(Reminder.id == reminder_id, Reminder.state.in_(list(from_states)))
        .values(
            state=waiting,
            template=item.template,
            nominal_at=item.nominal_utc,
            due_at=item.due_utc,
            expires_at=item.expires_utc,
            critical=item.critical,
            updated_at=now,
            reason="re-planned after a change to the patient's details",
        )
        .returning(Reminder.id)
        .execution_options(synchronize_session=False)
    )
    return len(list(result))


def _new_row(
    session: TreatmentSession, item: PlannedReminder, state: str, now: datetime
) -> Reminder:
    return Reminder(
        session_id=session.id,
        step=item.step,
        occurrence=item.occurrence,
        channel=item.channel,
        template=item.template,
        nominal_at=item.nominal_utc,
        due_at=item.due_utc,
        expires_at=item.expires_utc,
        critical=item.critical,
        state=state,
        attempts=0,
        updated_at=now,
        reason="planned after a change to the patient's details",
    )


# Resolve a flag ------------------------------------------------------------------------------


def resolve_flag(
    *, db_session: Session, flag_id: int, actor_id: int | None, now: datetime, note: str = ""
) -> Flag:
    """Mark a flag as dealt with (409 if it already is); audited as ``resolve_flag``."""
    flag = db_session.get(Flag, flag_id, with_for_update=True)
    if flag is None:
        raise NotFound("flag", flag_id)
    try:
        flags.resolve_flag(db_session, flag=flag, staff_id=actor_id, now=now, note=note)
    except flags.FlagAlreadyResolved as exc:
        raise Conflict(str(exc)) from None
    audit.record(
        db_session=db_session,
        action="resolve_flag",
        actor_id=actor_id,
        now=now,
        patient_id=flag.patient_id,
        session_id=flag.session_id,
        detail={"flag_id": flag.id, "kind": flag.kind},
    )
    db_session.flush()
    return flag


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
        cancelled += _cancel_pending(db_session, session, now, "patient erased")
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
