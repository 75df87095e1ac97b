"""Pages: the rows that tell on-call staff an emergency or urgent flag needs a call back.

A page is stored in the same transaction as its flag (:func:`start_paging`, called by
:func:`aftercare.flags.service.raise_flag`), then goes the way a reminder goes: claimed by the
beat task (``scheduled -> queued``, committed before its id is published), sent by a worker task
that writes the attempt before it calls the provider (``queued -> sending``), and recorded
(``sent``). Every change is a guarded UPDATE, so a task run twice sends nothing twice, and a
page left in ``sending`` by a worker that died is reconciled with the provider's own record
before it is sent again (:func:`recover_pages`).

Pages never wait for quiet hours: they go to staff who are on call. Their text names no patient
(:mod:`aftercare.oncall.text`); task arguments and log lines carry page and flag ids only.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from aftercare.oncall.rota import rota
from aftercare.storage.models import Flag, Page, StaffUser

SCHEDULED: Final = "scheduled"
QUEUED: Final = "queued"
SENDING: Final = "sending"
SENT: Final = "sent"
FAILED: Final = "failed"
# The flag was acknowledged or resolved before the page went: it is not needed any more.
CANCELLED: Final = "cancelled"

ALLOWED: Final[dict[str, frozenset[str]]] = {
    SCHEDULED: frozenset({QUEUED, CANCELLED}),
    QUEUED: frozenset({SENDING, SCHEDULED, CANCELLED}),
    # sending -> scheduled: a transient failure, or a send the provider has no record of.
    SENDING: frozenset({SENT, FAILED, SCHEDULED}),
    SENT: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}
LIVE: Final = (SCHEDULED, QUEUED, SENDING)

# A page is a few seconds' work: its retries come quickly, and stop before escalation would.
MAX_ATTEMPTS: Final = 5
RETRY_BASE: Final = timedelta(seconds=10)
RETRY_CAP: Final = timedelta(minutes=2)


class IllegalPageTransition(ValueError):
    pass


def transition(
    db_session: Session,
    ids: Collection[int],
    *,
    source: str | Sequence[str],
    target: str,
    now: datetime,
    **values: object,
) -> list[int]:
    """Move the pages in ``ids`` that are in ``source`` to ``target``; return those moved."""
    sources = [source] if isinstance(source, str) else list(source)
    for s in sources:
        if target not in ALLOWED[s]:
            raise IllegalPageTransition(f"{s} -> {target}")
    if not ids:
        return []
    statement = (
        update(Page)
        .where(Page.id.in_(list(ids)), Page.state.in_(sources))
        .values(state=target, updated_at=now, **values)
        .returning(Page.id)
        .execution_options(synchronize_session=False)
    )
    return list(db_session.scalars(statement))


def retry_delay(attempts: int) -> timedelta:
    delay: timedelta = RETRY_BASE * (2 ** max(attempts - 1, 0))
    return min(RETRY_CAP, delay)


def _admins(db_session: Session) -> list[StaffUser]:
    return list(
        db_session.scalars(
            select(StaffUser)
            .where(StaffUser.role == "admin", StaffUser.disabled_at.is_(None))
            .order_by(StaffUser.id)
        )
    )


def next_recipients(db_session: Session, *, flag_id: int) -> tuple[list[StaffUser], bool]:
    """Who the flag's next round pages, and whether that is the last round: the first on the
    rota not yet paged about it; when the rota is exhausted, every admin not yet paged."""
    paged = set(db_session.scalars(select(Page.staff_id).where(Page.flag_id == flag_id)))
    for member in rota(db_session):
        if member.id not in paged:
            return [member], False
    return [admin for admin in _admins(db_session) if admin.id not in paged], True


def page_round(db_session: Session, *, flag: Flag, round_no: int, now: datetime) -> list[Page]:
    """Store the pages of one round (no commit): an SMS to each recipient with a mobile and an
    email to each (every account has one). The flag's ``paged_at`` is cleared after the last
    round, so escalation stops there."""
    recipients, last = next_recipients(db_session, flag_id=flag.id)
    pages = []
    for staff in recipients:
        channels = ["sms"] if staff.phone else []
        channels.append("email")
        for channel in channels:
            page = Page(
                flag_id=flag.id,
                staff_id=staff.id,
                round=round_no,
                channel=channel,
                state=SCHEDULED,
                due_at=now,
                created_at=now,
                updated_at=now,
                attempts=0,
            )
            db_session.add(page)
            pages.append(page)
    flag.page_round = round_no
    flag.paged_at = None if last else now
    db_session.flush()
    return pages


def start_paging(db_session: Session, *, flag: Flag, now: datetime) -> list[Page]:
    """Page the first on call about a new emergency or urgent flag (no commit)."""
    return page_round(db_session, flag=flag, round_no=1, now=now)


def escalation_due(db_session: Session, *, now: datetime, after: timedelta) -> list[int]:
    """Flags whose latest round went out ``after`` ago and nobody has acknowledged."""
    return list(
        db_session.scalars(
            select(Flag.id)
            .where(
                Flag.urgent,
                Flag.resolved_at.is_(None),
                Flag.acknowledged_at.is_(None),
                Flag.paged_at.is_not(None),
                Flag.paged_at <= now - after,
            )
            .order_by(Flag.paged_at, Flag.id)
            .limit(200)
        )
    )


def escalate(db_session: Session, *, flag_id: int, now: datetime, after: timedelta) -> int:
    """Page the flag's next round if it is still due (no commit); returns the pages stored.

    The round is taken with a guarded UPDATE on the flag (its round number unchanged, still
    unacknowledged and open), so two escalations racing page once; the pages' unique key
    (flag, staff, channel) holds even if they did not."""
    flag = db_session.get(Flag, flag_id)
    if flag is None:
        return 0
    current = flag.page_round
    taken = db_session.execute(
        update(Flag)
        .where(
            Flag.id == flag_id,
            Flag.page_round == current,
            Flag.acknowledged_at.is_(None),
            Flag.resolved_at.is_(None),
            Flag.paged_at.is_not(None),
            Flag.paged_at <= now - after,
        )
        .values(page_round=current + 1)
        .returning(Flag.id)
        .execution_options(synchronize_session=False)
    ).first()
    if taken is None:
        return 0
    db_session.refresh(flag)
    return len(page_round(db_session, flag=flag, round_no=current + 1, now=now))


def round_failed(db_session: Session, *, flag_id: int, round_no: int) -> bool:
    """True when every page of the flag's round has failed (none sent or still going)."""
    states = set(
        db_session.scalars(
            select(Page.state).where(Page.flag_id == flag_id, Page.round == round_no).distinct()
        )
    )
    return states == {FAILED}


