"""Store a checked CSV import: the good rows in chunks of a thousand sessions, one transaction
per chunk, so a session is never half stored; patients matched to those already known (or to
an earlier row), their courses settled. Rows go through the bulk writer
(:mod:`aftercare.storage.bulk`): one ORM object per reminder would cost more than planning it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Connection, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from aftercare.regimens.loader import RegimenRegistry
from aftercare.sessions import course
from aftercare.sessions.service import ValidSession, patient_values, session_values
from aftercare.storage import bulk
from aftercare.storage.db import Database
from aftercare.storage.models import AuditEvent, Patient, TreatmentSession

CHUNK_SIZE = 1000

Progress = Callable[[int], None]


class ImportInterrupted(RuntimeError):
    """The database failed while storing; the chunks before ``stored`` sessions are committed."""

    def __init__(self, stored: int, reason: str) -> None:
        super().__init__(reason)
        self.stored = stored
        self.reason = reason


@dataclass(frozen=True)
class GoodRow:
    row: int
    valid: ValidSession


def store(
    good: Sequence[GoodRow],
    *,
    db: Database,
    now: datetime,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
    registry: RegimenRegistry | None = None,
) -> int:
    """Store every good row (patient, session, reminders, audit event), one transaction per
    chunk; the number of sessions stored. Raises ImportInterrupted if the database fails.

    A row for a patient already known (stored before, or in an earlier row: same phone, or
    email when there is none, and name) adds its session to that patient, whose course is then
    settled (a later session supersedes what an earlier one has not sent). ``registry`` names
    the regimens of sessions already stored; by default only the file's own are known."""
    if registry is None:
        registry = RegimenRegistry({g.valid.regimen.id: g.valid.regimen for g in good})
    stored = 0
    for start in range(0, len(good), chunk_size):
        chunk = good[start : start + chunk_size]
        try:
            with db.engine.begin() as connection:
                owners = _owners(connection, chunk)
                _store_chunk(connection, chunk, owners, now=now)
                _settle(connection, chunk, owners, registry=registry, now=now)
        except (SQLAlchemyError, psycopg.Error) as exc:
            # The driver's first line only: SQLAlchemy's own text repeats the parameters, which
            # are patient data.
            cause = getattr(exc, "orig", None) or exc
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise ImportInterrupted(stored, f"{type(cause).__name__}: {first}") from exc
        stored += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return stored


@dataclass
class _Owners:
    """Whose each row of a chunk is: a known patient's id, or the index of a new patient (the
    first row of the chunk for that person creates them)."""

    known: list[int | None]
    new_of: list[int | None]
    new_rows: list[GoodRow]
    # Filled in once the new patients are stored: each row's patient id.
    patient_ids: list[int] = field(default_factory=list)

    def resolve(self, new_ids: Sequence[int]) -> list[int]:
        ids: list[int] = []
        for known, index in zip(self.known, self.new_of, strict=True):
            if known is not None:
                ids.append(known)
            else:
                assert index is not None
                ids.append(new_ids[index])
        self.patient_ids = ids
        return ids


def _person(valid: ValidSession) -> tuple[str, str, str] | None:
    if valid.phone:
        return ("phone", valid.phone, course.name_key(valid.name))
    if valid.email:
        return ("email", valid.email.casefold(), course.name_key(valid.name))
    return None


