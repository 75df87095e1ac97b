"""Engine and session factory, built from settings on first use (never at import)."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from aftercare.private import private_dir, private_file


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (stored as naive UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for PostgreSQL (psycopg 3) or SQLite, configured the same way for both."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            _private_sqlite_files(Path(path))
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # SQLite's own BEGIN is deferred; take the write lock at BEGIN so that two processes
        # never both read a row as 'queued' and then both update it.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    engine = create_engine(url, **kwargs)
    _check_connections_at_checkout(engine)
    return engine


# A pooled connection idle for longer than this is pinged before it is handed out.
PING_AFTER_IDLE = 1.0


def _check_connections_at_checkout(engine: Engine) -> None:
    """Replace a pooled connection the server has dropped before anything uses it.

    ``pool_pre_ping`` would do it with a round trip on every checkout (~0.2 ms, a tenth of an
    enrolment). A server that restarts, or terminates a backend, says so and closes the socket,
    so a connection idle in the pool with something to read is one to test; only that one, or
    one idle for over PING_AFTER_IDLE (a server gone without a word: a host down, a network
    partition), is pinged. A dead one invalidates the pool, as pre-ping does.
    """
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _idle_since(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None:  # a new connection
            return
        if time.monotonic() - idle_since < PING_AFTER_IDLE and _quiet(dbapi_connection):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as err:
            if dialect.is_disconnect(err, dbapi_connection, None):
                raise exc.InvalidatePoolError(str(err)) from err
            raise


def _quiet(dbapi_connection: Any) -> bool:
    """Nothing to read on an idle connection (no goodbye from the server); no round trip."""
    if dbapi_connection.closed:
        return False
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


def _private_sqlite_files(path: Path) -> None:
    """The database file created 0600 before SQLite opens it: SQLite gives its WAL and
    shared-memory files the database file's mode. Ones left by an older version are narrowed."""
    if not path.parent.exists():
        private_dir(path.parent)
    private_file(path)
    for extra in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        if extra.exists():
            private_file(extra)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy issue BEGIN itself (see the "begin" listener above).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # Deleted and overwritten content is zeroed, not left in free space: an erased patient's
    # name must not be recoverable from the file (docs/retention.md).
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self.sessionmaker() as session, session.begin():
            yield session

    def truncate_wal(self) -> bool:
        """SQLite: copy every page in the WAL into the database file and empty the WAL, so that
        earlier versions of overwritten pages (an erased patient's) are no longer on disk. Waits
        for readers (busy timeout); True when done, False if a reader held on. No-op elsewhere.
        """
        if self.engine.dialect.name != "sqlite":
            return True
        raw = self.engine.raw_connection()
        try:
            # Outside any transaction (the connection is in autocommit, see _sqlite_pragmas).
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            row = cursor.fetchone()  # (busy, frames in the WAL, frames copied)
            cursor.close()
        finally:
            raw.close()
        return row is not None and int(row[0]) == 0

    def dispose(self) -> None:
        self.engine.dispose()
