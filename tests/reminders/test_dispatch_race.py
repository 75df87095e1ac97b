"""Several dispatchers claiming at once on PostgreSQL never claim the same reminder twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from aftercare.clock import FixedClock
from aftercare.reminders import dispatch, states
from aftercare.runtime import Runtime
from aftercare.storage.db import Database
from aftercare.storage.models import Reminder
from tests.conftest import _truncate, make_settings
from tests.factories import enrol


@pytest.fixture
def pg_runtime(tmp_path: Path, pg_url: str, clock: FixedClock) -> Iterator[Runtime]:
    rt = Runtime(make_settings(tmp_path, database_url=pg_url))
    rt.clock = clock
    yield rt
    _truncate(rt.db)
    rt.db.dispose()


def test_four_dispatchers_racing_then_every_due_reminder_claimed_exactly_once(
    pg_runtime: Runtime, clock: FixedClock
) -> None:
    for _ in range(40):
        enrol(pg_runtime)
    clock.advance(timedelta(days=120))  # every reminder of every session is due
    with pg_runtime.db.session() as s:
        due = s.scalar(
            select(func.count()).select_from(Reminder).where(Reminder.state == states.SCHEDULED)
        )
    assert due is not None
    assert due > 1000
    claims: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def dispatcher(index: int) -> None:
        db = Database(pg_runtime.settings.effective_database_url)
        start.wait()
        while True:
            with db.session() as s:
                ids = dispatch.claim_due(s, now=clock.now(), limit=25)
            if not ids:
                break
            claims[index].extend(ids)
        db.dispose()

    threads = [threading.Thread(target=dispatcher, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for claim in claims for i in claim]
    assert len(everything) == len(set(everything)) == due
    assert sum(1 for claim in claims if claim) >= 2, "the dispatchers did not actually overlap"
