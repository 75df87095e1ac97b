"""Paging tasks: the beat pass (recover, escalate, claim, publish) and one page's send.
Arguments are page ids only."""

from __future__ import annotations

import logging
from datetime import timedelta

from aftercare.oncall.run import paging_pass
from aftercare.oncall.send import PageDeps, send_page
from aftercare.runtime import Runtime
from aftercare.worker.app import app
from aftercare.worker.tasks import AftercareTask

log = logging.getLogger(__name__)


def page_deps(rt: Runtime, *, with_lease: bool = True) -> PageDeps:
    deps = rt.delivery_deps()
    return PageDeps(
        db=rt.db,
        clock=rt.clock,
        transports=deps.transports,
        public_base_url=rt.settings.public_base_url,
        lease=rt.lease if with_lease else None,
        escalate_after=timedelta(seconds=rt.settings.escalate_after),
    )


def publish_page(page_id: int) -> None:
    send_one_page.apply_async(args=[page_id])


@app.task(base=AftercareTask, bind=True, name="aftercare.paging")
def run_paging(self: AftercareTask) -> dict[str, int]:
    """Page on-call staff: what is due now, and the next round where nobody acknowledged."""
    rt = self.runtime
    summary = paging_pass(
        deps=page_deps(rt),
        publish=publish_page,
        escalate_after=timedelta(seconds=rt.settings.escalate_after),
        stale_after=timedelta(seconds=rt.settings.stale_after),
    )
    if summary:
        log.info("paging %s", summary)
    return summary


@app.task(base=AftercareTask, bind=True, name="aftercare.page")
def send_one_page(self: AftercareTask, page_id: int) -> str:
    """Send one page (idempotent: a page not queued any more is left alone)."""
    return send_page(deps=page_deps(self.runtime), page_id=int(page_id))
