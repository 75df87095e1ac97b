"""Paging faults: a worker killed around a page (before the provider call, after the provider
accepted it, after the result was stored). Every page reaches the outbox exactly once: a page
left in ``sending`` by a dead worker is reconciled with the outbox's own record before it is
sent again, and a task redelivered by the broker finds its page no longer queued.

Real processes (``aftercare worker|beat``) on PostgreSQL + Redis with a shared file clock, as
in test_process_faults.py; the rows go into the same fault table.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from aftercare.flags.service import raise_flag
from aftercare.oncall import pages as p
from aftercare.oncall.rota import put_on_call
from aftercare.storage.models import Page
from tests.faults.conftest import Recorder
from tests.faults.harness import PAST_STALE, Fleet, trace
from tests.faults.report import tally
from tests.stacks import TREATED, Stack
from tests.web.test_pages import add_staff

pytestmark = pytest.mark.e2e

CRASHES = {
    "before_send": ("worker killed before a page's provider call", "before_send=0.25"),
    "after_send": ("worker killed after the provider accepted a page", "after_send=0.25"),
    "after_record": ("worker killed after storing a page's result", "after_record=0.25"),
}
FLAGS = 10
ON_CALL = "oncall@example.org"


def _raise_urgent_flags(stack: Stack) -> None:
    add_staff(stack.rt, ON_CALL, "staff")
    with stack.rt.db.session() as s:
        put_on_call(db_session=s, email=ON_CALL, phone="+447911000111", now=TREATED)
    with stack.rt.db.session() as s:
        for index in range(FLAGS):
            raise_flag(
                s,
                kind="urgent_reply",
                patient_id=None,
                text=f"URGENT: test flag {index}",
                severity="urgent",
                now=TREATED,
            )


def _states(stack: Stack) -> dict[str, int]:
    with stack.rt.db.session() as s:
        rows = s.execute(select(Page.state, func.count()).group_by(Page.state)).all()
    return {state: int(count) for state, count in rows}


def _drive_pages(stack: Stack, *, max_moves: int = 6, idle: float = 3.0) -> int:
    """Wait until no page is in flight; when nothing has moved for ``idle`` seconds, move the
    clock past AFTERCARE_STALE_AFTER (what a stuck page waits for). Returns the moves made."""
    moves = 0
    last, since = _states(stack), time.monotonic()
    deadline = time.monotonic() + 120
    while any(_states(stack).get(state) for state in p.LIVE):
        assert time.monotonic() < deadline, f"pages still in flight: {_states(stack)}"
        time.sleep(0.2)
        now = _states(stack)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= idle:
            assert moves < max_moves, f"pages stuck after {moves} clock moves: {now}"
            stack.clock.set(stack.clock.now() + PAST_STALE)
            moves += 1
            since = time.monotonic()
            trace(f"paging: clock moved past stale ({now})")
    return moves


def _outbox_page_sends(stack: Stack) -> list[int | None]:
    keys: list[str] = []
    for channel in ("sms", "email"):
        path = stack.data_dir / "outbox" / channel / "sent.log"
        if path.exists():
            keys += path.read_text().split()
    return [int(k[5:]) if k.startswith("page-") else None for k in keys]


@pytest.mark.parametrize("point", list(CRASHES))
def test_worker_killed_around_a_page_pages_exactly_once(
    point: str, fault_stack: Stack, fleet: Fleet, fault_table: Recorder
) -> None:
    title, spec = CRASHES[point]
    # Escalation stays out of this scenario: the clock moves past STALE_AFTER, never this far.
    fault_stack.env["AFTERCARE_ESCALATE_AFTER"] = str(7 * 24 * 3600)
    _raise_urgent_flags(fault_stack)
    fleet.up(worker_env={"AFTERCARE_FAULTS": spec})

    moves = _drive_pages(fault_stack)

    kills = fleet.child_kills("worker")
    with fault_stack.rt.db.session() as s:
        expected = list(s.scalars(select(Page.id)))
    sends = _outbox_page_sends(fault_stack)
    result = tally(expected=expected, sends=sends)
    fault_table.record(f"paging: {title} ({spec})", faults=kills, tally=result, clock_moves=moves)
    assert len(expected) == 2 * FLAGS  # an SMS and an email page per flag
    assert result.duplicates == 0, Counter(sends)
    assert result.lost == 0, _states(fault_stack)
    assert result.unwanted == 0
    assert kills >= 1, "the crash point was never reached"
    assert _states(fault_stack) == {p.SENT: 2 * FLAGS}
