"""The on-call rota: staff with a mobile, in the order they were put on call.

Positions are kept dense (1, 2, 3 ...) so the order reads plainly; putting someone on call who
already is only updates their phone, and keeps their place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aftercare.audit.service import record as audit
from aftercare.staff.service import get_by_email
from aftercare.storage.models import StaffUser
from aftercare.validation import ValidationFailed, clean_phone

DIRECTIONS: Final = ("up", "down")


class RotaError(ValueError):
    """A rota change that cannot be made; the message names the field and the reason."""


def parse_phone(value: str) -> str:
    """A staff mobile in E.164 (default region GB), or RotaError naming ``phone``."""
    try:
        return clean_phone(value, ("phone",))
    except ValidationFailed as exc:
        raise RotaError(str(exc)) from None


def rota(db_session: Session) -> list[StaffUser]:
    """Who is on call, first to be paged first (disabled accounts are never paged)."""
    return list(
        db_session.scalars(
            select(StaffUser)
            .where(StaffUser.on_call_position.is_not(None), StaffUser.disabled_at.is_(None))
            .order_by(StaffUser.on_call_position, StaffUser.id)
        )
    )


def _member(db_session: Session, email: str) -> StaffUser:
    if not email.strip().isprintable():  # a NUL or a control character: no account has one
        raise RotaError("email: is not an email address (it holds a control character)")
    user = get_by_email(db_session=db_session, email=email)
    if user is None:
        raise RotaError(f"email: no staff account for {email.strip()}")
    return user


def put_on_call(
    *, db_session: Session, email: str, phone: str, now: datetime, actor_id: int | None = None
) -> tuple[StaffUser, bool]:
    """Put a staff member on call at the end of the rota with this mobile (no commit); someone
    already on call keeps their place and gets the new phone. Returns (user, added)."""
    number = parse_phone(phone)
    user = _member(db_session, email)
    if user.disabled_at is not None:
        raise RotaError(f"email: the account for {user.email} is disabled")
    user.phone = number
    added = user.on_call_position is None
    if added:
        last = db_session.scalar(select(func.max(StaffUser.on_call_position)))
        user.on_call_position = (last or 0) + 1
    audit(
        db_session=db_session,
        action="on_call",
        actor_id=actor_id,
        now=now,
        detail={"staff_id": user.id, "added": added},
    )
    db_session.flush()
    return user, added


def take_off_call(
    *, db_session: Session, email: str, now: datetime, actor_id: int | None = None
) -> StaffUser:
    """Take a staff member off the rota (no commit); the rest close up behind them."""
    user = _member(db_session, email)
    if user.on_call_position is None:
        raise RotaError(f"email: {user.email} is not on call")
    user.on_call_position = None
    db_session.flush()
    _renumber(db_session)
    audit(
        db_session=db_session,
        action="off_call",
        actor_id=actor_id,
        now=now,
        detail={"staff_id": user.id},
    )
    return user


def move(
    *, db_session: Session, staff_id: int, direction: str, now: datetime, actor_id: int | None
) -> None:
    """Swap a member of the rota with the one above or below (no commit)."""
    if direction not in DIRECTIONS:
        raise RotaError("direction: must be up or down")
    members = _all_on_call(db_session)
    index = next((i for i, m in enumerate(members) if m.id == staff_id), None)
    if index is None:
        raise RotaError("staff: not on call")
    other = index - 1 if direction == "up" else index + 1
    if not 0 <= other < len(members):
        return  # already first or last: nothing to move
    members[index], members[other] = members[other], members[index]
    _renumber(db_session, members)
    audit(
        db_session=db_session,
        action="on_call_move",
        actor_id=actor_id,
        now=now,
        detail={"staff_id": staff_id, "direction": direction},
    )


def _all_on_call(db_session: Session) -> list[StaffUser]:
    return list(
        db_session.scalars(
            select(StaffUser)
            .where(StaffUser.on_call_position.is_not(None))
            .order_by(StaffUser.on_call_position, StaffUser.id)
        )
    )


def _renumber(db_session: Session, members: Sequence[StaffUser] | None = None) -> None:
    for position, member in enumerate(members or _all_on_call(db_session), start=1):
        member.on_call_position = position
    db_session.flush()
