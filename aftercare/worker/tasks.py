"""Thin tasks: take ids, call a service, return a small summary. Arguments are ids only."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from celery import Task

from aftercare import retention
from aftercare.ops import heartbeat, metrics
from aftercare.reminders import delivery, dispatch
from aftercare.runtime import Runtime, get_runtime
from aftercare.worker.app import app

log = logging.getLogger(__name__)
# While dispatch is held back (placeholder clinic details), say so at most this often.
HELD_WARNING_EVERY = 300.0
_held_warned_at: float | None = None


class AftercareTask(Task):  # type: ignore[misc]
    """Shared plumbing: the runtime (database, clock, transports) and delivery dependencies."""

    @property
    def runtime(self) -> Runtime:
        return get_runtime()

    def deps(self) -> delivery.Deps:
        return self.runtime.delivery_deps()


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
def recover(self: AftercareTask) -> dict[str, Any]:
    """Requeue reminders whose broker message was lost; reconcile ones left mid-send."""
    rt = self.runtime
    stale_after = timedelta(seconds=rt.settings.stale_after)
    requeued = dispatch.requeue_stale_queued(db=rt.db, clock=rt.clock, stale_after=stale_after)
    deps = self.deps()
    reconciled: dict[str, int] = {}
    for reminder_id in dispatch.stale_sending(db=rt.db, clock=rt.clock, stale_after=stale_after):
        outcome = delivery.reconcile(deps=deps, reminder_id=reminder_id)
        reconciled[outcome] = reconciled.get(outcome, 0) + 1
    summary = {"requeued": requeued, "reconciled": reconciled}
    if requeued or reconciled:
        log.info("recovered %s", summary)
    return summary


@app.task(base=AftercareTask, bind=True, name="aftercare.retention")
def anonymise_expired(self: AftercareTask) -> dict[str, int]:
    """Anonymise patients whose regimen ended more than AFTERCARE_RETENTION_DAYS ago."""
    rt = self.runtime
    summary = retention.anonymise_expired(
        db=rt.db, now=rt.clock.now(), retention_days=rt.settings.retention_days
    )
    log.info("retention", extra=summary)
    return summary
