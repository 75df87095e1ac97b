"""Deliver reminders: check, record the attempt, commit, call the provider, record the outcome.

Write before you send: the attempt row is committed before any network I/O, so a worker killed
at any instruction leaves either a ``queued`` reminder (not yet attempted; it will be sent) or a
``sending`` one with a pending attempt (ambiguous; it is reconciled with the provider's own
record before anything is sent again, see :func:`reconcile`).

A reminder that fails for good is flagged for staff in the same transaction, and a failed SMS is
replaced by its email version (:mod:`aftercare.reminders.fallback`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from queue import Empty, SimpleQueue
from typing import TypeGuard
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from aftercare.channels.base import (
    LookupUnsupported,
    Message,
    PacedTransport,
    SendResult,
    SlotMissed,
    Transport,
    TransportError,
)
from aftercare.channels.twilio.ratelimit import LEAD
from aftercare.clock import Clock
from aftercare.faults import crash_point
from aftercare.flags.service import raise_flag
from aftercare.messages.render import MessageRenderer, TemplateError
from aftercare.ops import metrics
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry
from aftercare.reminders import states
from aftercare.reminders.compose import Clinic, MissingAddress, compose
from aftercare.reminders.fallback import after_failure, fall_back_to_email
from aftercare.reminders.leases import Lease
from aftercare.reminders.recording import Recorder, record_sent
from aftercare.reminders.retry import MAX_ATTEMPTS, backoff
from aftercare.storage.db import Database
from aftercare.storage.models import DeliveryAttempt, Flag, Patient, Reminder, TreatmentSession

log = logging.getLogger(__name__)

SMS_BLOCKED = "SMS blocked: the number was refused by the provider"


@dataclass
class Deps:
    """What delivery needs; built by the caller from the runtime."""

    db: Database
    clock: Clock
    quiet: QuietHours
    registry: RegimenRegistry
    renderer: MessageRenderer
    clinic: Clinic
    transports: dict[str, Transport]
    # This process's lease, named on every reminder it claims (None: claims name no owner and
    # are taken over only once stale, as in-process callers and tests do).
    lease: Lease | None = None


def _load(db_session: Session, reminder_id: int) -> tuple[Reminder, TreatmentSession, Patient]:
    reminder = db_session.get_one(Reminder, reminder_id)
    session = db_session.get_one(TreatmentSession, reminder.session_id)
    patient = db_session.get_one(Patient, session.patient_id)
    return reminder, session, patient


def _hold_reason(
    reminder: Reminder, session: TreatmentSession, patient: Patient, now: datetime
) -> tuple[str, str] | None:
    """(target state, reason) when this reminder must not be sent now, else None."""
    if patient.erased_at is not None:
        return states.CANCELLED, "patient erased"
    if session.status == "cancelled":
        return states.CANCELLED, "session cancelled"
    if session.status == "paused":
        return states.PAUSED, "session paused"
    if reminder.channel == "sms" and patient.sms_opted_out_at is not None:
        return states.CANCELLED, "patient opted out of SMS"
    if reminder.channel == "sms" and patient.sms_blocked_at is not None:
        return states.CANCELLED, SMS_BLOCKED
    if reminder.channel == "email" and patient.email_opted_out_at is not None:
        return states.CANCELLED, "patient unsubscribed from email"
    # An email sent because the SMS failed goes out even to a patient who chose SMS only.
    if reminder.channel not in patient.channel_list and reminder.fallback_of_id is None:
        return states.CANCELLED, f"{reminder.channel} no longer chosen"
    if not reminder.critical and reminder.expires_at is not None and now > reminder.expires_at:
        return states.EXPIRED, "too late to be useful"
    return None


def deliver(*, deps: Deps, reminder_id: int) -> str:
    """Send one queued reminder. Returns what happened (for the task's summary)."""
    return deliver_batch(deps=deps, reminder_ids=[reminder_id])[0]


@dataclass
class _Prepared:
    reminder_id: int
    attempt_id: int
    attempts: int
    channel: str
    due_at: datetime
    patient_id: int
    message: Message
    # The reminder's updated_at as this worker last set it: its claim on the 'sending' row.
    claimed_at: datetime
    # The lease it was claimed under (Deps.lease).
    owner: str | None = None


# Recovery takes over 'sending' reminders untouched for AFTERCARE_STALE_AFTER (minutes). A batch
# behind a slow provider (20 s read timeouts, rate-limit waits) can outlive that, so once this
# long has passed since the claim each send first renews it, or finds it taken over and skips.
RENEW_AFTER = timedelta(seconds=10)


def deliver_batch(*, deps: Deps, reminder_ids: Sequence[int]) -> list[str]:
    """Send a batch of queued reminders, each one independently idempotent.

    One transaction checks every reminder, moves the sendable ones to ``sending`` (under this
    process's lease) and writes their attempts; then the messages go to their providers,
    concurrently (:data:`SEND_THREADS`) but one after another and in due order for each
    recipient (:func:`_send_all`). Each outcome is recorded by the thread that saw it before it
    sends anything else (accepted ones through a group commit, :mod:`recording`), so a crash
    leaves at most one accepted message per send thread unrecorded. Returns an outcome per id,
    in order.
    """
    now = deps.clock.now()
    outcomes: dict[int, str] = {}
    prepared: list[_Prepared] = []
    recorder = Recorder(db=deps.db, clock=deps.clock)
    owner = None if deps.lease is None else deps.lease.hold(now=now)
    with deps.db.session() as db_session:
        loaded = _load_many(db_session, reminder_ids)
        sendable: list[tuple[Reminder, Message]] = []
        patient_of: dict[int, int] = {}
        for reminder_id in reminder_ids:
            if reminder_id in outcomes:
                continue
            row = loaded.get(reminder_id)
            if row is None or row[0].state != states.QUEUED:
                outcomes[reminder_id] = "not-queued"
                continue
            outcome, message = _check(db_session, deps, *row, now=now)
            if message is None:
                outcomes[reminder_id] = outcome
            else:
                sendable.append((row[0], message))
                patient_of[reminder_id] = row[2].id
        moved = set(
            states.transition(
                db_session,
                [r.id for r, _ in sendable],
                source=states.QUEUED,
                target=states.SENDING,
                now=now,
                attempts=Reminder.attempts + 1,
                claimed_by=owner,
            )
        )
        # One INSERT ... RETURNING for the batch's attempts (the unit of work's flush of one
        # object per attempt was 15% of the worker's CPU).
        rows = [
            {
                "reminder_id": r.id,
                "transport": deps.transports[r.channel].name,
                "started_at": now,
                "outcome": "pending",
            }
            for r, _ in sendable
            if r.id in moved
        ]
        attempts: dict[int, int] = {}
        if rows:
            inserted = db_session.execute(
                insert(DeliveryAttempt).returning(
                    DeliveryAttempt.reminder_id, DeliveryAttempt.id, sort_by_parameter_order=True
                ),
                rows,
            )
            attempts = {int(row[0]): int(row[1]) for row in inserted}
        for reminder, message in sendable:
            if reminder.id not in moved:
                outcomes[reminder.id] = "not-queued"
                continue
            prepared.append(
                _Prepared(
                    reminder_id=reminder.id,
                    attempt_id=attempts[reminder.id],
                    attempts=reminder.attempts + 1,
                    channel=reminder.channel,
                    due_at=reminder.due_at,
                    patient_id=patient_of[reminder.id],
                    message=message,
                    claimed_at=now,
                    owner=owner,
                )
            )
    # Committed: from here a crash leaves 'sending' reminders with pending attempts.
    sent: list[tuple[_Prepared, SendResult]] = []
    unexpected: BaseException | None = None
    for item, (outcome, result, error) in zip(
        prepared, _send_all(deps, prepared, started=now, recorder=recorder), strict=True
    ):
        if result is not None:
            sent.append((item, result))
        elif error is not None:
            unexpected = unexpected or error
        else:
            outcomes[item.reminder_id] = outcome
    if sent:
        log.info(
            "sent %s reminder(s)",
            len(sent),
            extra={"reminder_ids": [item.reminder_id for item, _ in sent], "outcome": "sent"},
        )
    crash_point("after_record")
    if unexpected is not None:
        raise unexpected
    for item, _ in sent:
        outcomes[item.reminder_id] = states.SENT
    return [outcomes[i] for i in reminder_ids]


# A batch's messages go to their providers concurrently, on this many threads per process: the
# transports wait on sockets, so one process keeps several round trips in flight instead of
# waiting for each in turn.
SEND_THREADS = 8

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _send_pool() -> ThreadPoolExecutor:
    """This process's send threads, started on first use (never in a parent before a fork)."""
    global _pool  # noqa: PLW0603 - one pool per process
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="aftercare-send")
        return _pool


