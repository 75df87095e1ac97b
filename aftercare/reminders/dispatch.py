"""The dispatcher: claim due reminders and hand their ids to the broker.

The claim is ``SELECT ... WHERE state = 'scheduled' AND due_at <= now ORDER BY due_at LIMIT n
FOR UPDATE SKIP LOCKED`` (a range scan of a partial index), then a guarded UPDATE to
``queued``, committed *before* anything is published. On PostgreSQL several dispatchers can
run at once; on SQLite ``BEGIN IMMEDIATE`` serialises them.

Backpressure: before each batch the dispatcher counts the reminders already ``queued`` (a range
scan of ``ix_reminders_in_flight``) and claims only what keeps that count under
``max_queued``. Claims then follow the workers' drain: while a backlog is due the broker holds
seconds of work, not the whole backlog, and a reminder that falls due meanwhile is not stuck
behind it. Only reminders queued within ``stale_after`` count: older ones are recovery's
(:func:`requeue_stale_queued`), so a broker that lost its messages cannot hold dispatch back
for longer than recovery takes to notice.

Sender turns: with a pool of SMS senders (``AFTERCARE_TWILIO_FROM`` as a list), each paced at
its own rate, a send batch is only as quick as its busiest sender. Claimed in due order, a batch
of 50 holds one sender's messages 5 or 6 times and another's once, so most senders sit idle
while the busiest works through its share. :func:`sender_turns` reorders each claim so the
batches take every sender in turn: a patient's turn is how many patients before it in the
claim share its sender, and batches are cut from the claim in turn order (a patient's
reminders stay together, in due order). Every claim is still handed over in full before the
next is claimed, so the reorder never reaches past one claim (``AFTERCARE_DISPATCH_BATCH``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, literal_column, or_, select
from sqlalchemy.orm import Session

from aftercare.channels.registry import pacing_key
from aftercare.clock import Clock
from aftercare.faults import crash_point
from aftercare.reminders import states
from aftercare.reminders.leases import take_over
from aftercare.settings import Settings
from aftercare.storage.db import Database
from aftercare.storage.models import Patient, Reminder, TreatmentSession

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[int]], None]
# Reorders a claim (ids in due order) before it is cut into send batches; same ids, same session.
Order = Callable[[Session, list[int]], list[int]]
# Ids per IN list when reading a claim's recipients (under SQLite's oldest variable limit).
_IN_CHUNK = 900


@dataclass
class DispatchSummary:
    claimed: int = 0
    published: int = 0
    batches: int = 0
    returned: int = 0
    # 1 when the run stopped because ``max_queued`` reminders were already queued.
    held_back: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "claimed": self.claimed,
            "published": self.published,
            "batches": self.batches,
            "returned": self.returned,
            "held_back": self.held_back,
        }


def count_queued(db_session: Session, *, since: datetime, limit: int) -> int:
    """How many reminders were queued at or after ``since`` and are still queued, counting no
    further than ``limit`` (an index-only range scan of ``ix_reminders_in_flight``)."""
    recent = (
        select(literal_column("1"))
        .select_from(Reminder)
        .where(Reminder.state == states.QUEUED, Reminder.updated_at >= since)
        .limit(limit)
        .subquery()
    )
    return int(db_session.scalar(select(func.count()).select_from(recent)) or 0)


def claim_due(db_session: Session, *, now: datetime, limit: int) -> list[int]:
    """Claim up to ``limit`` due reminders, oldest first; returns their ids in due order."""
    due = (
        select(Reminder.id)
        .where(Reminder.state == states.SCHEDULED, Reminder.due_at <= now)
        .order_by(Reminder.due_at, Reminder.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(db_session.scalars(due))
    moved = set(
        states.transition(db_session, ids, source=states.SCHEDULED, target=states.QUEUED, now=now)
    )
    return [i for i in ids if i in moved]


def sender_turns(sender_of: Callable[[str], str]) -> Order:
    """The claim reordered so that each send batch holds an even share of every SMS sender's
    messages (see the module docstring). ``sender_of`` gives a phone number's sender, the SMS
    transport's pacing key (:func:`~aftercare.channels.registry.pacing_key`)."""

    def order(db_session: Session, ids: list[int]) -> list[int]:
        sms: dict[int, str] = {}  # patient id -> phone, for patients with an SMS in the claim
        patient_of: dict[int, int] = {}
        for offset in range(0, len(ids), _IN_CHUNK):
            rows = db_session.execute(
                select(Reminder.id, Reminder.channel, Patient.id, Patient.phone)
                .join(TreatmentSession, TreatmentSession.id == Reminder.session_id)
                .join(Patient, Patient.id == TreatmentSession.patient_id)
                .where(Reminder.id.in_(ids[offset : offset + _IN_CHUNK]))
            )
            for reminder_id, channel, patient_id, phone in rows:
                patient_of[reminder_id] = patient_id
                if channel == "sms" and phone:
                    sms[patient_id] = phone
        # Patients in order of their first reminder in the claim, each with its reminders.
        chains: dict[int, list[int]] = {}
        for reminder_id in ids:
            chains.setdefault(patient_of.get(reminder_id, -reminder_id), []).append(reminder_id)
        seen: dict[str, int] = {}
        turns: list[tuple[int, int, list[int]]] = []
        for position, (patient_id, chain) in enumerate(chains.items()):
            phone = sms.get(patient_id)
            turn = 0
            if phone is not None:
                sender = sender_of(phone)
                turn = seen.get(sender, 0)
                seen[sender] = turn + 1
            turns.append((turn, position, chain))
        turns.sort(key=lambda entry: entry[:2])
        return [reminder_id for _, _, chain in turns for reminder_id in chain]

    return order


