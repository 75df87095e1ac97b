"""What record_session stores on its fast paths (on PostgreSQL the new patient and the session
in one statement on the driver's cursor, the reminders by binary COPY): the same rows as
anywhere else, whatever the connection's time zone, and under an existing patient when given."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError, StatementError

from aftercare.runtime import Runtime
from aftercare.sessions.service import (
    SessionRequest,
    patient_values,
    record_session,
    session_values,
    validate_request,
)
from aftercare.storage.db import Database
from aftercare.storage.models import Base, Patient, Reminder, TreatmentSession
from aftercare.storage.rows import reminder_rows
from tests.conftest import _truncate, make_settings

NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)


def _request(number: str, *, treated_at: datetime = NOW) -> SessionRequest:
    return SessionRequest(
        name="Jane Doe",
        phone=f"07911 {number}",
        email=f"jane{number}@example.org",
        timezone="Europe/London",
        channels=["sms", "email"],
        treated_at=treated_at.isoformat(),
    )


@pytest.fixture
def tokyo_db(pg_url: str) -> Iterator[Database]:
    """PostgreSQL connections whose session time zone is not UTC (emptied after)."""
    db = Database(pg_url, connect_args={"options": "-c TimeZone=Asia/Tokyo"})
    yield db
    _truncate(db)
    db.dispose()


def test_times_are_stored_as_utc_whatever_the_connection_time_zone(
    tokyo_db: Database, tmp_path: Path
) -> None:
    rt = Runtime(make_settings(tmp_path))
    treated = NOW - timedelta(days=2)
    valid = validate_request(
        _request("700001", treated_at=treated), registry=rt.registry, quiet=rt.quiet, now=NOW
    )
    with tokyo_db.session() as db_session:
        session_id = record_session(db_session=db_session, valid=valid, now=NOW).id

    with tokyo_db.session() as db_session:
        session = db_session.get_one(TreatmentSession, session_id)
        assert (session.treated_at, session.recorded_at) == (treated, NOW)
        assert session.patient.created_at == NOW
        stored = {
            (r.step, r.occurrence, r.channel): (r.nominal_at, r.due_at, r.expires_at, r.updated_at)
            for r in db_session.scalars(select(Reminder).where(Reminder.session_id == session_id))
        }
    assert stored == {
        (p.step, p.occurrence, p.channel): (p.nominal_utc, p.due_utc, p.expires_utc, NOW)
        for p in valid.plan
    }


def test_a_session_for_an_existing_patient_is_stored_under_that_patient(
    runtime: Runtime,
) -> None:
    rt = runtime
    first = validate_request(_request("700002"), registry=rt.registry, quiet=rt.quiet, now=NOW)
    with rt.db.session() as db_session:
        patient_id = record_session(db_session=db_session, valid=first, now=NOW).patient_id
    second = validate_request(
        _request("700002", treated_at=NOW + timedelta(hours=1)),
        registry=rt.registry,
        quiet=rt.quiet,
        now=NOW + timedelta(hours=1),
    )

    with rt.db.session() as db_session:
        patient = db_session.get_one(Patient, patient_id)
        session = record_session(
            db_session=db_session, valid=second, now=NOW + timedelta(hours=1), patient=patient
        )
        assert session.patient_id == patient_id
        assert session.patient is patient

    with rt.db.session() as db_session:
        assert db_session.scalar(select(func.count()).select_from(Patient)) == 1
        sessions = db_session.scalars(select(TreatmentSession).order_by(TreatmentSession.id))
        assert [(s.patient_id, s.treated_at) for s in sessions] == [
            (patient_id, NOW),
            (patient_id, NOW + timedelta(hours=1)),
        ]
        assert db_session.scalar(
            select(func.count()).where(Reminder.session_id == session.id)
        ) == len(second.plan)


def test_a_naive_time_is_refused_as_the_utc_columns_refuse_it(runtime: Runtime) -> None:
    rt = runtime
    valid = validate_request(_request("700003"), registry=rt.registry, quiet=rt.quiet, now=NOW)
    # Core wraps the column type's ValueError in a StatementError; the PostgreSQL path raises it.
    with (
        pytest.raises((ValueError, StatementError), match="naive datetime"),
        rt.db.session() as db_session,
    ):
        record_session(db_session=db_session, valid=valid, now=NOW.replace(tzinfo=None))
    with rt.db.session() as db_session:
        assert db_session.scalar(select(func.count()).select_from(TreatmentSession)) == 0


def test_on_sqlite_rows_are_stored_exactly_as_core_inserts_them(sqlite_url: str) -> None:
    """record_session binds SQLite's rows itself; the stored text (dates as written, JSON,
    booleans, NULLs) is what Core's INSERTs of ``patient_values``, ``session_values`` and
    ``reminder_rows`` write."""
    rt = Runtime(make_settings(Path(sqlite_url.split("///", 1)[1]).parent, database_url=sqlite_url))
    recorded = NOW + timedelta(microseconds=123)
    valid = validate_request(
        _request("700004", treated_at=NOW - timedelta(days=5)),
        registry=rt.registry,
        quiet=rt.quiet,
        now=recorded,
    )
    assert {"scheduled", "skipped"} <= {p.state for p in valid.plan}
    with rt.db.session() as db_session:
        ours = record_session(db_session=db_session, valid=valid, now=recorded).id
        patient = db_session.execute(
            insert(Patient).returning(Patient.id), patient_values(valid, recorded)
        ).scalar_one()
        other = db_session.execute(
            insert(TreatmentSession).returning(TreatmentSession.id),
            session_values(valid, patient, recorded),
        ).scalar_one()
        db_session.execute(insert(Reminder), reminder_rows(other, valid.plan, recorded))

    columns = [c.name for c in Reminder.__table__.columns if c.name not in ("id", "session_id")]
    listed = ", ".join(f"{c}, typeof({c})" for c in columns)
    with rt.db.engine.connect() as conn:
        stored = {
            session_id: conn.exec_driver_sql(
                f"SELECT {listed} FROM reminders WHERE session_id = ? ORDER BY id",
                (session_id,),
            ).all()
            for session_id in (ours, other)
        }
        sessions = conn.exec_driver_sql(_typed("treatment_sessions", "patient_id")).all()
        patients = conn.exec_driver_sql(_typed("patients", "public_id")).all()
    rt.db.dispose()
    assert len(stored[ours]) == len(valid.plan)
    assert stored[ours] == stored[other]
    assert len(sessions) == len(patients) == 2
    assert sessions[0] == sessions[1]
    assert patients[0] == patients[1]


def _typed(table: str, *but: str) -> str:
    """Every column's stored value and SQLite type, but the ids and ``but``."""
    names = [c.name for c in Base.metadata.tables[table].columns if c.name not in ("id", *but)]
    return f"SELECT {', '.join(f'{c}, typeof({c})' for c in names)} FROM {table} ORDER BY id"


def test_a_row_the_database_refuses_raises_sqlalchemys_error_and_stores_nothing(
    runtime: Runtime,
) -> None:
    """The rows go through the driver's cursor, but a refusal surfaces as it does for Core
    statements: here a session created by a staff user who does not exist."""
    rt = runtime
    valid = validate_request(_request("700005"), registry=rt.registry, quiet=rt.quiet, now=NOW)
    with pytest.raises(IntegrityError), rt.db.session() as db_session:
        record_session(db_session=db_session, valid=valid, now=NOW, created_by_id=987654)
    with rt.db.session() as db_session:
        assert db_session.scalar(select(func.count()).select_from(Patient)) == 0
        assert db_session.scalar(select(func.count()).select_from(TreatmentSession)) == 0
