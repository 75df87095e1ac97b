"""Sender turns: with a pool of SMS numbers, the dispatcher cuts each claim into send batches
that take every number in turn (a batch is only as quick as its busiest number), keeps one
patient's reminders together and in due order, and publishes every claimed id exactly once.
Real databases (SQLite and PostgreSQL) and the real enrolment service."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy import select, update

from aftercare.channels.twilio.senders import SenderPool, pick_sender
from aftercare.reminders import dispatch, states
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.storage.models import Reminder
from tests.factories import enrol

POOL = ("+15005550006", "+15005550007", "+15005550008")


def _phones_by_sender(per_sender: int) -> dict[str, list[str]]:
    """``per_sender`` UK mobile numbers that the pool texts from each of its numbers."""
    found: dict[str, list[str]] = {sender: [] for sender in POOL}
    candidate = 0
    while min(len(phones) for phones in found.values()) < per_sender:
        phone = f"+4479111{candidate:05d}"
        phones = found[pick_sender(POOL, phone)]
        if len(phones) < per_sender:
            phones.append(phone)
        candidate += 1
    return found


def _welcome_due(rt: Runtime, sessions: list[int]) -> list[int]:
    """Only each session's welcome SMS is due, one second apart in the order of ``sessions``."""
    now = rt.clock.now()
    with rt.db.session() as s:
        s.execute(update(Reminder).values(state=states.SKIPPED))
        ids = []
        for position, session_id in enumerate(sessions):
            reminder_id = s.scalar(
                select(Reminder.id).where(
                    Reminder.session_id == session_id,
                    Reminder.step == "welcome",
                    Reminder.channel == "sms",
                )
            )
            assert reminder_id is not None
            s.execute(
                update(Reminder)
                .where(Reminder.id == reminder_id)
                .values(
                    state=states.SCHEDULED,
                    due_at=now - timedelta(seconds=len(sessions) - position),
                    expires_at=None,
                )
            )
            ids.append(reminder_id)
    return ids


def _three_per_number_in_turn(rt: Runtime) -> list[int]:
    """Nine SMS patients, three per pool number, whose welcome SMS are due in that order (the
    first number's three first); returns the due ids in due order."""
    by_sender = _phones_by_sender(3)
    phones = [phone for sender in POOL for phone in by_sender[sender]]
    sessions = [
        enrol(rt, name=f"Patient {i}", phone=phone, email=None, channels=("sms",))
        for i, phone in enumerate(phones)
    ]
    return _welcome_due(rt, sessions)


def _dispatch(rt: Runtime, order: dispatch.Order | None, *, chunk: int) -> list[list[int]]:
    batches: list[list[int]] = []

    def publish(ids: Sequence[int]) -> None:
        batches.append(list(ids))

    dispatch.dispatch_due(
        db=rt.db, clock=rt.clock, publish=publish, batch_size=100, chunk_size=chunk, order=order
    )
    return batches


def _sender_of(rt: Runtime) -> Callable[[int], str]:
    phones: dict[int, str] = {}
    with rt.db.session() as s:
        for reminder in s.scalars(select(Reminder)):
            phone = reminder.session.patient.phone
            assert phone is not None
            phones[reminder.id] = phone
    return lambda reminder_id: pick_sender(POOL, phones[reminder_id])


def test_claim_in_due_order_by_sender_then_each_batch_takes_every_sender_in_turn(
    runtime: Runtime,
) -> None:
    """Due order puts three patients of the first number first, then three of the second, then
    three of the third: in batches of three, each batch holds one of each number, and within a
    number the patients keep their due order."""
    due = _three_per_number_in_turn(runtime)
    batches = _dispatch(runtime, dispatch.sender_turns(SenderPool(POOL).key), chunk=3)
    sender_of = _sender_of(runtime)
    assert sorted(i for batch in batches for i in batch) == sorted(due)
    assert [sorted(sender_of(i) for i in batch) for batch in batches] == [sorted(POOL)] * 3
    published = [i for batch in batches for i in batch]
    for sender in POOL:
        assert [i for i in published if sender_of(i) == sender] == [
            i for i in due if sender_of(i) == sender
        ]


def test_claim_without_sender_turns_then_batches_in_due_order(runtime: Runtime) -> None:
    """The same claim without turns (one sender, or a Messaging Service): due order, so the first
    batch is all the first number's."""
    due = _three_per_number_in_turn(runtime)
    assert [i for batch in _dispatch(runtime, None, chunk=3) for i in batch] == due


def test_one_patients_reminders_stay_together_in_due_order_with_sender_turns(
    runtime: Runtime,
) -> None:
    """A patient with three reminders due (two SMS, one email) and two others on the same
    number: the patient's three go together, in due order, at the patient's turn."""
    by_sender = _phones_by_sender(3)
    first, second, third = by_sender[POOL[0]]
    many = enrol(runtime, name="Patient A", phone=first, email="a@example.org")
    others = [
        enrol(runtime, name=f"Patient {n}", phone=phone, email=None, channels=("sms",))
        for n, phone in (("B", second), ("C", third))
    ]
    now = runtime.clock.now()
    with runtime.db.session() as s:
        s.execute(update(Reminder).values(state=states.SKIPPED))
        mine = list(
            s.scalars(
                select(Reminder.id)
                .where(Reminder.session_id == many)
                .order_by(Reminder.due_at, Reminder.id)
                .limit(3)
            )
        )
        theirs = [
            s.scalar(
                select(Reminder.id)
                .where(Reminder.session_id == other, Reminder.channel == "sms")
                .order_by(Reminder.due_at, Reminder.id)
                .limit(1)
            )
            for other in others
        ]
        for position, reminder_id in enumerate([theirs[0], *mine, theirs[1]]):
            s.execute(
                update(Reminder)
                .where(Reminder.id == reminder_id)
                .values(
                    state=states.SCHEDULED,
                    due_at=now - timedelta(minutes=10 - position),
                    expires_at=None,
                )
            )
    published = [
        i
        for batch in _dispatch(runtime, dispatch.sender_turns(SenderPool(POOL).key), chunk=2)
        for i in batch
    ]
    assert published == [theirs[0], *mine, theirs[1]]


def test_claim_order_only_for_a_pool_of_twilio_numbers(
    settings_factory: Callable[..., Settings],
) -> None:
    twilio = {"sms_transport": "twilio", "twilio_account_sid": "AC" + "0" * 32}
    assert dispatch.claim_order(settings_factory(**twilio, twilio_from=",".join(POOL))) is not None
    assert dispatch.claim_order(settings_factory(**twilio, twilio_from=POOL[0])) is None
    service = {"twilio_messaging_service_sid": "MG" + "0" * 32, "twilio_from": ""}
    assert dispatch.claim_order(settings_factory(**twilio, **service)) is None
    assert dispatch.claim_order(settings_factory(twilio_from=",".join(POOL))) is None
