"""SMS consent, in one place: a patient's number opted out (STOP, or the provider saying so),
opted back in (START), or blocked because the provider refused it (until staff correct it).

Each applies to every patient with the number, and each change is audited.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from aftercare.audit.service import record as audit
from aftercare.storage.models import Patient


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


def block_sms_number(*, db_session: Session, phone: str, code: str | None, now: datetime) -> None:
    """Stop SMS to ``phone`` for every patient with it, until staff correct the number."""
    patients = db_session.scalars(
        select(Patient).where(
            Patient.phone == phone, Patient.erased_at.is_(None), Patient.sms_blocked_at.is_(None)
        )
    )
    for patient in patients:
        patient.sms_blocked_at = now
        # The code only: a provider's message can quote the number.
        patient.sms_blocked_reason = code
        audit(
            db_session=db_session,
            action="sms_blocked",
            actor_id=None,
            now=now,
            patient_id=patient.id,
            detail={"code": code},
        )
