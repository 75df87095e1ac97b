"""Pooled PostgreSQL connections that the server dropped (a restart, a terminated backend, a cut
network) are replaced at checkout, before the transaction's first statement: nothing fails.

A PostgreSQL restart terminates every backend exactly as ``pg_terminate_backend`` does (a
FATAL "terminating connection due to administrator command", then the socket closes), so the
tests do that to the pool's own connections instead of restarting the shared server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from aftercare.runtime import Runtime
from aftercare.sessions.service import (
    SessionRequest,
    ValidSession,
    record_session,
    validate_request,
)
from aftercare.storage.db import PING_AFTER_IDLE, Database
from aftercare.storage.models import Patient
from tests.conftest import PG_ADMIN_URL, _truncate, make_settings
from tests.tcp_proxy import TcpProxy


def _backend_pid(session: Session) -> int:
    return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pids: list[int]) -> None:
    """What a restart does to each backend; returns once the server has let them go."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the backends did not go away"
            time.sleep(0.05)


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url)
    yield database
    database.dispose()


def test_a_pooled_connection_whose_backend_was_terminated_is_replaced_before_use(
    db: Database,
) -> None:
    with db.session() as session:
        first = _backend_pid(session)
    _terminate([first])

    with db.session() as session:
        assert _backend_pid(session) != first


def test_after_every_backend_is_terminated_each_pooled_connection_is_replaced(
    db: Database,
) -> None:
    with ExitStack() as stack:
        sessions = [stack.enter_context(db.session()) for _ in range(3)]
        pids = [_backend_pid(s) for s in sessions]
    assert len(set(pids)) == 3
    _terminate(pids)

    for _ in range(3):
        with db.session() as session:
            assert _backend_pid(session) not in pids


def test_a_connection_cut_on_the_network_and_restored_is_replaced_before_use(
    pg_url: str,
) -> None:
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    proxy = TcpProxy(host, int(port or 5432))
    proxy.start()
    db = Database(pg_url.replace(f"@{host_port}/", f"@127.0.0.1:{proxy.port}/"))
    try:
        with db.session() as session:
            first = _backend_pid(session)
        proxy.stop()
        proxy.start()

        with db.session() as session:
            assert _backend_pid(session) != first
    finally:
        db.dispose()
        proxy.stop()


def _last_state_change(pid: int) -> object:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT state_change FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    assert row is not None
    return row[0]


def test_a_connection_used_a_moment_ago_is_handed_out_without_a_round_trip(
    db: Database,
) -> None:
    with db.session() as session:
        pid = _backend_pid(session)
    before = _last_state_change(pid)

    with db.session() as session:
        session.connection()  # checked out; nothing sent yet
        assert _last_state_change(pid) == before
        assert _backend_pid(session) == pid


def test_a_connection_idle_for_a_while_is_pinged_at_checkout(db: Database) -> None:
    """A server that vanished without closing the socket (a host gone, a network partition)
    gives no sign on an idle connection: one idle for over PING_AFTER_IDLE is pinged first."""
    with db.session() as session:
        pid = _backend_pid(session)
    before = _last_state_change(pid)
    time.sleep(PING_AFTER_IDLE + 0.2)

    with db.session() as session:
        session.connection()
        assert _last_state_change(pid) != before
        assert _backend_pid(session) == pid


def test_a_backend_terminated_mid_enrolment_fails_it_as_core_would_and_the_next_one_works(
    db: Database, tmp_path: Path
) -> None:
    """A restart in the middle of a transaction cannot be hidden: the enrolment fails with
    SQLAlchemy's OperationalError, nothing is stored, and the connection is not reused."""
    rt = Runtime(make_settings(tmp_path))
    now = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)

    def valid(number: str) -> ValidSession:
        request = SessionRequest(
            name="Jane Doe",
            phone=f"07911 {number}",
            email=f"jane{number}@example.org",
            timezone="Europe/London",
            treated_at=now.isoformat(),
        )
        return validate_request(request, registry=rt.registry, quiet=rt.quiet, now=now)

    pids: list[int] = []

    def enrol_as_the_server_goes_away() -> None:
        with db.session() as session:
            pids.append(_backend_pid(session))
            _terminate(pids)
            record_session(db_session=session, valid=valid("700101"), now=now)

    with pytest.raises(OperationalError) as failed:
        enrol_as_the_server_goes_away()
    assert failed.value.connection_invalidated

    with db.session() as session:
        assert _backend_pid(session) not in pids
        record_session(db_session=session, valid=valid("700102"), now=now)
    with db.session() as session:
        phones = session.scalars(select(Patient.phone)).all()
    _truncate(db)  # the run's database is shared with other tests
    assert phones == ["+447911700102"]
