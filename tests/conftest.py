"""Shared fixtures: real SQLite and PostgreSQL databases, a real Redis database, runtimes.

PostgreSQL and Redis are required. When they cannot be reached the tests that need them
*fail* (never skip), unless AFTERCARE_TEST_ALLOW_SKIP=1 is set explicitly on a laptop.
Each run gets its own PostgreSQL database and its own Redis database number, so runs on the
same machine never collide.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Connection, text
from sqlalchemy.orm import sessionmaker

from aftercare.clock import FixedClock
from aftercare.runtime import Runtime, set_runtime
from aftercare.settings import Settings
from aftercare.storage.db import Database
from aftercare.storage.migrate import upgrade
from aftercare.storage.models import Base

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "AFTERCARE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AFTERCARE_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_LOCK = "aftercare:test-run-lock"
TEST_SECRET = "test-secret-key-not-for-production-0123456789"

pytest_plugins = ["tests.stacks", "tests.safety_evidence"]


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is required for this test and cannot be reached: {exc}"
    if os.environ.get("AFTERCARE_TEST_ALLOW_SKIP") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run; dropped at the end."""
    name = f"aftercare_t_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        _unavailable("PostgreSQL", exc)
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    upgrade(url)
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number that no other test run is using (claimed with a lock key)."""
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS_URL}/{number}")
        if client.set(REDIS_LOCK, token, nx=True, ex=3600):
            client.flushdb()
            client.set(REDIS_LOCK, token, ex=3600)
            yield number
            client.flushdb()
            return
    pytest.fail("no free Redis database number (1-15) for this test run")


@pytest.fixture(scope="session")
def rabbit_url() -> Iterator[str]:
    """A private RabbitMQ virtual host for this run (created with rabbitmqctl, deleted after)."""
    import shutil
    import subprocess

    vhost = f"aftercare_t_{os.getpid()}_{secrets.token_hex(3)}"
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"

    def run(*args: str) -> None:
        subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)

    try:
        run("add_vhost", vhost)
        run("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError) as exc:
        _unavailable("RabbitMQ", exc)
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    run("delete_vhost", vhost)


@pytest.fixture
def redis_url(redis_db: int) -> str:
    """The run's Redis database, emptied before each test (the run lock is kept)."""
    client = redis.Redis.from_url(f"{REDIS_URL}/{redis_db}")
    lock = client.get(REDIS_LOCK)
    client.flushdb()
    if lock:
        client.set(REDIS_LOCK, lock, ex=3600)
    return f"{REDIS_URL}/{redis_db}"


def _truncate(db: Database) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with db.engine.begin() as conn:
        if db.is_postgres:
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))


def _restart_if_empty(db: Database) -> bool:
    """PostgreSQL after a rolled-back test: if no table has a row (nothing was committed), the
    sequences a rollback leaves advanced start again at 1, as TRUNCATE's RESTART IDENTITY does
    (tests may name ``/patients/1``); False (nothing done) if something was committed."""
    tables = [t.name for t in Base.metadata.sorted_tables]
    query = " UNION ALL ".join(f"SELECT 1 FROM (SELECT 1 FROM {t} LIMIT 1) AS {t}" for t in tables)
    with db.engine.begin() as conn:
        if conn.execute(text(query)).first() is not None:
            return False
        conn.execute(text("SELECT setval(oid, 1, false) FROM pg_class WHERE relkind = 'S'"))
    return True


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, built once per run; each test gets a copy (the migrations take
    seconds, a copy a millisecond)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "aftercare.sqlite3"
    upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:  # everything in the file itself, none in its WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh, migrated SQLite database of this test's own (a copy of the run's template)."""
    path = tmp_path / "aftercare.sqlite3"
    shutil.copyfile(sqlite_template, path)
    path.chmod(0o600)
    return f"sqlite:///{path}"


def _rolls_back(request: pytest.FixtureRequest) -> bool:
    """The test opted in to a rolled-back transaction (``rollback``) and not out (``commits``)."""
    node = request.node
    return (
        node.get_closest_marker("rollback") is not None
        and node.get_closest_marker("commits") is None
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs twice: on SQLite and on PostgreSQL.

    PostgreSQL is emptied after the test with TRUNCATE, unless the test's ``runtime`` ran in
    one transaction rolled back at the end (``@pytest.mark.rollback``) and left nothing."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
        return
    url = request.getfixturevalue("pg_url")
    yield url
    db = Database(url)
    # A rolled-back test that also committed (another connection, a thread, a process) is
    # caught here and emptied as any other.
    if not (_rolls_back(request) and _restart_if_empty(db)):
        _truncate(db)
    db.dispose()


class RolledBackDatabase(Database):
    """A Database whose sessions all join one transaction on one connection, rolled back when
    the test ends (SQLAlchemy's "joining a session into an external transaction": each
    ``session.begin()`` of the code is a SAVEPOINT, its commit a RELEASE).

    Only for in-process code that goes through :meth:`Database.session`: rows it writes are
    invisible to other connections (``engine.begin()``, the PostgreSQL fast path of
    ``record_sent``, another thread's pool connection, a worker process). Tests that need those
    keep the default (TRUNCATE after) or say ``@pytest.mark.commits``.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.connection: Connection = self.engine.connect()
        self.outer = self.connection.begin()
        self.sessionmaker = sessionmaker(
            bind=self.connection,
            expire_on_commit=False,
            join_transaction_mode="create_savepoint",
        )

    def dispose(self) -> None:
        if self.outer.is_active:
            self.outer.rollback()
        self.connection.close()
        super().dispose()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "sms_transport": "outbox",
        "email_transport": "outbox",
        "secret_key": TEST_SECRET,
        "clinic_name": "Riverside Vein Clinic",
        "clinic_phone": "020 7946 0000",
        "schedules_dir": REPO / "schedules",
        "templates_dir": REPO / "templates",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 3, 2, 10, 30, tzinfo=UTC))


@pytest.fixture
def runtime(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, clock: FixedClock
) -> Iterator[Runtime]:
    """A runtime on a real database (SQLite and PostgreSQL), outbox transports, a fixed clock.

    With ``@pytest.mark.rollback`` its PostgreSQL database is a :class:`RolledBackDatabase`
    (no TRUNCATE after the test); SQLite is a fresh copy for every test either way."""
    rt = Runtime(make_settings(tmp_path, database_url=database_url))
    if _rolls_back(request) and database_url.startswith("postgresql"):
        rt.db = RolledBackDatabase(database_url)
    rt.clock = clock
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.db.dispose()


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **overrides: make_settings(tmp_path, **overrides)