def _forget_pool() -> None:
    # A forked child inherits the parent's pool object but none of its threads.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)

# What one send came to: (outcome, result when accepted, unexpected exception).
_SendOutcome = tuple[str, SendResult | None, BaseException | None]


@dataclass
class _Chain:
    """One recipient's messages in a batch, sent one after another in due order. ``at`` is the
    monotonic time of the first message's reserved slot (when ``held``); ``refused`` is the
    error that kept it from being reserved (the first message then fails without a send)."""

    items: list[_Prepared]
    at: float = 0.0
    held: bool = False
    refused: TransportError | None = None


def _chains(prepared: list[_Prepared]) -> list[_Chain]:
    """The batch by recipient (patient), each in due order; chains in order of their first."""
    by_patient: dict[int, list[_Prepared]] = {}
    for item in prepared:
        by_patient.setdefault(item.patient_id, []).append(item)
    chains = [_Chain(sorted(items, key=lambda i: i.due_at)) for items in by_patient.values()]
    return sorted(chains, key=lambda chain: chain.items[0].due_at)


def _send_all(
    deps: Deps, prepared: list[_Prepared], *, started: datetime, recorder: Recorder
) -> list[_SendOutcome]:
    """Send every prepared message; outcomes in order.

    Messages to one recipient go one after another, in due order; different recipients' go
    concurrently. A paced transport's (SMS) slots are reserved here, for the next message of
    every chain at most :data:`LEAD` seconds ahead, and the chains go to the send threads in
    slot order, so the threads always work on the earliest slots: one sender's far slot never
    holds a thread while other senders' slots pass. A chain comes back here, to be reserved
    again, when its slot is further away, when its next message is paced (a thread never sleeps
    for a slot it did not reserve) and when a thread reached its slot too late to use it.
    """
    # Built here, in one thread: the lazy transports are not meant to be built concurrently.
    transports = {channel: deps.transports[channel] for channel in {i.channel for i in prepared}}
    outcomes: dict[int, _SendOutcome] = {}
    if len(prepared) <= 1 or SEND_THREADS <= 1:
        for item in sorted(prepared, key=lambda i: i.due_at):
            outcomes[item.reminder_id] = _send_one(
                deps, transports[item.channel], item, started=started, recorder=recorder
            )
        return [outcomes[item.reminder_id] for item in prepared]
    pool = _send_pool()
    # Finished chains arrive here (a future's callback), one at a time: waiting on the set of
    # running futures instead costs O(chains) per completion, O(chains²) a batch.
    finished: SimpleQueue[Future[tuple[dict[int, _SendOutcome], _Chain | None]]] = SimpleQueue()
    running = 0
    waiting = _chains(prepared)
    reserve_at = 0.0  # when the waiting chains are next asked for slots
    while waiting or running:
        if waiting and time.monotonic() >= reserve_at:
            ready, waiting, retry_in = _reserve(transports, waiting)
            reserve_at = time.monotonic() + retry_in
            ready.sort(key=lambda chain: chain.at)
            for chain in ready:
                future = pool.submit(
                    _send_chain, deps, transports, chain, started=started, recorder=recorder
                )
                future.add_done_callback(finished.put)
            running += len(ready)
        timeout = max(reserve_at - time.monotonic(), 0.0) if waiting else None
        if not running:
            time.sleep(timeout or 0.0)
            continue
        try:
            future = finished.get(timeout=timeout)
        except Empty:
            continue
        running -= 1
        sent, rest = future.result()
        outcomes.update(sent)
        if rest is not None:
            # A chain's next paced message, or a missed slot: reserved at once.
            waiting.append(rest)
            reserve_at = 0.0
    return [outcomes[item.reminder_id] for item in prepared]


