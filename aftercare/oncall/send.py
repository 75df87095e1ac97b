"""Send one page, and recover pages a dead worker left mid-send.

Write before you send: the page moves to ``sending`` (with its attempt time and this process's
lease) and commits before the provider is called; the outcome is recorded after. A worker killed
in between leaves a ``sending`` page that :func:`recover_pages` takes over once its owner is
gone (or it is stale), asks the provider whether it went, and sends it again only if not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from aftercare.channels.base import (
    LookupUnsupported,
    Message,
    SendResult,
    Transport,
    TransportError,
)
from aftercare.clock import Clock
from aftercare.faults import crash_point
from aftercare.oncall import pages as p
from aftercare.oncall.text import email_page, sms_page
from aftercare.storage.db import Database
from aftercare.storage.leases import Lease, Machine
from aftercare.storage.models import Flag, Page, StaffUser, WorkerLease

log = logging.getLogger(__name__)


@dataclass
class PageDeps:
    db: Database
    clock: Clock
    transports: Mapping[str, Transport]
    public_base_url: str
    lease: Lease | None = None
    # AFTERCARE_ESCALATE_AFTER: a round whose every page failed escalates at once.
    escalate_after: timedelta = timedelta(seconds=900)


def _message(page: Page, staff: StaffUser, base: str) -> Message | None:
    if page.channel == "sms":
        if not staff.phone:
            return None
        return sms_page(page_id=page.id, to=staff.phone, flag_id=page.flag_id, public_base_url=base)
    return email_page(page_id=page.id, to=staff.email, flag_id=page.flag_id, public_base_url=base)


def _hold(flag: Flag, staff: StaffUser) -> str | None:
    if flag.acknowledged_at is not None:
        return "acknowledged"
    if flag.resolved_at is not None:
        return "flag resolved"
    if staff.disabled_at is not None:
        return "account disabled"
    return None


def send_page(*, deps: PageDeps, page_id: int) -> str:
    """Send one queued page; returns what happened (sent, cancelled, not-queued, retry ...)."""
    now = deps.clock.now()
    owner = None if deps.lease is None else deps.lease.hold(now=now)
    with deps.db.session() as db_session:
        page = db_session.get(Page, page_id)
        if page is None or page.state != p.QUEUED:
            return "not-queued"
        flag = db_session.get_one(Flag, page.flag_id)
        staff = db_session.get_one(StaffUser, page.staff_id)
        reason = _hold(flag, staff)
        message = None if reason else _message(page, staff, deps.public_base_url)
        if message is None:
            p.transition(
                db_session,
                [page_id],
                source=p.QUEUED,
                target=p.CANCELLED,
                now=now,
                reason=reason or "no mobile number",
            )
            return p.CANCELLED
        if not p.transition(
            db_session,
            [page_id],
            source=p.QUEUED,
            target=p.SENDING,
            now=now,
            attempts=Page.attempts + 1,
            attempt_at=now,
            claimed_by=owner,
        ):
            return "not-queued"
        channel, flag_id = page.channel, page.flag_id
    # Committed: from here a crash leaves a 'sending' page for recovery to reconcile.
    transport = deps.transports[channel]
    crash_point("before_send")
    try:
        result = transport.send(message)
    except TransportError as exc:
        if exc.ambiguous:
            return _settle(deps, page_id=page_id, message=message, transport=transport, since=now)
        return _failed(deps, page_id=page_id, exc=exc)
    crash_point("after_send")
    _record_sent(deps, page_id, result)
    crash_point("after_record")
    log.info("page %s sent (flag %s, %s)", page_id, flag_id, channel)
    return p.SENT


def _record_sent(deps: PageDeps, page_id: int, result: SendResult) -> None:
    now = deps.clock.now()
    with deps.db.session() as db_session:
        p.transition(
            db_session,
            [page_id],
            source=p.SENDING,
            target=p.SENT,
            now=now,
            sent_at=now,
            provider_id=result.provider_id[:64],
        )


def _failed(deps: PageDeps, *, page_id: int, exc: TransportError) -> str:
    now = deps.clock.now()
    with deps.db.session() as db_session:
        page = db_session.get_one(Page, page_id)
        if exc.permanent or page.attempts >= p.MAX_ATTEMPTS:
            p.transition(
                db_session,
                [page_id],
                source=p.SENDING,
                target=p.FAILED,
                now=now,
                reason=f"provider error {exc.code or 'transient'}",
            )
            if p.round_failed(db_session, flag_id=page.flag_id, round_no=page.round):
                # Nobody got this round's page (a wrong mobile, a refused address): the next
                # round goes now, not after AFTERCARE_ESCALATE_AFTER.
                p.escalate_now(
                    db_session,
                    flag_id=page.flag_id,
                    round_no=page.round,
                    now=now,
                    after=deps.escalate_after,
                )
            log.warning("page %s failed (code %s)", page_id, exc.code)
            return p.FAILED
        p.transition(
            db_session,
            [page_id],
            source=p.SENDING,
            target=p.SCHEDULED,
            now=now,
            due_at=now + p.retry_delay(page.attempts),
            reason=f"retry after transient error {exc.code or ''}".strip(),
        )
    return "retry"


def _settle(
    deps: PageDeps,
    *,
    page_id: int,
    message: Message,
    transport: Transport,
    since: datetime,
    recovering: bool = False,
) -> str:
    """The provider may have the page: ask it. Found: sent. Not found right after the failure:
    left for recovery to ask again later (a provider's list can lag). Not found by recovery, or
    the provider keeps no record: sent again."""
    try:
        found = transport.lookup(message, since=since)
        supported = True
    except LookupUnsupported:
        found, supported = None, False
    except TransportError:
        log.warning("page %s: ambiguous send, provider lookup failed", page_id)
        return "ambiguous"
    if found is not None:
        _record_sent(deps, page_id, found)
        return p.SENT
    if supported and not recovering:
        return "unconfirmed"
    now = deps.clock.now()
    with deps.db.session() as db_session:
        page = db_session.get_one(Page, page_id)
        if page.attempts >= p.MAX_ATTEMPTS:
            p.transition(
                db_session,
                [page_id],
                source=p.SENDING,
                target=p.FAILED,
                now=now,
                reason="gave up: no confirmation from provider",
            )
            return p.FAILED
        p.transition(
            db_session,
            [page_id],
            source=p.SENDING,
            target=p.SCHEDULED,
            now=now,
            due_at=now,
            reason="resent: the provider has no record of the earlier attempt",
        )
    log.info("page %s: earlier attempt never reached the provider; sending again", page_id)
    return "resend"


def _gone_owners(deps: PageDeps, owners: set[str], me: str | None, now: datetime) -> set[str]:
    """Owners (lease ids) whose process is certainly gone: lease missing, expired, or its
    process ran on this machine and no longer does (:class:`Machine`)."""
    owners = {o for o in owners if o != me}
    if not owners:
        return set()
    here = Machine.here()
    with deps.db.session() as db_session:
        rows = db_session.execute(
            select(
                WorkerLease.id,
                WorkerLease.host,
                WorkerLease.machine,
                WorkerLease.pid,
                WorkerLease.started,
                WorkerLease.lease_until,
            ).where(WorkerLease.id.in_(owners))
        ).all()
    found = {row.id for row in rows}
    gone = {row.id for row in rows if row.lease_until < now or here.knows_gone(row)}
    return gone | (owners - found)


def recover_pages(*, deps: PageDeps, stale_after: timedelta) -> dict[str, int]:
    """Give back queued pages whose broker message was lost, and reconcile ``sending`` pages
    whose worker is gone (or that sat untouched for ``stale_after``)."""
    now = deps.clock.now()
    me = None if deps.lease is None else deps.lease.hold(now=now)
    with deps.db.session() as db_session:
        requeued = p.requeue_stale_queued(db_session, now=now, stale_after=stale_after)
        owners = set(
            db_session.scalars(
                select(Page.claimed_by)
                .where(Page.state == p.SENDING, Page.claimed_by.is_not(None))
                .distinct()
            )
        )
    gone = _gone_owners(deps, {o for o in owners if o}, me, now)
    with deps.db.session() as db_session:
        stale = Page.updated_at < now - stale_after
        taken = list(
            db_session.scalars(
                update(Page)
                .where(Page.state == p.SENDING, or_(stale, Page.claimed_by.in_(gone)))
                .values(updated_at=now, claimed_by=me)
                .returning(Page.id)
                .execution_options(synchronize_session=False)
            )
        )
    outcomes: dict[str, int] = {"requeued": requeued}
    for page_id in taken:
        outcome = reconcile(deps=deps, page_id=page_id)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def reconcile(*, deps: PageDeps, page_id: int) -> str:
    """Settle a page left in ``sending`` by a worker that died mid-send."""
    with deps.db.session() as db_session:
        page = db_session.get_one(Page, page_id)
        if page.state != p.SENDING:
            return "not-sending"
        staff = db_session.get_one(StaffUser, page.staff_id)
        message = _message(page, staff, deps.public_base_url)
        since = page.attempt_at or page.created_at
        channel = page.channel
    if message is None:
        with deps.db.session() as db_session:
            p.transition(
                db_session,
                [page_id],
                source=p.SENDING,
                target=p.SCHEDULED,
                now=deps.clock.now(),
                reason="mobile removed",
            )
        return "resend"
    return _settle(
        deps,
        page_id=page_id,
        message=message,
        transport=deps.transports[channel],
        since=since,
        recovering=True,
    )
