"""Unsubscribing a patient from email through the link in every email.

The signed token is the credential: it names only the patient's random ``public_id`` and cannot
be forged without ``AFTERCARE_SECRET_KEY``. Only email stops; SMS has its own opt-out (STOP).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from aftercare.audit import service as audit
from aftercare.security import verify
from aftercare.storage.models import Patient


def patient_for_token(*, db_session: Session, token: str, secret: str) -> Patient | None:
    """The patient a valid unsubscribe token names; None when forged, unknown or erased.

    All three look the same to the caller, so the answer reveals nothing about who exists.
    """
    public_id = verify(token, secret=secret)
    if public_id is None:
        return None
    patient = db_session.scalars(
        select(Patient).where(Patient.public_id == public_id)
    ).one_or_none()
    if patient is None or patient.erased_at is not None:
        return None
    return patient


def unsubscribe_email(
    *, db_session: Session, patient_id: int, now: datetime, source: str = "link"
) -> bool:
    """Stop email to this patient. True if this call changed anything; a repeat is harmless.

    A conditional UPDATE, so two clicks racing each other record one unsubscribe, not two.
    """
    changed = db_session.execute(
        update(Patient)
        .where(Patient.id == patient_id, Patient.email_opted_out_at.is_(None))
        .values(email_opted_out_at=now)
        .returning(Patient.id)
    ).first()
    if changed is None:
        return False
    audit.record(
        db_session=db_session,
        action="email_unsubscribe",
        actor_id=None,
        now=now,
        patient_id=patient_id,
        detail={"source": source},
    )
    return True
