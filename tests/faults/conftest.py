"""Fixtures of the fault-injection suite, and the summary table printed at the end of the run.

``fault_table`` is the recorder every fault test reports into (any test under tests/, not only
this folder's, may take it); ``pytest_terminal_summary`` prints its rows, one per scenario.
Set AFTERCARE_FAULTS_TABLE=path to also get the table as a Markdown file.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import _truncate
from tests.faults.harness import FAULT_ENV, Fleet, PrivateRedis
from tests.faults.report import TABLE_KEY, FaultTable, Row, Tally
from tests.stacks import Stack, make_stack


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TABLE_KEY] = FaultTable()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" or (report.when == "setup" and not report.passed):
        verdict = "ok" if report.passed else ("skipped" if report.skipped else "FAILED")
        item.config.stash[TABLE_KEY].settle(item.nodeid, verdict)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.config.stash[TABLE_KEY].write(terminalreporter)


@dataclass
class Recorder:
    """``fault_table`` as a test sees it: rows it records are tied to the test's outcome."""

    table: FaultTable
    nodeid: str

    def record(
        self,
        scenario: str,
        *,
        faults: int,
        tally: Tally | None = None,
        delay: timedelta | None = None,
        **extra: object,
    ) -> Row:
        return self.table.record(
            scenario, faults=faults, tally=tally, delay=delay, nodeid=self.nodeid, **extra
        )


@pytest.fixture
def fault_table(request: pytest.FixtureRequest) -> Recorder:
    """Report a scenario's row into the run's summary table (record before asserting)."""
    return Recorder(request.config.stash[TABLE_KEY], request.node.nodeid)


def _stack(tmp_path: Path, database_url: str, broker_url: str) -> Stack:
    stack = make_stack(
        tmp_path,
        {
            "AFTERCARE_DATABASE_URL": database_url,
            "AFTERCARE_BROKER_URL": broker_url,
            **FAULT_ENV,
        },
    )
    # Overrides of make_stack's own choices: a faster beat. The logs stay at DEBUG: the harness
    # knows beat is up from its "Sending due task" lines, which are DEBUG for the timer tasks.
    stack.env["AFTERCARE_DISPATCH_INTERVAL"] = "0.25"
    return stack


@pytest.fixture
def fault_stack(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[Stack]:
    """PostgreSQL + the run's Redis, a shared file clock, fault-suite settings."""
    stack = _stack(tmp_path, pg_url, redis_url)
    yield stack
    _truncate(stack.rt.db)
    stack.rt.db.dispose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, which the test may SIGKILL and start again."""
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    if server.proc is not None:
        server.kill()


@pytest.fixture
def private_redis_stack(
    tmp_path: Path, pg_url: str, private_redis: PrivateRedis
) -> Iterator[Stack]:
    """PostgreSQL + a private Redis broker the test can lose."""
    stack = _stack(tmp_path, pg_url, private_redis.url)
    yield stack
    _truncate(stack.rt.db)
    stack.rt.db.dispose()


@pytest.fixture
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """Real worker/beat/dispatch processes for the test's stack; all stopped afterwards."""
    stack_fixture = next(
        name for name in ("fault_stack", "private_redis_stack") if name in request.fixturenames
    )
    processes = Fleet(request.getfixturevalue(stack_fixture))
    yield processes
    processes.stop_all()
