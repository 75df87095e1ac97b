"""Thin tasks: take ids, call a service, return a small summary. Arguments are ids only."""

from __future__ import annotations

import logging
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
        db=rt.db,
        now=rt.clock.now(),
        retention_days=rt.settings.retention_days,
        outbox_dir=rt.settings.outbox_dir,
    )
    log.info("retention", extra=summary)
    return summary