# Whether each transport class paces its sends. A runtime-checkable Protocol's isinstance
# inspects every member on each call (4% of the worker's CPU when asked per message).
_PACED: dict[type, bool] = {}


def _paced(transport: Transport) -> TypeGuard[PacedTransport]:
    kind = type(transport)
    paced = _PACED.get(kind)
    if paced is None:
        paced = _PACED[kind] = isinstance(transport, PacedTransport)
    return paced


def _reserve(
    transports: dict[str, Transport], chains: list[_Chain]
) -> tuple[list[_Chain], list[_Chain], float]:
    """(chains ready to send, chains whose slot is not near yet, seconds until one may be)."""
    ready: list[_Chain] = []
    waiting: list[_Chain] = []
    retry_in = LEAD
    paced: dict[str, tuple[PacedTransport, list[_Chain]]] = {}
    for chain in chains:
        transport = transports[chain.items[0].channel]
        if _paced(transport):
            paced.setdefault(chain.items[0].channel, (transport, []))[1].append(chain)
        else:
            chain.at = time.monotonic()
            ready.append(chain)
    for transport, group in paced.values():
        try:
            slots = transport.reserve([c.items[0].message for c in group], within=LEAD)
        except TransportError as exc:
            for chain in group:
                chain.refused, chain.at = exc, time.monotonic()
            ready += group
            continue
        now = time.monotonic()
        for chain, slot in zip(group, slots, strict=True):
            if slot.held:
                chain.at, chain.held = now + slot.wait, True
                ready.append(chain)
            else:
                waiting.append(chain)
                retry_in = min(retry_in, max(slot.wait - LEAD, 0.0))
    # Not a busy loop: a slot is refused only when it is more than LEAD away.
    return ready, waiting, max(retry_in, 0.001)


