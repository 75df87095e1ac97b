"""What erasure does once its transaction has committed: the copies outside the rows go too.

Erasure (:func:`aftercare.patients.service.erase_patient`) overwrites the patient's rows. Two
copies remain on the embedded default: the outbox's file of every message sent to them, and,
on SQLite, earlier versions of the overwritten pages in the write-ahead log (the database runs
with ``secure_delete``, so the pages themselves keep no trace). Both are removed here, after the
commit, so that a rolled-back erasure loses nothing. PostgreSQL keeps dead row versions until
VACUUM; docs/retention.md says what an operator does about that.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from aftercare.channels.outbox import forget_messages
from aftercare.reminders.compose import message_key
from aftercare.storage.db import Database
from aftercare.storage.models import Reminder, TreatmentSession

log = logging.getLogger(__name__)


def message_keys(*, db_session: Session, patient_ids: list[int]) -> list[str]:
    """The idempotency keys of every message planned for these patients."""
    reminder_ids = db_session.scalars(
        select(Reminder.id)
        .join(TreatmentSession, TreatmentSession.id == Reminder.session_id)
        .where(TreatmentSession.patient_id.in_(patient_ids))
    )
    return [message_key(reminder_id) for reminder_id in reminder_ids]


def forget_copies(*, db: Database, outbox_dir: Path | None, keys: list[str]) -> None:
    """Delete these messages from the outbox and empty SQLite's WAL (after an erasure)."""
    removed = forget_messages(outbox_dir, keys) if outbox_dir is not None else 0
    complete = db.truncate_wal()
    log.info("erasure copies removed", extra={"outbox_files": removed, "wal_truncated": complete})
    if not complete:
        # A long reader kept the WAL: the next erasure or retention run truncates it.
        log.warning("wal checkpoint incomplete after erasure")
