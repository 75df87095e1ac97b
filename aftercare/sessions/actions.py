"""What staff do to a session: look it up, pause, resume or cancel it.

Shared by the JSON API and the staff pages. Each function takes keyword arguments, works in the
caller's transaction (no commit), writes one audit event, and raises :class:`NotFound` or
:class:`Conflict` for the face to turn into 404 or 409. Enrolment is
:mod:`aftercare.sessions.enrolment`; editing and erasing a patient
:mod:`aftercare.patients.service`; resolving a flag :mod:`aftercare.flags.resolution`.
Reminders only ever move by guarded UPDATEs (``WHERE state IN (...)``), so a dispatcher that
claims a reminder at the same moment either wins (it goes out) or loses (it does not), never both.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from aftercare.audit import service as audit
from aftercare.errors import Conflict, NotFound
from aftercare.planning.quiet import QuietHours
from aftercare.reminders import states
from aftercare.storage.models import DeliveryAttempt, InboundMessage, Reminder, TreatmentSession

LIVE_STATUSES: Final = frozenset({"active", "paused"})

# Look-ups ------------------------------------------------------------------------------------


def get_session(*, db_session: Session, session_id: int, lock: bool = False) -> TreatmentSession:
    query = select(TreatmentSession).where(TreatmentSession.id == session_id)
    found = db_session.scalar(query.with_for_update() if lock else query)
    if found is None:
        raise NotFound("session", session_id)
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
        due = states.allowed_at(
            max(reminder.due_at, now), channel=reminder.channel, zone=zone, quiet=quiet
        )
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
            moved = states.reschedule(
                db_session,
                reminder,
                source=states.PAUSED,
                due=due,
                zone=zone,
                quiet=quiet,
                now=now,
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
    cancelled = cancel_pending(db_session, session, now, "session cancelled")
    session.status = "cancelled"
    session.cancelled_at = now
    _audit(
        db_session, "cancel", session, actor_id=actor_id, now=now, detail={"reminders": cancelled}
    )
    return session


def cancel_pending(
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