def _send_chain(
    deps: Deps,
    transports: dict[str, Transport],
    chain: _Chain,
    *,
    started: datetime,
    recorder: Recorder,
) -> tuple[dict[int, _SendOutcome], _Chain | None]:
    """Send one recipient's messages one after another, the first at its reserved slot; returns
    their outcomes and the rest of the chain when a paced message needs a slot (reserved by the
    caller, in slot order with the other chains) or its slot was missed (nothing sent)."""
    outcomes: dict[int, _SendOutcome] = {}
    for position, item in enumerate(chain.items):
        transport = transports[item.channel]
        if position == 0 and chain.refused is not None:
            outcomes[item.reminder_id] = _refuse(deps, transport, item, chain.refused)
            continue
        held = position == 0 and chain.held
        if _paced(transport) and not held:
            return outcomes, _Chain(chain.items[position:])
        try:
            outcomes[item.reminder_id] = _send_one(
                deps,
                transport,
                item,
                started=started,
                recorder=recorder,
                at=chain.at if held else None,
            )
        except SlotMissed:
            metrics.SLOTS_MISSED.inc()
            return outcomes, _Chain(chain.items[position:])
    return outcomes, None


def _refuse(deps: Deps, transport: Transport, item: _Prepared, exc: TransportError) -> _SendOutcome:
    """A message whose slot could not be reserved: a transient failure, nothing sent."""
    try:
        metrics.PROVIDER_ERRORS.labels(transport.name, exc.code or "none").inc()
        return (
            _record_failure(deps, item.reminder_id, item.attempt_id, item.attempts, exc),
            None,
            None,
        )
    except Exception as error:  # noqa: BLE001 - raised by deliver_batch once the batch is recorded
        return "error", None, error


