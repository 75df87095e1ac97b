"""``/api/v1/sessions``: enrol, read the timeline, pause, resume and cancel."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, status
from sqlalchemy.orm import Session

from aftercare.sessions import actions, enrolment
from aftercare.sessions.service import SessionRequest
from aftercare.storage.models import DeliveryAttempt, Reminder, TreatmentSession
from aftercare.validation import FieldError, ValidationFailed, clean_instant
from aftercare.web.api.auth import CurrentStaff
from aftercare.web.api.errors import ApiRoute, field_errors, responses
from aftercare.web.api.schemas import (
    AttemptOut,
    PlannedReminderOut,
    ReminderOut,
    ReplyOut,
    SessionCreatedOut,
    SessionIn,
    SessionOut,
    iso,
    iso_or_none,
)
from aftercare.web.deps import DbSession, RuntimeDep

router = APIRouter(prefix="/sessions", tags=["sessions"], route_class=ApiRoute)

MAX_ID = 2**31 - 1
SessionId = Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="The session's id.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionCreatedOut,
    responses=responses(422),
)
def create_session(
    body: SessionIn, staff: CurrentStaff, db_session: DbSession, rt: RuntimeDep
) -> SessionCreatedOut:
    """Record a treatment session and plan its reminders; the planned timeline.

    The session is added to a known patient (``patient_id``, or the same phone or email and
    name); a later session of the same regimen supersedes what an earlier one has not sent."""
    _refuse_unconvertible_instant(body.treated_at)
    if body.patient is None and body.patient_id is None:
        raise field_errors(
            [FieldError(("patient",), "Field required (or patient_id for a known patient)")],
            prefix=("body",),
        )
    if body.patient is not None and body.patient_id is not None:
        raise field_errors(
            [FieldError(("patient_id",), "give patient or patient_id, not both")],
            prefix=("body",),
        )
    patient = body.patient
    request = SessionRequest(
        name=patient.name if patient else None,
        phone=patient.phone if patient else None,
        email=patient.email if patient else None,
        timezone=(patient.timezone or rt.settings.default_timezone) if patient else None,
        channels=list(patient.channels) if patient else None,
        treated_at=body.treated_at,
        regimen=body.regimen,
        parameters=dict(body.parameters),
        consent=body.consent,
        contraindications_checked=body.contraindications_checked,
        discreet=patient.discreet if patient else None,
    )
    enrolled = enrolment.enrol_planned(
        db_session=db_session,
        request=request,
        registry=rt.registry,
        quiet=rt.quiet,
        now=rt.clock.now(),
        actor_id=staff.id,
        patient_id=body.patient_id,
    )
    session = enrolled.session
    zone = ZoneInfo(session.timezone)
    # The plan is what was just stored, in the order reading it back would give (due time, then
    # insertion order): no query for the reminders, unless a later session already stored
    # superseded some of them at once (a late enrolment of an older session).
    moved: dict[tuple[str, int, str], str] = {}
    if session.id in enrolled.superseded:
        moved = {
            (r.step, r.occurrence, r.channel): r.state
            for r in actions.session_reminders(db_session=db_session, session_id=session.id)
        }
    return SessionCreatedOut(
        id=session.id,
        patient_id=session.patient_id,
        matched_existing=enrolled.matched_existing,
        reminders=[
            PlannedReminderOut(
                step=r.step,
                channel=r.channel,
                template=r.template,
                due_utc=iso(r.due_utc),
                due_local=iso(r.due_utc.astimezone(zone)),
                state=moved.get((r.step, r.occurrence, r.channel), r.state),
            )
            for r in enrolled.valid.plan
        ],
    )


def _refuse_unconvertible_instant(text: str) -> None:
    """An instant so near the ends of the calendar that it has no UTC equivalent (year 1 at
    +14:00) is refused here; the service's own checks report every other problem."""
    try:
        clean_instant(text, ("treated_at",)).astimezone(UTC)
    except ValidationFailed:
        return
    except OverflowError:
        raise field_errors(
            [FieldError(("treated_at",), "is out of range")], prefix=("body",)
        ) from None