def claim_order(settings: Settings) -> Order | None:
    """:func:`sender_turns` when SMS go through Twilio from a pool of numbers, else None (one
    sender, or a Messaging Service, which paces its own numbers: nothing to even out)."""
    sender_of = pacing_key(settings)
    return sender_turns(sender_of) if sender_of is not None else None


def held_back_by(settings: Settings) -> str | None:
    """Why no reminder may be claimed now, or None. With a production database or broker, a
    clinic name or phone still a placeholder holds every reminder back: they stay ``scheduled``
    in the database (nothing lost, nothing half-sent) and go out, under the usual catch-up
    rules, once the settings are set and the service restarted."""
    return settings.clinic_warning() if settings.production else None


def dispatch_due(
    *,
    db: Database,
    clock: Clock,
    publish: Publish,
    batch_size: int = 500,
    chunk_size: int = 20,
    time_budget: float = 1.5,
    max_queued: int = 0,
    stale_after: timedelta = timedelta(minutes=5),
    observe_batch: Callable[[int], None] | None = None,
    order: Order | None = None,
) -> DispatchSummary:
    """Claim and publish due reminders in batches until none are left, the budget is spent or
    ``max_queued`` reminders are queued (0: no limit); ``order`` reorders each claim before it
    is cut into send batches (:func:`sender_turns`); see the module docstring."""
    summary = DispatchSummary()
    started = time.monotonic()
    while True:
        now = clock.now()
        limit = batch_size
        with db.session() as db_session:
            if max_queued:
                room = max_queued - count_queued(
                    db_session, since=now - stale_after, limit=max_queued
                )
                if room <= 0:
                    summary.held_back = 1
                    return summary
                limit = min(batch_size, room)
            ids = claim_due(db_session, now=now, limit=limit)
            claimed = len(ids)
            if order is not None and claimed > 1:
                ids = order(db_session, ids)
        crash_point("dispatch_after_claim")
        summary.claimed += len(ids)
        if observe_batch is not None:
            observe_batch(len(ids))
        if ids:
            summary.batches += 1
        for offset in range(0, len(ids), chunk_size):
            chunk = ids[offset : offset + chunk_size]
            try:
                publish(chunk)
            except Exception:
                # The broker refused: give the unpublished reminders back so the next run
                # claims them again (they stay in the database either way). Re-raised below.
                unpublished = ids[offset:]
                with db.session() as db_session:
                    summary.returned += len(
                        states.transition(
                            db_session,
                            unpublished,
                            source=states.QUEUED,
                            target=states.SCHEDULED,
                            now=clock.now(),
                        )
                    )
                log.warning(
                    "publish failed; returned reminders to the schedule",
                    extra={"returned": summary.returned},
                )
                raise
            summary.published += len(chunk)
        if claimed < limit or time.monotonic() - started > time_budget:
            return summary


def requeue_stale_queued(
    *, db: Database, clock: Clock, stale_after: timedelta, before: datetime | None = None
) -> int:
    """Give back reminders queued long ago whose broker message was lost (e.g. Redis restart),
    and with ``before``, every reminder queued before that instant (a worker's first recovery
    pass: what was queued before it started may have been in its dead predecessor's prefetch,
    and nothing queued since can have been).

    The dispatcher's backpressure keeps the broker's backlog to seconds of work, so a reminder
    still queued after ``stale_after`` has lost its message (or its worker); one whose message
    is merely late is harmless to requeue too, as its first send task to run claims it and the
    other finds it no longer queued.
    """
    now = clock.now()
    old = Reminder.updated_at < now - stale_after
    if before is not None:
        old = or_(old, Reminder.updated_at < before)
    with db.session() as db_session:
        stale = list(
            db_session.scalars(select(Reminder.id).where(Reminder.state == states.QUEUED, old))
        )
        return len(
            states.transition(
                db_session, stale, source=states.QUEUED, target=states.SCHEDULED, now=now
            )
        )


def stale_sending(*, db: Database, clock: Clock, stale_after: timedelta) -> list[int]:
    """Take over reminders left in ``sending`` by a worker that is gone, or untouched for
    ``stale_after``; they need reconciling (:func:`aftercare.reminders.leases.take_over`).

    Taking over touches ``updated_at`` in the same guarded UPDATE that finds them, so a worker
    that is alive but slow (its batch behind a hanging provider) sees it and skips them instead
    of sending what recovery may send again (see ``delivery.sending._still_ours``).
    """
    return take_over(db=db, clock=clock, stale_after=stale_after).ids