def _send_one(
    deps: Deps,
    transport: Transport,
    item: _Prepared,
    *,
    started: datetime,
    recorder: Recorder,
    at: float | None = None,
) -> _SendOutcome:
    """Send one message and record its outcome (each in its own database session; an accepted
    one through ``recorder``) before returning. With ``at``, the message's slot was reserved
    for that monotonic time: the transport sends it then (the claim is checked before, so
    nothing slow comes between the slot and the send)."""
    try:
        if not _still_ours(deps, item):
            return "taken-over", None, None
        crash_point("before_send")
        try:
            if at is not None and _paced(transport):
                result = transport.send(item.message, at=at)
            else:
                result = transport.send(item.message)
        except TransportError as exc:
            metrics.PROVIDER_ERRORS.labels(transport.name, exc.code or "none").inc()
            if exc.ambiguous:
                return (
                    _settle_ambiguous(
                        deps,
                        reminder_id=item.reminder_id,
                        attempt_id=item.attempt_id,
                        message=item.message,
                        transport=transport,
                        started=started,
                    ),
                    None,
                    None,
                )
            return (
                _record_failure(deps, item.reminder_id, item.attempt_id, item.attempts, exc),
                None,
                None,
            )
        metrics.LATENESS.labels(item.channel).observe(
            max((deps.clock.now() - item.due_at).total_seconds(), 0.0)
        )
        crash_point("after_send")
        recorder.record(item.reminder_id, item.attempt_id, result)
        return states.SENT, result, None
    except SlotMissed:
        raise  # nothing was sent: the caller reserves the message a new slot
    except Exception as exc:  # noqa: BLE001 - raised by deliver_batch once the batch is recorded
        return "error", None, exc


def _still_ours(deps: Deps, item: _Prepared) -> bool:
    """True if this worker may still send ``item``; renews its claim when it has grown old, and
    its lease when less than the lease's margin is left (both in one transaction).

    A guarded UPDATE racing recovery's takeover (``leases.take_over``), which also changes
    ``updated_at`` and deletes a gone owner's lease under a row lock: whichever comes first
    wins, and the other one sees it.
    """
    now = deps.clock.now()
    lease = deps.lease
    if now - item.claimed_at < RENEW_AFTER and (lease is None or lease.fresh(item.owner, now=now)):
        return True
    with deps.db.session() as db_session:
        if lease is not None and not lease.renew_for(db_session, item.owner, now=now):
            log.warning("reminder %s: its lease was taken over; not sending it", item.reminder_id)
            return False
        renewed = db_session.execute(
            update(Reminder)
            .where(
                Reminder.id == item.reminder_id,
                Reminder.state == states.SENDING,
                Reminder.updated_at == item.claimed_at,
            )
            .values(updated_at=now)
            .returning(Reminder.id)
        ).first()
    if lease is not None:
        lease.renewed(item.owner, now=now)  # committed
    if renewed is None:
        log.warning("reminder %s was taken over by recovery; not sending it", item.reminder_id)
        return False
    item.claimed_at = now
    return True


def _load_many(
    db_session: Session, reminder_ids: Sequence[int]
) -> dict[int, tuple[Reminder, TreatmentSession, Patient]]:
    """The reminders with their sessions and patients, in three queries."""
    reminders = db_session.scalars(select(Reminder).where(Reminder.id.in_(reminder_ids))).all()
    sessions = {
        s.id: s
        for s in db_session.scalars(
            select(TreatmentSession).where(
                TreatmentSession.id.in_({r.session_id for r in reminders})
            )
        )
    }
    patients = {
        p.id: p
        for p in db_session.scalars(
            select(Patient).where(Patient.id.in_({s.patient_id for s in sessions.values()}))
        )
    }
    return {
        r.id: (r, sessions[r.session_id], patients[sessions[r.session_id].patient_id])
        for r in reminders
    }


def _check(
    db_session: Session,
    deps: Deps,
    reminder: Reminder,
    session: TreatmentSession,
    patient: Patient,
    *,
    now: datetime,
) -> tuple[str, Message | None]:
    """Hold, defer or fail a reminder that must not go now; else compose its message."""
    reminder_id = reminder.id
    hold = _hold_reason(reminder, session, patient, now)
    if hold is not None:
        target, reason = hold
        moved = states.transition(
            db_session, [reminder_id], source=states.QUEUED, target=target, now=now, reason=reason
        )
        if moved and reason == SMS_BLOCKED:
            # The number cannot take SMS until staff fix it: email carries the regimen on.
            fall_back_to_email(db_session=db_session, reminder=reminder, now=now)
        return target, None
    zone = ZoneInfo(session.timezone)
    if reminder.channel == "sms" and deps.quiet.contains(now.astimezone(zone).time()):
        # Late work (a backlog, a retry) never texts a patient at night.
        states.transition(
            db_session,
            [reminder_id],
            source=states.QUEUED,
            target=states.SCHEDULED,
            now=now,
            due_at=deps.quiet.defer(now, zone),
            reason="deferred by quiet hours",
        )
        return "deferred", None
    try:
        message = compose(
            reminder=reminder,
            session=session,
            patient=patient,
            registry=deps.registry,
            renderer=deps.renderer,
            quiet=deps.quiet,
            clinic=deps.clinic,
        )
    except (TemplateError, MissingAddress, KeyError, ValueError) as exc:
        _fail(
            db_session,
            reminder_id,
            source=states.QUEUED,
            now=now,
            cause=f"cannot compose: {type(exc).__name__}",
        )
        log.error("reminder %s cannot be composed (%s)", reminder_id, type(exc).__name__)
        return states.FAILED, None
    return "send", message


