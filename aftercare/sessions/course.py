"""A course of treatment: one patient across sessions, and a later session superseding the plan
of an earlier one.

* **Who is already known.** A session is for a known patient when one (not erased) has the same
  phone, or the same email when there is no phone, and the same name ignoring case and spacing.
  A relative sharing the phone under another name is someone else.
* **Superseding.** Which steps a later session replaces, and which regimens count as "the same",
  is the regimen's data (``course:`` in its YAML file). Each session's unsent reminders of those
  steps are ``superseded`` by the next later session of the same regimen, with a reason naming
  it. Settling is idempotent and order-free: recording sessions in any order (a late enrolment
  of an older session included) ends in the same states, and nothing superseded comes back.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, or_, select, update

from aftercare.regimens.loader import RegimenRegistry
from aftercare.regimens.model import Regimen
from aftercare.reminders import states
from aftercare.storage.models import Patient, Reminder, TreatmentSession

# The check-in answer ("1", "2", "3") as a session's outcome.
OUTCOMES: Final = {"1": "faded", "2": "fading", "3": "dark_or_worried"}
OUTCOME_LABELS: Final = {
    "faded": "Faded well",
    "fading": "Still fading",
    "dark_or_worried": "Still dark, painful or worried",
}
# Only these are replaced: a reminder already handed to a provider is history.
SUPERSEDABLE: Final = (states.SCHEDULED, states.QUEUED, states.PAUSED)
# A cancelled session (recorded by mistake, say) supersedes nothing.
SUPERSEDING_STATUSES: Final = frozenset({"active", "paused", "completed"})


def checkin_outcome(answer: str | None) -> str | None:
    """The outcome a check-in answer gives, or None for an answer that is not one of 1, 2, 3."""
    return OUTCOMES.get(answer or "")


def name_key(name: str) -> str:
    """A name as matching compares it: case and spacing ignored ("Sam  LEE" is "sam lee")."""
    return "".join(unicodedata.normalize("NFKC", name).split()).casefold()


def find_known_patient(
    connection: Connection, *, name: str, phone: str | None, email: str | None
) -> int | None:
    """The id of the patient this is, by phone (or email when there is no phone) and name;
    None for someone new. Erased patients are never matched."""
    if phone:
        same_contact = Patient.phone == phone
    elif email:
        same_contact = func.lower(Patient.email) == email.casefold()
    else:
        return None
    wanted = name_key(name)
    rows = connection.execute(
        select(Patient.id, Patient.name)
        .where(same_contact, Patient.erased_at.is_(None))
        .order_by(Patient.id)
    )
    return next((pid for pid, pname in rows if name_key(pname) == wanted), None)


@dataclass(frozen=True)
class PossibleMatch:
    """A known patient the staff form offers before saving, and why."""

    patient: Patient
    reasons: tuple[str, ...]
    exact: bool
    sessions: int
    last_treated_at: datetime | None


def possible_matches(
    connection: Connection,
    *,
    name: str,
    phone: str | None,
    email: str | None,
    limit: int = 8,
) -> list[PossibleMatch]:
    """Known patients with the same phone or email, or the same name: the exact match (as
    :func:`find_known_patient` would choose) first."""
    wanted = name_key(name) if name.strip() else ""
    conditions = []
    if phone:
        conditions.append(Patient.phone == phone)
    if email:
        conditions.append(func.lower(Patient.email) == email.casefold())
    if wanted:
        conditions.append(func.lower(Patient.name) == " ".join(name.split()).lower())
    if not conditions:
        return []
    patients = [
        Patient(**dict(row._mapping))
        for row in connection.execute(
            select(*Patient.__table__.columns)
            .where(or_(*conditions), Patient.erased_at.is_(None))
            .order_by(Patient.id.desc())
            .limit(limit * 4)
        )
    ]
    exact_id = find_known_patient(connection, name=name, phone=phone, email=email)
    ids = [p.id for p in patients]
    history = {
        pid: (count, last)
        for pid, count, last in connection.execute(
            select(
                TreatmentSession.patient_id,
                func.count(),
                func.max(TreatmentSession.treated_at),
            )
            .where(TreatmentSession.patient_id.in_(ids))
            .group_by(TreatmentSession.patient_id)
        )
    }
    found: list[PossibleMatch] = []
    for patient in patients:
        reasons = []
        if phone and patient.phone == phone:
            reasons.append("same phone")
        if email and patient.email and patient.email.casefold() == email.casefold():
            reasons.append("same email")
        if wanted and name_key(patient.name) == wanted:
            reasons.append("same name")
        count, last = history.get(patient.id, (0, None))
        found.append(PossibleMatch(patient, tuple(reasons), patient.id == exact_id, count, last))
    found.sort(key=lambda m: (not m.exact, -len(m.reasons), -m.patient.id))
    return found[:limit]


# Superseding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CourseSession:
    """What superseding needs of a stored session."""

    id: int
    regimen_id: str
    treated_at: datetime
    timezone: str
    status: str


@dataclass(frozen=True)
class Supersession:
    """``session_id``'s unsent reminders of ``steps`` are replaced by session ``by``."""

    session_id: int
    by: CourseSession
    steps: frozenset[str]

    @property
    def reason(self) -> str:
        return superseded_reason(self.by)


