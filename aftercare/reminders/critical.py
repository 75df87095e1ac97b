"""A safety-critical message that failed: an urgent flag, so staff reach the patient another way.

"Critical" is what the regimen declares (``critical: true`` on a step, copied onto each of its
reminders when the session is planned), never a step id in code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from aftercare.flags.service import raise_flag
from aftercare.storage.models import Flag, Reminder

KIND: Final = "critical_undelivered"


def flag_critical_failure(
    db_session: Session, *, reminder: Reminder, patient_id: int, detail: str, now: datetime
) -> Flag | None:
    """Raise an urgent flag (no commit) for a critical reminder that failed or was reported
    undelivered, once per reminder. ``detail`` says what happened (no patient data)."""
    if not reminder.critical:
        return None
    already = db_session.scalar(
        select(exists().where(Flag.kind == KIND, Flag.reminder_id == reminder.id))
    )
    if already:
        return None
    return raise_flag(
        db_session,
        kind=KIND,
        patient_id=patient_id,
        session_id=reminder.session_id,
        reminder_id=reminder.id,
        text=(
            f"A safety-critical message ('{reminder.step}') did not reach the patient. {detail} "
            "Call the patient today to make sure they have this advice."
        ),
        now=now,
    )