def _record_sent(
    deps: Deps, sent: list[tuple[int, int, SendResult]], *, outcome: str = "sent"
) -> None:
    record_sent(db=deps.db, clock=deps.clock, sent=sent, outcome=outcome)


def _record_failure(
    deps: Deps, reminder_id: int, attempt_id: int, attempts: int, exc: TransportError
) -> str:
    now = deps.clock.now()
    with deps.db.session() as db_session:
        attempt = db_session.get_one(DeliveryAttempt, attempt_id)
        attempt.outcome = "permanent" if exc.permanent else "transient"
        attempt.finished_at = now
        attempt.error_code = exc.code
        # Provider messages can quote the recipient: kept in the database, never logged.
        attempt.error_detail = exc.message[:500]
        if exc.permanent or attempts >= MAX_ATTEMPTS:
            reason = f"provider error {exc.code or ''}".strip()
            if not exc.permanent:
                reason = f"gave up after {attempts} attempts ({exc.code or 'transient'})"
            _fail(
                db_session,
                reminder_id,
                source=states.SENDING,
                now=now,
                cause=reason,
                code=exc.code,
                # Only a permanent refusal stops SMS to the number; exhausted retries do not.
                opted_out=exc.permanent and exc.opted_out,
                block=exc.permanent,
            )
            log.warning("reminder %s failed (code %s)", reminder_id, exc.code)
            return states.FAILED
        _retry_at(
            db_session,
            deps,
            db_session.get_one(Reminder, reminder_id),
            due=now + backoff(attempts),
            now=now,
            reason=f"retry after transient error {exc.code or ''}".strip(),
        )
    log.info("reminder %s will be retried (attempt %s, code %s)", reminder_id, attempts, exc.code)
    return "retry"


def _settle_ambiguous(
    deps: Deps,
    *,
    reminder_id: int,
    attempt_id: int,
    message: Message,
    transport: Transport,
    started: datetime,
    recovering: bool = False,
) -> str:
    """The provider may have accepted the message: ask it before anything is sent again.

    Found: recorded as sent. Not found right after the failure: left ``sending`` for the recovery
    task to ask again minutes later (a provider's message list can lag behind its API, and a
    resend on a stale "not found" would text the patient twice). Not found by the recovery task,
    or the provider keeps no record at all (email): sent again, counting as an attempt.
    """
    try:
        found = transport.lookup(message, since=started)
        supported = True
    except LookupUnsupported:
        found, supported = None, False
    except TransportError:
        log.warning("reminder %s: ambiguous send, provider lookup failed", reminder_id)
        _mark_unconfirmed(deps, attempt_id)
        return "ambiguous"
    if found is not None:
        _record_sent(deps, [(reminder_id, attempt_id, found)], outcome="reconciled")
        return states.SENT
    if supported and not recovering:
        _mark_unconfirmed(deps, attempt_id)
        return "unconfirmed"
    now = deps.clock.now()
    with deps.db.session() as db_session:
        attempt = db_session.get_one(DeliveryAttempt, attempt_id)
        attempt.outcome = "lost"
        attempt.finished_at = now
        reminder = db_session.get_one(Reminder, reminder_id)
        if reminder.attempts >= MAX_ATTEMPTS:
            _fail(
                db_session,
                reminder_id,
                source=states.SENDING,
                now=now,
                cause=f"gave up after {reminder.attempts} attempts (no confirmation from provider)",
            )
            return states.FAILED
        # The first resend goes at once (the provider was not at fault); later ones back off.
        _retry_at(
            db_session,
            deps,
            reminder,
            due=now if reminder.attempts <= 1 else now + backoff(reminder.attempts - 1),
            now=now,
            reason="resent: the provider has no record of the earlier attempt",
        )
    log.info("reminder %s: earlier attempt %s never reached the provider", reminder_id, attempt_id)
    return "resend"


