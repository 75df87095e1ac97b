"""Data retention: anonymise patients whose regimen ended longer ago than the retention period.

A patient's regimen ended at the due time of the last reminder of their last session (the
service stores every planned reminder with its session, so that is the end of the plan; a
session with no reminders ended at its treatment time, a patient with no session when the row
was created). Once that is more than ``AFTERCARE_RETENTION_DAYS`` ago, the daily
``aftercare.retention`` task erases the patient's personal data with the same function staff
use (:func:`aftercare.patients.service.erase_patient`), audited as ``retention_erase`` with no
actor. Erased patients are never picked again, so a second run changes nothing. The policy and
its reasons are in docs/retention.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from sqlalchemy import ColumnElement, Subquery, func, select
from sqlalchemy.orm import Session

from aftercare.patients import forget
from aftercare.patients.service import erase_patient
from aftercare.storage.db import Database
from aftercare.storage.models import Patient, Reminder, TreatmentSession

ACTION: Final = "retention_erase"
# Patients looked up per query; each one is then erased in its own short transaction.
BATCH: Final = 200


def _ended_by_patient() -> Subquery:
    """``(patient_id, ended_at)``: when each patient's last session's last reminder was due."""
    per_session = (
        select(
            TreatmentSession.patient_id.label("patient_id"),
            func.coalesce(func.max(Reminder.due_at), TreatmentSession.treated_at).label("ended_at"),
        )
        .outerjoin(Reminder, Reminder.session_id == TreatmentSession.id)
        .group_by(TreatmentSession.id, TreatmentSession.patient_id, TreatmentSession.treated_at)
        .subquery()
    )
    return (
        select(per_session.c.patient_id, func.max(per_session.c.ended_at).label("ended_at"))
        .group_by(per_session.c.patient_id)
        .subquery()
    )


def _expired(ended: Subquery, cutoff: datetime) -> ColumnElement[bool]:
    return func.coalesce(ended.c.ended_at, Patient.created_at) < cutoff


def expired_patient_ids(
    *, db_session: Session, cutoff: datetime, after_id: int = 0, limit: int = BATCH
) -> list[int]:
    """Ids of patients not yet erased whose regimen ended before ``cutoff``, in id order."""
    ended = _ended_by_patient()
    query = (
        select(Patient.id)
        .outerjoin(ended, ended.c.patient_id == Patient.id)
        .where(Patient.erased_at.is_(None), Patient.id > after_id, _expired(ended, cutoff))
        .order_by(Patient.id)
        .limit(limit)
    )
    return list(db_session.scalars(query))


def _still_expired(db_session: Session, patient_id: int, cutoff: datetime) -> bool:
    """Checked again under the patient's row lock, in the transaction that erases them."""
    patient = db_session.get(Patient, patient_id, with_for_update=True)
    if patient is None or patient.erased_at is not None:
        return False
    ended = _ended_by_patient()
    query = (
        select(Patient.id)
        .outerjoin(ended, ended.c.patient_id == Patient.id)
        .where(Patient.id == patient_id, _expired(ended, cutoff))
    )
    return db_session.scalar(query) is not None


def anonymise_expired(
    *, db: Database, now: datetime, retention_days: int, outbox_dir: Path | None = None
) -> dict[str, int]:
    """Erase every patient whose regimen ended more than ``retention_days`` before ``now``.

    One transaction per patient, so a failure leaves the others done and the next run picks up
    the rest. After each batch the erased patients' messages leave ``outbox_dir`` and SQLite's
    WAL is emptied (:mod:`aftercare.patients.forget`). Returns ``{"erased": n, "skipped": m}``
    (skipped: erased or changed meanwhile).
    """
    cutoff = now - timedelta(days=retention_days)
    erased = skipped = 0
    last_id = 0
    while True:
        with db.session() as db_session:
            batch = expired_patient_ids(db_session=db_session, cutoff=cutoff, after_id=last_id)
        if not batch:
            return {"erased": erased, "skipped": skipped, "retention_days": retention_days}
        keys: list[str] = []
        for patient_id in batch:
            with db.session() as db_session:
                if not _still_expired(db_session, patient_id, cutoff):
                    skipped += 1
                    continue
                erase_patient(
                    db_session=db_session,
                    patient_id=patient_id,
                    actor_id=None,
                    now=now,
                    action=ACTION,
                )
                keys += forget.message_keys(db_session=db_session, patient_ids=[patient_id])
                erased += 1
        if keys:
            forget.forget_copies(db=db, outbox_dir=outbox_dir, keys=keys)
        last_id = batch[-1]