@router.get("/{id}", response_model=SessionOut, responses=responses(404, 422))
def read_session(session_id: SessionId, staff: CurrentStaff, db_session: DbSession) -> SessionOut:
    """The session's timeline: each reminder with its state and attempts, and the replies."""
    session = actions.get_session(db_session=db_session, session_id=session_id)
    return timeline(db_session, session)


@router.post("/{id}/pause", response_model=SessionOut, responses=responses(404, 409, 422))
def pause_session(
    session_id: SessionId, staff: CurrentStaff, db_session: DbSession, rt: RuntimeDep
) -> SessionOut:
    """Hold every reminder not yet sent (409 unless the session is active)."""
    session = actions.pause_session(
        db_session=db_session, session_id=session_id, actor_id=staff.id, now=rt.clock.now()
    )
    return timeline(db_session, session)


@router.post("/{id}/resume", response_model=SessionOut, responses=responses(404, 409, 422))
def resume_session(
    session_id: SessionId, staff: CurrentStaff, db_session: DbSession, rt: RuntimeDep
) -> SessionOut:
    """Put held reminders back on the schedule, expiring those now too late to be useful
    (409 unless the session is paused)."""
    session = actions.resume_session(
        db_session=db_session,
        session_id=session_id,
        actor_id=staff.id,
        now=rt.clock.now(),
        quiet=rt.quiet,
    )
    return timeline(db_session, session)


@router.post("/{id}/cancel", response_model=SessionOut, responses=responses(404, 409, 422))
def cancel_session(
    session_id: SessionId, staff: CurrentStaff, db_session: DbSession, rt: RuntimeDep
) -> SessionOut:
    """Cancel every reminder not yet sent (409 if the session is already cancelled)."""
    session = actions.cancel_session(
        db_session=db_session, session_id=session_id, actor_id=staff.id, now=rt.clock.now()
    )
    return timeline(db_session, session)


def timeline(db_session: Session, session: TreatmentSession) -> SessionOut:
    """The API's view of one session, read fresh from the database."""
    zone = ZoneInfo(session.timezone)
    attempts = actions.session_attempts(db_session=db_session, session_id=session.id)
    replies = actions.session_replies(db_session=db_session, session_id=session.id)
    return SessionOut(
        id=session.id,
        patient_id=session.patient_id,
        regimen=session.regimen_id,
        regimen_version=session.regimen_version,
        treated_at=iso(session.treated_at),
        recorded_at=iso(session.recorded_at),
        timezone=session.timezone,
        channels=[c for c in session.channels.split(",") if c],
        parameters=dict(session.parameters),
        status=session.status,
        paused_at=iso_or_none(session.paused_at),
        cancelled_at=iso_or_none(session.cancelled_at),
        checkin_answer=session.checkin_answer,
        checkin_outcome=session.checkin_outcome,
        reminders=[
            _reminder(r, zone, attempts.get(r.id, []))
            for r in actions.session_reminders(db_session=db_session, session_id=session.id)
        ],
        replies=[
            ReplyOut(
                id=m.id,
                received_at=iso(m.received_at),
                kind=m.kind,
                checkin_answer=m.checkin_answer,
                body=m.body,
            )
            for m in replies
        ],
    )


def _reminder(r: Reminder, zone: ZoneInfo, attempts: list[DeliveryAttempt]) -> ReminderOut:
    return ReminderOut(
        id=r.id,
        step=r.step,
        occurrence=r.occurrence,
        channel=r.channel,
        template=r.template,
        due_utc=iso(r.due_at),
        due_local=iso(r.due_at.astimezone(zone)),
        state=r.state,
        critical=r.critical,
        reason=r.reason,
        sent_at=iso_or_none(r.sent_at),
        attempts=[
            AttemptOut(
                id=a.id,
                transport=a.transport,
                started_at=iso(a.started_at),
                finished_at=iso_or_none(a.finished_at),
                outcome=a.outcome,
                provider_status=a.provider_status,
                error_code=a.error_code,
                status_updated_at=iso_or_none(a.status_updated_at),
            )
            for a in attempts
        ],
    )