def _fail(
    db_session: Session,
    reminder_id: int,
    *,
    source: str,
    now: datetime,
    cause: str,
    code: str | None = None,
    opted_out: bool = False,
    block: bool = False,
) -> None:
    """Fail a reminder for good; if this call moved it, staff are told, a refused number gets
    no more SMS and email steps in (:func:`after_failure`), in the same transaction."""
    if states.transition(
        db_session, [reminder_id], source=source, target=states.FAILED, now=now, reason=cause
    ):
        after_failure(
            db_session=db_session,
            reminder_id=reminder_id,
            now=now,
            code=code,
            opted_out=opted_out,
            cause=cause,
            block=block,
        )


def _retry_at(
    db_session: Session,
    deps: Deps,
    reminder: Reminder,
    *,
    due: datetime,
    now: datetime,
    reason: str,
) -> None:
    """Put a ``sending`` reminder back on the schedule at ``due`` (an SMS never inside quiet
    hours)."""
    if reminder.channel == "sms":
        session = db_session.get_one(TreatmentSession, reminder.session_id)
        due = deps.quiet.defer(due, ZoneInfo(session.timezone))
    states.transition(
        db_session,
        [reminder.id],
        source=states.SENDING,
        target=states.SCHEDULED,
        now=now,
        due_at=due,
        reason=reason,
    )


def _mark_unconfirmed(deps: Deps, attempt_id: int) -> None:
    with deps.db.session() as db_session:
        db_session.get_one(DeliveryAttempt, attempt_id).error_code = "ambiguous"


STUCK_AFTER = timedelta(hours=1)


def reconcile(*, deps: Deps, reminder_id: int) -> str:
    """Settle a reminder left in ``sending`` by a worker that died mid-send."""
    with deps.db.session() as db_session:
        reminder, session, patient = _load(db_session, reminder_id)
        if reminder.state != states.SENDING:
            return "not-sending"
        attempt = db_session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.reminder_id == reminder_id)
            .order_by(DeliveryAttempt.id.desc())
            .limit(1)
        ).first()
        message = compose(
            reminder=reminder,
            session=session,
            patient=patient,
            registry=deps.registry,
            renderer=deps.renderer,
            quiet=deps.quiet,
            clinic=deps.clinic,
        )
        if attempt is None:
            # Died between the state change and the attempt insert: nothing was sent.
            attempt = DeliveryAttempt(
                reminder_id=reminder_id,
                transport=deps.transports[reminder.channel].name,
                started_at=reminder.updated_at,
                outcome="pending",
            )
            db_session.add(attempt)
            db_session.flush()
        attempt_id, started = attempt.id, attempt.started_at
    outcome = _settle_ambiguous(
        deps,
        reminder_id=reminder_id,
        attempt_id=attempt_id,
        message=message,
        transport=deps.transports[reminder.channel],
        started=started,
        recovering=True,
    )
    if outcome == "ambiguous" and deps.clock.now() - started > STUCK_AFTER:
        _flag_stuck(deps, reminder_id)
    return outcome


def _flag_stuck(deps: Deps, reminder_id: int) -> None:
    """The provider cannot tell us for an hour whether a message went out: staff must look."""
    with deps.db.session() as db_session:
        already = db_session.scalar(
            select(Flag.id).where(
                Flag.reminder_id == reminder_id,
                Flag.kind == "stale_reminder",
                Flag.resolved_at.is_(None),
            )
        )
        if already is not None:
            return
        reminder = db_session.get_one(Reminder, reminder_id)
        session = db_session.get_one(TreatmentSession, reminder.session_id)
        raise_flag(
            db_session,
            kind="stale_reminder",
            patient_id=session.patient_id,
            session_id=session.id,
            reminder_id=reminder_id,
            text=(
                f"{reminder.channel.upper()} reminder '{reminder.step}' may or may not have been "
                "sent: the provider has not confirmed it for over an hour. Check with the patient."
            ),
            now=deps.clock.now(),
        )
