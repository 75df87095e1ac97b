"""What every part of delivery shares: its dependencies, a prepared send, the loads, the logger.

The bottom of :mod:`aftercare.reminders.delivery`: it imports none of its siblings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from aftercare.channels.base import Message, Transport
from aftercare.clock import Clock
from aftercare.messages.render import MessageRenderer
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.reminders.compose import Clinic
from aftercare.reminders.leases import Lease
from aftercare.storage.db import Database
from aftercare.storage.models import Patient, Reminder, TreatmentSession

# One logger for the package, under the name delivery always logged as.
log = logging.getLogger("aftercare.reminders.delivery")

SMS_BLOCKED = "SMS blocked: the number was refused by the provider"


@dataclass
class Deps:
    """What delivery needs; built by the caller from the runtime."""

    db: Database
    clock: Clock
    quiet: QuietHours
    registry: RegimenRegistry
    renderer: MessageRenderer
    clinic: Clinic
    transports: dict[str, Transport]
    # This process's lease, named on every reminder it claims (None: claims name no owner and
    # are taken over only once stale, as in-process callers and tests do).
    lease: Lease | None = None


def load(db_session: Session, reminder_id: int) -> tuple[Reminder, TreatmentSession, Patient]:
    reminder = db_session.get_one(Reminder, reminder_id)
    session = db_session.get_one(TreatmentSession, reminder.session_id)
    patient = db_session.get_one(Patient, session.patient_id)
    return reminder, session, patient


@dataclass
class Prepared:
    reminder_id: int
    attempt_id: int
    attempts: int
    channel: str
    due_at: datetime
    patient_id: int
    message: Message
    # The reminder's updated_at as this worker last set it: its claim on the 'sending' row.
    claimed_at: datetime
    # The lease it was claimed under (Deps.lease).
    owner: str | None = None


def load_many(
    db_session: Session, reminder_ids: Sequence[int]
) -> dict[int, tuple[Reminder, TreatmentSession, Patient]]:
    """The reminders with their sessions and patients, in three queries."""
    reminders = db_session.scalars(select(Reminder).where(Reminder.id.in_(reminder_ids))).all()
    sessions = {
        s.id: s
        for s in db_session.scalars(
            select(TreatmentSession).where(
                TreatmentSession.id.in_({r.session_id for r in reminders})
            )
        )
    }
    patients = {
        p.id: p
        for p in db_session.scalars(
            select(Patient).where(Patient.id.in_({s.patient_id for s in sessions.values()}))
        )
    }
    return {
        r.id: (r, sessions[r.session_id], patients[sessions[r.session_id].patient_id])
        for r in reminders
    }
