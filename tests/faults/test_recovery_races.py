"""Recovery racing a live worker, interleaved deterministically (SQLite and PostgreSQL).

A worker moves its whole batch to ``sending`` and then calls the provider item by item. Behind a
slow provider the last items wait longer than AFTERCARE_STALE_AFTER, and recovery takes them over
while the worker is still alive. The outbox transport is wrapped at the network edge: its sends
"take" six minutes of the injected clock, and recovery runs inside them, at a chosen item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from aftercare.channels.base import Message, SendResult, Transport
from aftercare.clock import FixedClock
from aftercare.reminders import delivery, dispatch, states
from aftercare.reminders.delivery import sending
from aftercare.runtime import Runtime
from aftercare.storage.models import Reminder
from tests.factories import enrol
from tests.faults.conftest import Recorder
from tests.faults.report import tally

STALE_AFTER = timedelta(minutes=5)


class SlowEdge:
    """The real outbox transport; once send number ``n`` has reached the provider, and before it
    returns, it runs ``during[n]`` (a call that is slow to answer)."""

    def __init__(self, inner: Transport, during: dict[int, Callable[[], None]]) -> None:
        self.inner = inner
        self.name = inner.name
        self.channel = inner.channel
        self.during = during
        self.calls = 0

    def send(self, message: Message) -> SendResult:
        self.calls += 1
        result = self.inner.send(message)
        if self.calls in self.during:
            self.during.pop(self.calls)()
        return result

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        return self.inner.lookup(message, since=since)


def _claim(rt: Runtime, clock: FixedClock) -> list[int]:
    published: list[int] = []

    def publish(ids: Sequence[int]) -> None:
        published.extend(ids)

    dispatch.dispatch_due(db=rt.db, clock=clock, publish=publish)
    return published


def _sends(rt: Runtime) -> list[int | None]:
    keys: list[str] = []
    for channel in ("sms", "email"):
        path = rt.settings.outbox_dir / channel / "sent.log"
        keys += path.read_text().split() if path.exists() else []
    return [int(k.removeprefix("reminder-")) for k in keys]


@pytest.mark.parametrize("recover_at", [1, 2], ids=["before-any-renewal", "after-a-renewal"])
def test_recovery_taking_over_a_slow_batch_never_sends_a_reminder_twice(
    runtime: Runtime,
    clock: FixedClock,
    recover_at: int,
    fault_table: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One send thread: the batch's later items wait behind the slow call, as they do when a
    # batch holds more messages than delivery has send threads.
    monkeypatch.setattr(sending, "SEND_THREADS", 1)
    enrol(runtime, channels=("email",), phone=None)
    with runtime.db.session() as s:  # nothing may expire here: this is about recovery alone
        s.execute(update(Reminder).values(expires_at=None))
    clock.advance(timedelta(days=3))  # welcome, warning signs, keep-moving, continuous-end
    batch = _claim(runtime, clock)
    assert len(batch) >= 4
    taken: list[int] = []

    def slow() -> None:
        clock.advance(timedelta(minutes=6))

    def recovery() -> None:
        """What the recover task and another worker do meanwhile."""
        taken.extend(dispatch.stale_sending(db=runtime.db, clock=clock, stale_after=STALE_AFTER))
        other = runtime.delivery_deps()
        for reminder_id in taken:
            delivery.reconcile(deps=other, reminder_id=reminder_id)
        for reminder_id in _claim(runtime, clock):
            delivery.deliver(deps=other, reminder_id=reminder_id)

    def slow_then_recovery() -> None:
        slow()
        recovery()

    # The first send answers six minutes late; recovery runs then, or during the second send.
    during: dict[int, Callable[[], None]] = (
        {1: slow_then_recovery} if recover_at == 1 else {1: slow, 2: recovery}
    )
    deps = runtime.delivery_deps()
    deps.transports["email"] = SlowEdge(deps.transports["email"], during)

    outcomes = delivery.deliver_batch(deps=deps, reminder_ids=batch)

    result = tally(expected=batch, sends=_sends(runtime))
    fault_table.record(
        f"recovery takes over a live, slow batch ({recover_at=}, {runtime.db.engine.name})",
        faults=len(taken),
        tally=result,
    )
    assert result.duplicates == 0
    assert result.lost == 0
    with runtime.db.session() as s:
        assert {s.get_one(Reminder, i).state for i in batch} == {states.SENT}
    # The worker skipped what recovery took over and had not yet sent: everything after the
    # slow call. What it had sent and not yet recorded, recovery found at the provider.
    assert outcomes[recover_at:] == ["taken-over"] * (len(batch) - recover_at)
    if recover_at == 1:
        assert taken == batch
    else:
        # The item whose claim the worker had just renewed was not taken over, nor the first,
        # recorded as sent as soon as the provider had taken it (before the second send).
        assert taken == batch[2:]