def superseded_reason(by: CourseSession) -> str:
    treated = by.treated_at.astimezone(ZoneInfo(by.timezone))
    return f"superseded by session {by.id} (treated {treated.day} {treated:%b %Y})"


def _regimen(registry: RegimenRegistry, regimen_id: str) -> Regimen | None:
    try:
        return registry.get(regimen_id)
    except KeyError:
        return None


def supersessions(
    sessions: Sequence[CourseSession], registry: RegimenRegistry
) -> list[Supersession]:
    """For each session, the next later live session of the same regimen, if any (pure)."""
    ordered = sorted(sessions, key=lambda s: (s.treated_at, s.id))
    out: list[Supersession] = []
    for index, earlier in enumerate(ordered):
        regimen = _regimen(registry, earlier.regimen_id)
        if regimen is None:
            continue
        for later in ordered[index + 1 :]:
            steps = regimen.superseded_by(later.regimen_id)
            if steps and later.status in SUPERSEDING_STATUSES:
                out.append(Supersession(earlier.id, later, steps))
                break
    return out


def course_sessions(connection: Connection, patient_id: int) -> list[CourseSession]:
    rows = connection.execute(
        select(
            TreatmentSession.id,
            TreatmentSession.regimen_id,
            TreatmentSession.treated_at,
            TreatmentSession.timezone,
            TreatmentSession.status,
        ).where(TreatmentSession.patient_id == patient_id)
    )
    return [CourseSession(*row) for row in rows]


def settle_course(
    connection: Connection, *, patient_id: int, registry: RegimenRegistry, now: datetime
) -> dict[int, int]:
    """Supersede what each of the patient's sessions has not yet sent and a later session of the
    same regimen replaces; {earlier session id: reminders superseded now}. No commit.

    Each UPDATE is guarded on the reminder's state, as every transition is: a reminder a worker
    has already moved to ``sending`` goes out; one still ``queued`` does not, because the
    worker's own ``queued -> sending`` then finds it superseded.
    """
    moved: dict[int, int] = {}
    for item in supersessions(course_sessions(connection, patient_id), registry):
        result = connection.execute(
            update(Reminder)
            .where(
                Reminder.session_id == item.session_id,
                Reminder.step.in_(sorted(item.steps)),
                Reminder.state.in_(SUPERSEDABLE),
            )
            .values(state=states.SUPERSEDED, reason=item.reason, updated_at=now)
            .returning(Reminder.id)
        )
        count = len(result.all())
        if count:
            moved[item.session_id] = count
    return moved


NEW_ID: Final = 2**62


@dataclass(frozen=True)
class Replaced:
    """What recording a session would supersede, for the preview before saving."""

    session: CourseSession
    reminders: int
    # True: the new session replaces ``reminders`` of this one; False: the new session is the
    # older one, and this later session replaces the new session's plan.
    by_new: bool


def preview_replacements(
    connection: Connection,
    *,
    patient_id: int,
    regimen_id: str,
    treated_at: datetime,
    registry: RegimenRegistry,
) -> list[Replaced]:
    """What a new session of ``regimen_id`` at ``treated_at`` would replace (nothing stored)."""
    known = course_sessions(connection, patient_id)
    # The new session sorts after one stored at the same instant, as it will once stored.
    new = CourseSession(NEW_ID, regimen_id, treated_at, "UTC", "active")
    by_id = {s.id: s for s in known}
    out: list[Replaced] = []
    for link in supersessions([*known, new], registry):
        if link.by.id == NEW_ID:
            pending = connection.scalar(
                select(func.count()).where(
                    Reminder.session_id == link.session_id,
                    Reminder.step.in_(sorted(link.steps)),
                    Reminder.state.in_(SUPERSEDABLE),
                )
            )
            if pending:
                out.append(Replaced(by_id[link.session_id], int(pending), by_new=True))
        elif link.session_id == NEW_ID:
            out.append(Replaced(link.by, 0, by_new=False))
    return out
