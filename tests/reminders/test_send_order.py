"""How a batch's messages go out: one recipient's one after another in due order, different
recipients' concurrently; SMS in the order of their reserved sending slots, a slot further away
than the lead reserved later by the same batch; a limiter that cannot be asked sends nothing.

Real parts throughout: the outbox, the fake Twilio, the in-process and Redis limiters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from aftercare.channels.base import Message, PacedTransport, SendResult, Slot, Transport
from aftercare.channels.twilio.senders import pick_sender
from aftercare.clock import FixedClock
from aftercare.reminders import delivery, states
from aftercare.runtime import Runtime
from aftercare.storage.models import DeliveryAttempt, Reminder
from tests.channels.test_twilio import free_port, twilio_runtime
from tests.factories import enrol
from tests.fakes.twilio import FakeTwilio, window_counts
from tests.reminders.test_delivery import claim_all, keep_only, sent_log

POOL = ("+15005550006", "+15005550007", "+15005550008")
NOW = datetime(2026, 3, 20, 10, 0, tzinfo=UTC)  # 10:00 in London: not quiet hours


class HoldUntilOtherSent:
    """Wraps a real transport: the send of ``hold`` waits until ``other`` has been sent (at most
    ``timeout`` seconds, then it goes anyway and ``overlapped`` stays False)."""

    def __init__(self, inner: Transport, *, hold: str, other: str, timeout: float = 10.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.channel = inner.channel
        self.hold = hold
        self.other = other
        self.timeout = timeout
        self.other_sent = threading.Event()
        self.overlapped = False

    def send(self, message: Message) -> SendResult:
        if message.key == self.hold:
            self.overlapped = self.other_sent.wait(self.timeout)
        result = self.inner.send(message)
        if message.key == self.other:
            self.other_sent.set()
        return result

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        return self.inner.lookup(message, since=since)


def _due(rt: Runtime, plan: dict[int, timedelta]) -> None:
    """Make exactly the reminders in ``plan`` due, each ``plan[id]`` before now; skip the rest."""
    now = rt.clock.now()
    with rt.db.session() as s:
        s.execute(
            update(Reminder).where(Reminder.id.not_in(list(plan))).values(state=states.SKIPPED)
        )
        for reminder_id, before in plan.items():
            s.execute(
                update(Reminder)
                .where(Reminder.id == reminder_id)
                .values(state=states.SCHEDULED, due_at=now - before, expires_at=None)
            )


def test_one_patients_messages_in_due_order_while_another_patients_go_alongside(
    runtime: Runtime,
) -> None:
    """Patient A has two SMS due (3 and 1 minutes ago), patient B one due between them. A's
    first send is held until B's has gone: B's must go alongside it (not after both of A's, not
    held for A's first), and A's second only after A's first."""
    sessions = [
        enrol(runtime, phone=phone, email=None, channels=("sms",))
        for phone in ("+447911123401", "+447911123402")
    ]
    with runtime.db.session() as s:
        a1, a2 = s.scalars(
            select(Reminder.id)
            .where(Reminder.session_id == sessions[0], Reminder.channel == "sms")
            .order_by(Reminder.due_at, Reminder.id)
            .limit(2)
        ).all()
        (b1,) = s.scalars(
            select(Reminder.id)
            .where(Reminder.session_id == sessions[1], Reminder.channel == "sms")
            .order_by(Reminder.due_at, Reminder.id)
            .limit(1)
        ).all()
    _due(runtime, {a1: timedelta(minutes=3), b1: timedelta(minutes=2), a2: timedelta(minutes=1)})
    ids = claim_all(runtime)
    assert sorted(ids) == sorted([a1, a2, b1])
    deps = runtime.delivery_deps()
    gate = HoldUntilOtherSent(
        runtime.transport("sms"), hold=f"reminder-{a1}", other=f"reminder-{b1}"
    )
    deps.transports = {"sms": gate}
    assert delivery.deliver_batch(deps=deps, reminder_ids=ids) == [states.SENT] * 3
    assert gate.overlapped, "patient B's SMS waited for patient A's"
    assert sent_log(runtime, "sms") == [f"reminder-{b1}", f"reminder-{a1}", f"reminder-{a2}"]


@pytest.fixture
def pool_rt(tmp_path: Path, database_url: str) -> Iterator[tuple[Runtime, FakeTwilio]]:
    """SMS through a pool of three numbers at 2 MPS each (the in-process limiter), against a
    fake Twilio that refuses a fourth SMS from one number within a second."""
    clock = FixedClock(NOW)
    with (
        FakeTwilio(clock=clock.now, mps=2) as server,
        twilio_runtime(
            tmp_path, database_url, server, clock, twilio_from=",".join(POOL), sms_mps="2"
        ) as rt,
    ):
        yield rt, server


PHONES = [f"+4479111230{i:02d}" for i in range(12)]


def test_pool_batch_beyond_the_lead_then_reserved_later_and_each_sent_once_within_mps(
    pool_rt: tuple[Runtime, FakeTwilio],
) -> None:
    """12 SMS over three numbers at 2 MPS: a number's third slot is over a second away, so the
    batch reserves it later; every SMS goes once, none is refused, no number above its MPS."""
    rt, server = pool_rt
    for i, phone in enumerate(PHONES):
        enrol(rt, now=NOW, name=f"Patient {i}", phone=phone, email=None, channels=("sms",))
    keep_only(rt, "welcome")
    ids = claim_all(rt)
    per_sender = [sum(1 for p in PHONES if pick_sender(POOL, p) == n) for n in POOL]
    assert max(per_sender) >= 3  # some number's slots reach past the lead
    assert delivery.deliver_batch(deps=rt.delivery_deps(), reminder_ids=ids) == [states.SENT] * 12
    assert [r.answer for r in server.received] == ["201"] * 12
    assert sorted(r.to or "" for r in server.received) == sorted(PHONES)
    for number in POOL:
        assert max(window_counts([r.at for r in server.received if r.from_ == number])) <= 2


def test_pool_batch_when_the_shared_limiter_is_unreachable_then_nothing_sent_and_retried(
    tmp_path: Path, database_url: str
) -> None:
    clock = FixedClock(NOW)
    with (
        FakeTwilio(clock=clock.now) as server,
        twilio_runtime(
            tmp_path,
            database_url,
            server,
            clock,
            broker_url=f"redis://127.0.0.1:{free_port()}/0",
            twilio_from=",".join(POOL),
        ) as rt,
    ):
        for i, phone in enumerate(PHONES[:3]):
            enrol(rt, now=NOW, name=f"Patient {i}", phone=phone, email=None, channels=("sms",))
        keep_only(rt, "welcome")
        ids = claim_all(rt)
        outcomes = delivery.deliver_batch(deps=rt.delivery_deps(), reminder_ids=ids)
        with rt.db.session() as s:
            attempts = s.execute(select(DeliveryAttempt.outcome, DeliveryAttempt.error_code)).all()
            reminder_states = set(s.scalars(select(Reminder.state).where(Reminder.id.in_(ids))))
    assert outcomes == ["retry"] * 3
    assert server.received == []
    assert sorted(attempts) == [("transient", "rate-limiter")] * 3
    assert reminder_states == {states.SCHEDULED}


class LateFor:
    """Wraps the real Twilio transport: the first send of ``key`` reaches its slot ``late``
    seconds after it (a busy machine), then goes through the real transport's slot check."""

    def __init__(self, inner: PacedTransport, *, key: str, late: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.channel = inner.channel
        self.key = key
        self.late = late
        self.slots: list[float | None] = []

    def reserve(self, messages: Sequence[Message], *, within: float) -> list[Slot]:
        return self.inner.reserve(messages, within=within)

    def send(self, message: Message, *, at: float | None = None) -> SendResult:
        if message.key == self.key:
            self.slots.append(at)
            if at is not None and len(self.slots) == 1:
                time.sleep(max(at + self.late - time.monotonic(), 0.0))
        return self.inner.send(message, at=at)

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        return self.inner.lookup(message, since=since)


def test_pool_batch_when_a_slot_is_reached_late_then_a_new_slot_is_reserved_and_sent_once(
    pool_rt: tuple[Runtime, FakeTwilio],
) -> None:
    """One SMS reaches its reserved slot 150 ms late: nothing goes at the missed slot, the batch
    reserves it a new one (no thread sleeps for it), and every SMS goes once within the MPS."""
    rt, server = pool_rt
    for i, phone in enumerate(PHONES[:6]):
        enrol(rt, now=NOW, name=f"Patient {i}", phone=phone, email=None, channels=("sms",))
    keep_only(rt, "welcome")
    ids = claim_all(rt)
    deps = rt.delivery_deps()
    inner = rt.transport("sms")
    assert isinstance(inner, PacedTransport)
    late = LateFor(inner, key=f"reminder-{ids[0]}", late=0.150)
    deps.transports = {"sms": late}
    missed_before = REGISTRY.get_sample_value("aftercare_worker_sms_slots_missed_total") or 0.0
    assert delivery.deliver_batch(deps=deps, reminder_ids=ids) == [states.SENT] * 6
    first, second = late.slots  # the missed slot, then a new one: both reserved by the batch
    assert first is not None
    assert second is not None
    assert second > first
    missed = REGISTRY.get_sample_value("aftercare_worker_sms_slots_missed_total") or 0.0
    assert missed - missed_before >= 1  # more when this machine is busy enough to miss others
    assert [r.answer for r in server.received] == ["201"] * 6
    assert sorted(r.to or "" for r in server.received) == sorted(PHONES[:6])
    for number in POOL:
        assert (
            max(window_counts([r.at for r in server.received if r.from_ == number]), default=0) <= 2
        )
    with rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(DeliveryAttempt)) == 6
