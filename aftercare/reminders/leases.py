"""Who holds a ``sending`` reminder, and when another process may take it over.

Every process that moves reminders to ``sending`` holds a *lease*: a ``worker_leases`` row with
its identity (host, machine, pid, process start time) and ``lease_until``, renewed every
:attr:`Lease.every` seconds by a thread of its own. Each claimed reminder carries the id of the
lease it was claimed under (``reminders.claimed_by``).

Recovery (:func:`take_over`) takes over the reminders of an owner that is certainly gone:

* its lease has expired (no heartbeat for ``AFTERCARE_WORKER_LEASE`` seconds), or
* it ran on this machine (same host name, boot and PID namespace) and its process no longer
  exists (or its PID now belongs to a younger process): a restart after a crash, on the same
  machine, finds its predecessor's work at once, with no wait at all, or
* its lease row is missing (recovery deleted it when it found the owner gone).

and, as before leases, any ``sending`` reminder untouched for ``AFTERCARE_STALE_AFTER``.

A lease that is taken over is deleted in the same transaction, under a row lock, so the owner
cannot renew it in between: an owner that was only slow (a frozen VM, a database it could not
reach) finds its lease gone at its next renewal and sends nothing more under it. Before each
provider call a worker makes sure its lease still has :attr:`Lease.margin` seconds to run
(renewing it, and its claim on the reminder, in one transaction when it has not); a call started
then ends before the lease can expire, so a live worker's message is never taken over mid-call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, or_, select, update

from aftercare.clock import Clock
from aftercare.reminders import states
from aftercare.storage.db import Database
from aftercare.storage.leases import Lease, Machine
from aftercare.storage.models import Reminder, WorkerLease

__all__ = ["Lease", "Machine", "TakeOver", "take_over"]

log = logging.getLogger(__name__)


@dataclass
class TakeOver:
    """What a recovery pass took: reminders to reconcile, and how many leases it found gone
    (holding reminders or not: a gone worker may also have held queued work in its prefetch)."""

    ids: list[int]
    gone: int


_LEASE_COLUMNS = (
    WorkerLease.id,
    WorkerLease.host,
    WorkerLease.machine,
    WorkerLease.pid,
    WorkerLease.started,
    WorkerLease.lease_until,
)


def take_over(
    *,
    db: Database,
    clock: Clock,
    stale_after: timedelta,
    here: Machine | None = None,
    lease: Lease | None = None,
) -> TakeOver:
    """Take over ``sending`` reminders whose owner is gone, or that sat untouched for
    ``stale_after``; gone and expired leases are deleted in the same transaction.

    The reminders taken are claimed under ``lease`` (the recovering process's own): if it dies
    before it has reconciled them all, the next pass takes them over from it in turn.
    """
    now = clock.now()
    here = here or Machine.here()
    me = None if lease is None else lease.hold(now=now)
    with db.session() as db_session:
        owners = {
            owner
            for owner in db_session.scalars(
                select(Reminder.claimed_by)
                .where(Reminder.state == states.SENDING, Reminder.claimed_by.is_not(None))
                .distinct()
            )
            if owner is not None and owner != me
        }
        rows = db_session.execute(
            select(*_LEASE_COLUMNS).where(
                or_(WorkerLease.id.in_(owners), WorkerLease.lease_until < now)
            )
        ).all()
        found = {row.id for row in rows}
        suspects = {row.id for row in rows if row.lease_until < now or here.knows_gone(row)}
        # Looked at again under a row lock (live leases are never locked): an owner renewing
        # its lease right now either does so first, and is not gone, or waits, finds its lease
        # deleted and sends nothing more under it.
        locked = db_session.execute(
            select(*_LEASE_COLUMNS)
            .where(WorkerLease.id.in_(suspects), WorkerLease.id != (me or ""))
            .with_for_update()
        ).all()
        gone = {row.id for row in locked if row.lease_until < now or here.knows_gone(row)}
        gone |= owners - found
        if gone:
            db_session.execute(delete(WorkerLease).where(WorkerLease.id.in_(gone)))
        stale = Reminder.updated_at < now - stale_after
        taken = list(
            db_session.scalars(
                update(Reminder)
                .where(
                    Reminder.state == states.SENDING,
                    or_(stale, Reminder.claimed_by.in_(gone)) if gone else stale,
                )
                # Recovery's now and lease: another pass (the next one, or one running at the
                # same time) takes them only once stale or once this process is gone.
                .values(updated_at=now, claimed_by=me)
                .returning(Reminder.id)
                .execution_options(synchronize_session=False)
            )
        )
    if gone & owners:
        log.info("took over the work of %s gone worker process(es)", len(gone & owners))
    return TakeOver(ids=taken, gone=len(gone))