def _owners(connection: Connection, chunk: Sequence[GoodRow]) -> _Owners:
    """Match each row to a known patient (one query for the chunk), or to the new patient an
    earlier row of the chunk creates."""
    phones = {g.valid.phone for g in chunk if g.valid.phone}
    emails = {g.valid.email.casefold() for g in chunk if not g.valid.phone and g.valid.email}
    stored: dict[tuple[str, str, str], int] = {}
    if phones or emails:
        rows = connection.execute(
            select(Patient.id, Patient.name, Patient.phone, Patient.email)
            .where(
                or_(Patient.phone.in_(phones), func.lower(Patient.email).in_(emails)),
                Patient.erased_at.is_(None),
            )
            .order_by(Patient.id.desc())
        )
        for pid, name, phone, email in rows:
            if phone:
                stored[("phone", phone, course.name_key(name))] = pid
            elif email:
                stored[("email", email.casefold(), course.name_key(name))] = pid
    owners = _Owners(known=[], new_of=[], new_rows=[])
    created: dict[tuple[str, str, str], int] = {}
    for good in chunk:
        person = _person(good.valid)
        if person is not None and person in stored:
            owners.known.append(stored[person])
            owners.new_of.append(None)
        elif person is not None and person in created:
            owners.known.append(None)
            owners.new_of.append(created[person])
        else:
            if person is not None:
                created[person] = len(owners.new_rows)
            owners.known.append(None)
            owners.new_of.append(len(owners.new_rows))
            owners.new_rows.append(good)
    return owners


def _settle(
    connection: Connection,
    chunk: Sequence[GoodRow],
    owners: _Owners,
    *,
    registry: RegimenRegistry,
    now: datetime,
) -> None:
    """Settle the course of every patient with more than one session after this chunk."""
    counts = Counter(owners.patient_ids)
    known = {pid for pid in owners.known if pid is not None}
    for patient_id in sorted(pid for pid, n in counts.items() if n > 1 or pid in known):
        rows = [g for g, pid in zip(chunk, owners.patient_ids, strict=True) if pid == patient_id]
        if patient_id in known:
            _complete_contact(connection, patient_id, rows)
        course.settle_course(connection, patient_id=patient_id, registry=registry, now=now)


def _complete_contact(connection: Connection, patient_id: int, rows: Sequence[GoodRow]) -> None:
    """A known patient gains a contact detail or channel their new sessions need."""
    patient = connection.execute(
        select(Patient.phone, Patient.email, Patient.channels).where(Patient.id == patient_id)
    ).one()
    chosen = [c for c in patient.channels.split(",") if c]
    for good in rows:
        chosen += [c for c in good.valid.channels if c not in chosen]
    values: dict[str, Any] = {"channels": ",".join(chosen)}
    if patient.phone is None:
        values["phone"] = next((g.valid.phone for g in rows if g.valid.phone), None)
    if patient.email is None:
        values["email"] = next((g.valid.email for g in rows if g.valid.email), None)
    connection.execute(update(Patient).where(Patient.id == patient_id).values(**values))


def _audit_values(
    good: GoodRow, patient_id: int, session_id: int, now: datetime, *, matched: bool
) -> dict[str, Any]:
    return {
        "at": now,
        "actor_id": None,
        "action": "import",
        "patient_id": patient_id,
        "session_id": session_id,
        "detail": {
            "regimen": good.valid.regimen.id,
            "channels": list(good.valid.channels),
            "row": good.row,
            "matched_existing": matched,
        },
    }


def _store_chunk(
    connection: Connection, chunk: Sequence[GoodRow], owners: _Owners, *, now: datetime
) -> None:
    """The chunk's new patients, sessions, reminders and audit events, through the bulk writer
    (binary COPY on PostgreSQL, multi-row INSERTs elsewhere)."""
    new_ids = bulk.insert_rows(
        connection, Patient, [patient_values(good.valid, now) for good in owners.new_rows], ids=True
    )
    patient_ids = owners.resolve(new_ids)
    session_ids = bulk.insert_rows(
        connection,
        TreatmentSession,
        [
            session_values(good.valid, patient_id, now)
            for good, patient_id in zip(chunk, patient_ids, strict=True)
        ],
        ids=True,
    )
    bulk.add_reminders(
        connection,
        (
            (session_id, good.valid.plan)
            for session_id, good in zip(session_ids, chunk, strict=True)
        ),
        now,
    )
    bulk.insert_rows(
        connection,
        AuditEvent,
        [
            _audit_values(good, patient_id, session_id, now, matched=known is not None)
            for good, patient_id, session_id, known in zip(
                chunk, patient_ids, session_ids, owners.known, strict=True
            )
        ],
        ids=False,
    )
