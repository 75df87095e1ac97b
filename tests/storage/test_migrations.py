"""The migrations build exactly the schema the models declare, on SQLite and PostgreSQL, and the
newest ones go down and up again."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.command import downgrade
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from aftercare.storage.db import Database
from aftercare.storage.migrate import alembic_config, upgrade
from aftercare.storage.models import Base


def _differences(db: Database) -> list[object]:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def _reminder_indexes(db: Database) -> dict[str, list[str | None]]:
    return {
        str(index["name"]): list(index["column_names"])
        for index in inspect(db.engine).get_indexes("reminders")
    }


def test_migrated_database_when_compared_with_the_models_then_nothing_differs(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        assert _differences(db) == []
    finally:
        db.dispose()


def test_reminder_indexes_when_migrated_then_fallbacks_are_indexed_and_session_lookups_use_the_slot(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        indexes = _reminder_indexes(db)
        assert indexes["ix_reminders_fallback_of_id"] == ["fallback_of_id"]
        assert "ix_reminders_session_id" not in indexes
        slot = next(
            u
            for u in inspect(db.engine).get_unique_constraints("reminders")
            if u["name"] == "uq_reminders_slot"
        )
        assert slot["column_names"][0] == "session_id"
    finally:
        db.dispose()


def test_reminder_index_migration_when_downgraded_and_upgraded_then_the_schema_matches_again(
    sqlite_url: str,
) -> None:
    downgrade(alembic_config(sqlite_url), "0003")
    db = Database(sqlite_url)
    try:
        assert "ix_reminders_session_id" in _reminder_indexes(db)
        tables = set(inspect(db.engine).get_table_names())
        assert "login_attempts" in tables
        assert "login_throttle" not in tables
        assert "severity" not in {c["name"] for c in inspect(db.engine).get_columns("flags")}
        assert _differences(db) != []
        upgrade(sqlite_url)
        assert _differences(db) == []
    finally:
        db.dispose()


def test_worker_lease_migration_when_downgraded_and_upgraded_then_the_schema_matches_again(
    database_url: str,
) -> None:
    url = database_url
    downgrade(alembic_config(url), "0004")
    db = Database(url)
    try:
        assert "worker_leases" not in inspect(db.engine).get_table_names()
        assert "claimed_by" not in {c["name"] for c in inspect(db.engine).get_columns("reminders")}
        upgrade(url)
        assert _differences(db) == []
        assert "worker_leases" in inspect(db.engine).get_table_names()
    finally:
        db.dispose()


def test_course_migration_when_upgraded_then_stored_checkin_answers_become_outcomes(
    database_url: str,
) -> None:
    config = alembic_config(database_url)
    downgrade(config, "0004")
    db = Database(database_url)
    try:
        with db.engine.begin() as connection:
            patient = connection.execute(
                text(
                    "INSERT INTO patients (public_id, name, timezone, channels, created_at) "
                    "VALUES ('p1', 'A', 'Europe/London', 'sms', '2026-03-02 10:00:00') "
                    "RETURNING id"
                )
            ).scalar_one()
            for answer in ("1", "2", "3", "free text"):
                connection.execute(
                    text(
                        "INSERT INTO treatment_sessions (patient_id, regimen_id, regimen_version,"
                        " treated_at, recorded_at, timezone, parameters, channels, status,"
                        " consent, contraindications_checked, checkin_answer) VALUES (:p,"
                        " 'micro-sclerotherapy', 1, '2026-03-02 10:00:00', '2026-03-02 10:00:00',"
                        " 'Europe/London', '{}', 'sms', 'completed', true, true, :a)"
                    ),
                    {"p": patient, "a": answer},
                )
        upgrade(database_url)
        with db.engine.connect() as connection:
            outcomes = connection.execute(
                text("SELECT checkin_answer, checkin_outcome FROM treatment_sessions ORDER BY id")
            ).all()
        assert [tuple(row) for row in outcomes] == [
            ("1", "faded"),
            ("2", "fading"),
            ("3", "dark_or_worried"),
            ("free text", None),
        ]
        assert _differences(db) == []
    finally:
        db.dispose()
