"""The migrations build exactly the schema the models declare, on SQLite and PostgreSQL, and the
newest one goes down and up again."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.command import downgrade
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

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


def test_newest_migration_when_downgraded_and_upgraded_then_the_schema_matches_again(
    sqlite_url: str,
) -> None:
    downgrade(alembic_config(sqlite_url), "-1")
    db = Database(sqlite_url)
    try:
        assert "severity" not in {c["name"] for c in inspect(db.engine).get_columns("flags")}
        assert _differences(db) != []
        upgrade(sqlite_url)
        assert _differences(db) == []
    finally:
        db.dispose()
