"""One paging pass, as beat runs it every few seconds: recover, escalate, claim, publish."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from aftercare.oncall import pages as p
from aftercare.oncall.send import PageDeps, recover_pages

log = logging.getLogger(__name__)


def paging_pass(
    *,
    deps: PageDeps,
    publish: Callable[[int], None],
    escalate_after: timedelta,
    stale_after: timedelta,
) -> dict[str, int]:
    """Reconcile pages a dead worker left, page the next round of every flag nobody
    acknowledged in time, then claim due pages and publish their ids (after the commit). A
    page the broker refused goes back to the schedule for the next pass."""
    summary = {k: v for k, v in recover_pages(deps=deps, stale_after=stale_after).items() if v}
    now = deps.clock.now()
    with deps.db.session() as db_session:
        due = p.escalation_due(db_session, now=now, after=escalate_after)
    escalated = 0
    for flag_id in due:
        with deps.db.session() as db_session:
            if p.escalate(db_session, flag_id=flag_id, now=now, after=escalate_after):
                escalated += 1
                log.info("flag %s escalated to the next on call", flag_id)
    with deps.db.session() as db_session:
        ids = p.claim_due(db_session, now=now)
    published = 0
    for index, page_id in enumerate(ids):
        try:
            publish(page_id)
        except Exception:
            with deps.db.session() as db_session:
                p.transition(db_session, ids[index:], source=p.QUEUED, target=p.SCHEDULED, now=now)
            log.warning("publish failed; returned pages to the schedule")
            raise
        published += 1
    if escalated:
        summary["escalated"] = escalated
    if published:
        summary["published"] = published
    return summary