def escalate_now(
    db_session: Session, *, flag_id: int, round_no: int, now: datetime, after: timedelta
) -> bool:
    """Make the flag's next round due at once (no commit), if it is still on ``round_no``,
    unacknowledged and open."""
    moved = db_session.execute(
        update(Flag)
        .where(
            Flag.id == flag_id,
            Flag.page_round == round_no,
            Flag.acknowledged_at.is_(None),
            Flag.resolved_at.is_(None),
            Flag.paged_at.is_not(None),
        )
        .values(paged_at=now - after)
        .returning(Flag.id)
        .execution_options(synchronize_session=False)
    ).first()
    return moved is not None


def claim_due(db_session: Session, *, now: datetime, limit: int = 100) -> list[int]:
    """Claim due pages for sending (``scheduled -> queued``), oldest first."""
    due = (
        select(Page.id)
        .where(Page.state == SCHEDULED, Page.due_at <= now)
        .order_by(Page.due_at, Page.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(db_session.scalars(due))
    moved = set(transition(db_session, ids, source=SCHEDULED, target=QUEUED, now=now))
    return [i for i in ids if i in moved]


def cancel_pending(db_session: Session, *, flag_id: int, now: datetime, reason: str) -> int:
    """Cancel the flag's pages not yet handed to a provider (no commit)."""
    ids = list(
        db_session.scalars(
            select(Page.id).where(Page.flag_id == flag_id, Page.state.in_((SCHEDULED, QUEUED)))
        )
    )
    return len(
        transition(
            db_session, ids, source=(SCHEDULED, QUEUED), target=CANCELLED, now=now, reason=reason
        )
    )


def requeue_stale_queued(db_session: Session, *, now: datetime, stale_after: timedelta) -> int:
    """Give back pages queued long ago whose broker message was lost (no commit)."""
    stale = list(
        db_session.scalars(
            select(Page.id).where(Page.state == QUEUED, Page.updated_at < now - stale_after)
        )
    )
    return len(transition(db_session, stale, source=QUEUED, target=SCHEDULED, now=now))


def unacknowledged(db_session: Session) -> Sequence[Flag]:
    """Open emergency and urgent flags nobody has acknowledged, oldest first."""
    return db_session.scalars(
        select(Flag)
        .where(Flag.urgent, Flag.resolved_at.is_(None), Flag.acknowledged_at.is_(None))
        .order_by(Flag.created_at, Flag.id)
        .limit(100)
    ).all()


def paged_flags_for(db_session: Session, *, staff_ids: Collection[int]) -> list[int]:
    """Open, unacknowledged flags these staff were paged about (a page sent or in flight)."""
    return list(
        db_session.scalars(
            select(Flag.id)
            .join(Page, Page.flag_id == Flag.id)
            .where(
                Page.staff_id.in_(list(staff_ids)),
                or_(Page.state == SENT, Page.state == SENDING),
                Flag.acknowledged_at.is_(None),
                Flag.resolved_at.is_(None),
            )
            .distinct()
            .order_by(Flag.id)
        )
    )


def age_text(seconds: float) -> str:
    """A flag's age for staff: "under 1 min", "7 min", "2 h 5 min", "3 days"."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return "under 1 min"
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    return f"{hours // 24} days"


def waiting_for_call_back(db_session: Session, *, now: datetime) -> list[tuple[Flag, str]]:
    """The dashboard tile: unacknowledged emergency and urgent flags with their ages."""
    return [
        (flag, age_text((now - flag.created_at).total_seconds()))
        for flag in unacknowledged(db_session)
    ]
