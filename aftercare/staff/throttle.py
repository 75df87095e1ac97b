"""The login rate limit: guesses counted per email and client, per email, and per client.

A guess is *reserved* before its password is checked: one conditional UPDATE per bucket counts it
only while the bucket is under its limit, and the database serialises those UPDATEs (a row lock
on PostgreSQL, the single writer of SQLite), so however many guesses arrive at once, no more
than the limit are ever checked. A right password gives its reservation back (and clears the
email-and-client bucket, so a typo or two is forgotten); a wrong one keeps it.

Three buckets, each over a fixed window that starts at its first guess:

* an email from one client (``PAIR_LIMIT``): the ordinary case of someone mistyping;
* an email from anywhere (``ACCOUNT_LIMIT``): one account guessed from many addresses;
* a client with any email (``ADDRESS_LIMIT``): one address spraying many accounts.

Keys are SHA-256 digests: no email or address is stored. The client is the connecting address,
or what a trusted proxy says (``AFTERCARE_TRUSTED_PROXIES``; see ``web/client_address.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import case, delete, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from aftercare.storage.db import UTCDateTime
from aftercare.storage.models import LoginThrottle

WINDOW: Final = timedelta(minutes=15)
PAIR_LIMIT: Final = 5
ACCOUNT_LIMIT: Final = 20
ADDRESS_LIMIT: Final = 100
# Rows of windows this old are deleted; only the current window matters.
RETENTION: Final = timedelta(days=1)


@dataclass(frozen=True)
class Bucket:
    key: str
    limit: int


class Refused(Exception):
    """A bucket is at its limit: no guess may be checked until ``until``."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"login refused until {until.isoformat()}")
        self.until = until


@dataclass(frozen=True)
class Guess:
    """A reserved guess: its buckets, and when they open again if this guess filled one."""

    pair: Bucket
    others: tuple[Bucket, ...]
    full_until: datetime | None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def buckets(*, email: str, client: str) -> tuple[Bucket, Bucket, Bucket]:
    """The email-and-client, email and client buckets of a login (in the order they lock)."""
    account = email.strip().lower()
    return (
        Bucket(_digest("pair", account, client), PAIR_LIMIT),
        Bucket(_digest("account", account), ACCOUNT_LIMIT),
        Bucket(_digest("address", client), ADDRESS_LIMIT),
    )


def reserve(*, db_session: Session, email: str, client: str, now: datetime) -> Guess:
    """Count one guess in every bucket, or raise Refused and count none (the caller rolls back).

    The rows stay locked until the caller commits: the login page commits before it checks the
    password, so that concurrent logins only queue for the count.
    """
    pair, *others = buckets(email=email, client=client)
    full: list[datetime] = []
    for bucket in (pair, *others):
        failures, window_start = _count(db_session=db_session, bucket=bucket, now=now)
        if failures >= bucket.limit:
            full.append(window_start + WINDOW)
    return Guess(pair=pair, others=tuple(others), full_until=max(full, default=None))


def _count(*, db_session: Session, bucket: Bucket, now: datetime) -> tuple[int, datetime]:
    """Add one to the bucket if it is under its limit (or its window has passed): its new count
    and window start. One statement checks and counts, so concurrent guesses queue on the row."""
    at = literal(now, UTCDateTime())
    expired = LoginThrottle.window_start <= now - WINDOW
    counted = (
        update(LoginThrottle)
        .where(
            LoginThrottle.key_hash == bucket.key,
            or_(expired, LoginThrottle.failures < bucket.limit),
        )
        .values(
            failures=case((expired, 1), else_=LoginThrottle.failures + 1),
            window_start=case((expired, at), else_=LoginThrottle.window_start),
        )
        .returning(LoginThrottle.failures, LoginThrottle.window_start)
    )
    # Twice at most: a row deleted by the clean-up between the insert and the update is
    # inserted again.
    for _ in range(2):
        _insert_if_missing(db_session=db_session, key=bucket.key, now=now)
        row = db_session.execute(counted).first()
        if row is not None:
            return row[0], row[1]
        window_start = db_session.scalar(
            select(LoginThrottle.window_start).where(LoginThrottle.key_hash == bucket.key)
        )
        if window_start is not None:
            raise Refused(window_start + WINDOW)
    raise Refused(now + WINDOW)  # pragma: no cover - deleted twice within one login


def _insert_if_missing(*, db_session: Session, key: str, now: datetime) -> None:
    bind = db_session.get_bind()
    insert = pg_insert if bind.dialect.name == "postgresql" else sqlite_insert
    db_session.execute(
        insert(LoginThrottle)
        .values(key_hash=key, window_start=now, failures=0)
        .on_conflict_do_nothing(index_elements=[LoginThrottle.key_hash])
    )


def give_back(*, db_session: Session, guess: Guess, right: bool) -> None:
    """Return a reserved guess that was not a wrong password: a right one (which also clears the
    email-and-client bucket), or one that could not be checked at all."""
    if right:
        db_session.execute(delete(LoginThrottle).where(LoginThrottle.key_hash == guess.pair.key))
    # One statement per bucket, in the order reserve() locks them: no two logins ever wait for
    # each other's rows in opposite orders.
    for bucket in guess.others if right else (guess.pair, *guess.others):
        db_session.execute(
            update(LoginThrottle)
            .where(LoginThrottle.key_hash == bucket.key, LoginThrottle.failures > 0)
            .values(failures=LoginThrottle.failures - 1)
        )


def forget_old(*, db_session: Session, now: datetime) -> None:
    """Delete the buckets whose window ended long ago (in a transaction of its own: it must not
    wait for rows while holding others)."""
    db_session.execute(delete(LoginThrottle).where(LoginThrottle.window_start < now - RETENTION))
