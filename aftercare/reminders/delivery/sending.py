"""Send a batch's prepared messages: a thread pool per process, one chain per recipient sent in
due order, paced transports' slots reserved in slot order; each outcome recorded by the thread
that saw it."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from queue import Empty, SimpleQueue
from typing import TypeGuard

from sqlalchemy import update

from aftercare import metrics
from aftercare.channels.base import (
    PacedTransport,
    SendResult,
    SlotMissed,
    Transport,
    TransportError,
)
from aftercare.channels.twilio.ratelimit import LEAD
from aftercare.faults import crash_point
from aftercare.reminders import states
from aftercare.reminders.delivery.context import Deps, Prepared, log
from aftercare.reminders.delivery.outcome import record_failure
from aftercare.reminders.delivery.recovery import settle_ambiguous
from aftercare.reminders.recording import Recorder
from aftercare.reminders.states import Outcome
from aftercare.storage.models import Reminder

# Recovery takes over 'sending' reminders untouched for AFTERCARE_STALE_AFTER (minutes). A batch
# behind a slow provider (20 s read timeouts, rate-limit waits) can outlive that, so once this
# long has passed since the claim each send first renews it, or finds it taken over and skips.
RENEW_AFTER = timedelta(seconds=10)


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

    items: list[Prepared]
    at: float = 0.0
    held: bool = False
    refused: TransportError | None = None


def _chains(prepared: list[Prepared]) -> list[_Chain]:
    """The batch by recipient (patient), each in due order; chains in order of their first."""
    by_patient: dict[int, list[Prepared]] = {}
    for item in prepared:
        by_patient.setdefault(item.patient_id, []).append(item)
    chains = [_Chain(sorted(items, key=lambda i: i.due_at)) for items in by_patient.values()]
    return sorted(chains, key=lambda chain: chain.items[0].due_at)


def send_all(
    deps: Deps, prepared: list[Prepared], *, started: datetime, recorder: Recorder
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


def _refuse(deps: Deps, transport: Transport, item: Prepared, exc: TransportError) -> _SendOutcome:
    """A message whose slot could not be reserved: a transient failure, nothing sent."""
    try:
        metrics.PROVIDER_ERRORS.labels(transport.name, exc.code or "none").inc()
        return (
            record_failure(deps, item.reminder_id, item.attempt_id, item.attempts, exc),
            None,
            None,
        )
    except Exception as error:  # noqa: BLE001 - raised by deliver_batch once the batch is recorded
        return Outcome.ERROR, None, error


def _send_one(
    deps: Deps,
    transport: Transport,
    item: Prepared,
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
            return Outcome.TAKEN_OVER, None, None
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
                    settle_ambiguous(
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
                record_failure(deps, item.reminder_id, item.attempt_id, item.attempts, exc),
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
        return Outcome.ERROR, None, exc


def _still_ours(deps: Deps, item: Prepared) -> bool:
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
