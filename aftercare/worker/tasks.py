"""Thin tasks: take ids, call a service, return a small summary. Arguments are ids only."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from celery import Task
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown

from aftercare import metrics
from aftercare.ops import heartbeat
from aftercare.patients import retention
from aftercare.reminders import delivery, dispatch, leases
from aftercare.runtime import Runtime, get_runtime
from aftercare.silence import checkins
from aftercare.worker.app import app

log = logging.getLogger(__name__)
# While dispatch is held back (placeholder clinic details), say so at most this often.
HELD_WARNING_EVERY = 300.0
_held_warned_at: float | None = None

# Dispatch intervals a reminder may wait in ``queued`` before a recovery pass that found a gone
# worker gives it back to the schedule.
QUEUED_GRACE = 3


class AftercareTask(Task):  # type: ignore[misc]
    """Shared plumbing: the runtime (database, clock, transports) and delivery dependencies."""

    @property
    def runtime(self) -> Runtime:
        return get_runtime()

    def deps(self) -> delivery.Deps:
        """Delivery's dependencies, with this process's lease on what it claims."""
        deps = self.runtime.delivery_deps()
        deps.lease = self.runtime.lease
        return deps


def publish_send(ids: Sequence[int]) -> None:
    send_reminders.apply_async(args=[list(ids)])


@app.task(base=AftercareTask, bind=True, name="aftercare.dispatch")
def dispatch_reminders(self: AftercareTask) -> dict[str, int]:
    """Claim due reminders and enqueue send tasks carrying their ids."""
    rt = self.runtime
    held = dispatch.held_back_by(rt.settings)
    if held is not None:
        _warn_held(held)
        with rt.db.session() as db_session:
            heartbeat.beat(
                db_session, name=heartbeat.DISPATCHER, now=rt.clock.now(), detail={"held": held}
            )
        return {"held": 1}
    summary = dispatch.dispatch_due(
        db=rt.db,
        clock=rt.clock,
        publish=publish_send,
        batch_size=rt.settings.dispatch_batch,
        chunk_size=rt.settings.send_batch,
        time_budget=rt.settings.dispatch_interval * 0.8,
        max_queued=rt.settings.dispatch_max_queued,
        stale_after=timedelta(seconds=rt.settings.stale_after),
        observe_batch=metrics.CLAIM_BATCH.observe,
        order=dispatch.claim_order(rt.settings),
    )
    with rt.db.session() as db_session:
        heartbeat.beat(
            db_session, name=heartbeat.DISPATCHER, now=rt.clock.now(), detail=summary.as_dict()
        )
    if summary.claimed or summary.held_back:
        log.info("dispatched", extra=summary.as_dict())
    return summary.as_dict()


def _warn_held(reason: str) -> None:
    global _held_warned_at  # noqa: PLW0603 - one reminder to the operator per few minutes
    now = time.monotonic()
    if _held_warned_at is None or now - _held_warned_at >= HELD_WARNING_EVERY:
        _held_warned_at = now
        log.warning("dispatch held back: %s", reason)


@app.task(base=AftercareTask, bind=True, name="aftercare.send")
def send_reminders(self: AftercareTask, reminder_ids: list[int]) -> dict[str, int]:
    """Deliver each reminder in the batch; each one is idempotent on its own."""
    results = delivery.deliver_batch(deps=self.deps(), reminder_ids=[int(i) for i in reminder_ids])
    outcomes: dict[str, int] = {}
    for outcome in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        metrics.SENDS.labels(outcome).inc()
    return outcomes


@app.task(base=AftercareTask, bind=True, name="aftercare.recover")
def recover(self: AftercareTask, booted_at: str | None = None) -> dict[str, Any]:
    """Take over the work of gone workers and reconcile it; requeue lost broker messages.

    ``booted_at``: the first pass of a worker that started then (ISO 8601, the service's clock).
    After a crash, a deploy or a reboot its predecessor's prefetched messages are gone with it:
    whatever was queued before it started is given back to the schedule."""
    rt = self.runtime
    stale_after = timedelta(seconds=rt.settings.stale_after)
    taken = leases.take_over(db=rt.db, clock=rt.clock, stale_after=stale_after, lease=rt.lease)
    # A gone worker may have held queued reminders' messages too (prefetched, never to be
    # acknowledged): those queued for more than a few dispatch intervals are given back to the
    # schedule. Harmless if their message is only late: the first send task to run claims
    # them, the other finds them no longer queued.
    grace = stale_after
    if taken.gone:
        grace = min(stale_after, timedelta(seconds=rt.settings.dispatch_interval * QUEUED_GRACE))
    requeued = dispatch.requeue_stale_queued(
        db=rt.db,
        clock=rt.clock,
        stale_after=grace,
        before=None if booted_at is None else datetime.fromisoformat(booted_at),
    )
    deps = self.deps()
    reconciled: dict[str, int] = {}
    for reminder_id in taken.ids:
        outcome = delivery.reconcile(deps=deps, reminder_id=reminder_id)
        reconciled[outcome] = reconciled.get(outcome, 0) + 1
    summary = {"requeued": requeued, "reconciled": reconciled, "gone": taken.gone}
    if requeued or reconciled or taken.gone:
        log.info("recovered %s", summary)
    return summary


@app.task(base=AftercareTask, bind=True, name="aftercare.retention")
def anonymise_expired(self: AftercareTask) -> dict[str, int]:
    """Anonymise patients whose regimen ended more than AFTERCARE_RETENTION_DAYS ago."""
    rt = self.runtime
    summary = retention.anonymise_expired(
        db=rt.db,
        now=rt.clock.now(),
        retention_days=rt.settings.retention_days,
        outbox_dir=rt.settings.outbox_dir,
    )
    log.info("retention", extra=summary)
    return summary


@app.task(base=AftercareTask, bind=True, name="aftercare.silence")
def find_silence(self: AftercareTask) -> dict[str, int]:
    """Flag check-ins left unanswered, or not sent because the patient had opted out."""
    rt = self.runtime
    with rt.db.session() as db_session:
        summary = checkins.find_silent_checkins(
            db_session=db_session, registry=rt.registry, now=rt.clock.now()
        ).as_dict()
    if any(summary.values()):
        log.info("silence", extra=summary)
    return summary


@worker_ready.connect
def _recover_at_boot(**_: Any) -> None:
    """A worker that has just started asks for a recovery pass: after a crash, a deploy or a
    reboot, the work its predecessor held goes out now, not at the next scheduled pass.

    The pass runs a few dispatch intervals later, so that what was queued just before the
    worker started has had time to reach it (and is not given back to the schedule for
    nothing)."""
    rt = get_runtime()
    recover.apply_async(
        kwargs={"booted_at": rt.clock.now().isoformat()},
        countdown=rt.settings.dispatch_interval * QUEUED_GRACE,
    )


@worker_process_shutdown.connect
@worker_shutdown.connect
def _release_lease(**_: Any) -> None:
    """A process that exits cleanly holds nothing: its lease goes, so no recovery pass counts
    it as a worker that died."""
    rt = get_runtime()
    if "lease" in rt.__dict__:  # only if this process ever took one
        rt.lease.release()
