"""``/api/v1/patients``: read, fix contact details (re-planning the future), erase."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from aftercare.patients import forget
from aftercare.patients import service as patient_service
from aftercare.storage.models import Patient
from aftercare.web.api.auth import CurrentStaff
from aftercare.web.api.errors import ApiRoute, responses
from aftercare.web.api.schemas import PatientOut, PatientPatch, PatientSessionOut, iso, iso_or_none
from aftercare.web.deps import DbSession, RuntimeDep

router = APIRouter(prefix="/patients", tags=["patients"], route_class=ApiRoute)

PatientId = Annotated[int, Path(alias="id", ge=1, le=2**31 - 1, description="The patient's id.")]


@router.get("/{id}", response_model=PatientOut, responses=responses(404, 422))
def read_patient(patient_id: PatientId, staff: CurrentStaff, db_session: DbSession) -> PatientOut:
    """The patient's details, opt-outs and sessions."""
    patient = patient_service.get_patient(db_session=db_session, patient_id=patient_id)
    return patient_out(db_session, patient)


@router.patch("/{id}", response_model=PatientOut, responses=responses(404, 409, 422))
def update_patient(
    patient_id: PatientId,
    body: PatientPatch,
    staff: CurrentStaff,
    db_session: DbSession,
    rt: RuntimeDep,
) -> PatientOut:
    """Fix name, phone, email, time zone or channels (only the fields given). A new zone or
    channel choice re-plans future reminders; those already sent are untouched."""
    patient = patient_service.update_patient(
        db_session=db_session,
        patient_id=patient_id,
        changes=body.model_dump(include=body.model_fields_set),
        actor_id=staff.id,
        now=rt.clock.now(),
        registry=rt.registry,
        quiet=rt.quiet,
    )
    return patient_out(db_session, patient)


@router.delete(
    "/{id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(404, 409, 422),
)
def erase_patient(
    patient_id: PatientId, staff: CurrentStaff, db_session: DbSession, rt: RuntimeDep
) -> Response:
    """Erase the patient's personal data and cancel what was still to be sent (409 if already
    erased). An anonymous audit record is kept."""
    patient_service.erase_patient(
        db_session=db_session, patient_id=patient_id, actor_id=staff.id, now=rt.clock.now()
    )
    keys = forget.message_keys(db_session=db_session, patient_ids=[patient_id])
    # Runs once the erasure has committed (the session dependency commits before the answer).
    after = BackgroundTask(
        forget.forget_copies, db=rt.db, outbox_dir=rt.settings.outbox_dir, keys=keys
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT, background=after)


def patient_out(db_session: Session, patient: Patient) -> PatientOut:
    sessions = patient_service.patient_sessions(db_session=db_session, patient_id=patient.id)
    return PatientOut(
        id=patient.id,
        name=patient.name,
        phone=patient.phone,
        email=patient.email,
        timezone=patient.timezone,
        channels=patient.channel_list,
        created_at=iso(patient.created_at),
        sms_opted_out_at=iso_or_none(patient.sms_opted_out_at),
        email_opted_out_at=iso_or_none(patient.email_opted_out_at),
        sms_blocked_at=iso_or_none(patient.sms_blocked_at),
        erased_at=iso_or_none(patient.erased_at),
        sessions=[
            PatientSessionOut(
                id=s.id,
                regimen=s.regimen_id,
                treated_at=iso(s.treated_at),
                status=s.status,
                checkin_answer=s.checkin_answer,
                checkin_outcome=s.checkin_outcome,
            )
            for s in sessions
        ],
    )
