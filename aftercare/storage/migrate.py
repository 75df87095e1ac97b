"""Run Alembic migrations programmatically (``aftercare migrate``, tests, the embedded default)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from aftercare.storage.db import Database

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def is_current(engine: Engine) -> bool:
    """True when the database is at the newest migration."""
    script = ScriptDirectory.from_config(alembic_config(str(engine.url)))
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
    return set(current) == set(script.get_heads())


class SchemaOutdated(RuntimeError):
    """The database is behind the code: run ``aftercare migrate``."""


def ensure_schema(db: Database, *, auto: bool) -> None:
    """Migrate automatically (embedded SQLite) or refuse to run on an outdated schema."""
    if is_current(db.engine):
        return
    if not auto:
        raise SchemaOutdated("the database schema is not current; run `aftercare migrate` first")
    upgrade(db.url)
