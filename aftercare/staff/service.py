"""Staff accounts and API tokens.

Passwords are hashed with argon2id (argon2-cffi). An API token is a random string shown to its
owner once; only its SHA-256 hex digest is stored, with a short prefix so an operator can name
the token to revoke without ever seeing it again.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session
from zxcvbn import zxcvbn

from aftercare.storage.db import Database
from aftercare.storage.models import ApiToken, StaffUser, WebSession
from aftercare.validation import ValidationFailed, clean_name

ROLES: Final = ("staff", "admin")
MIN_PASSWORD_LENGTH: Final = 12
# zxcvbn's 0-4 scale; 3 is "safely unguessable: moderate protection from an offline slow-hash
# scenario" (about 10^8 guesses and more), and our hash is argon2id behind a login limit.
MIN_PASSWORD_SCORE: Final = 3
# Words an attacker who knows what this service is would try first.
_SERVICE_WORDS: Final = ("aftercare", "clinic", "vein", "nurse", "admin", "staff")
TOKEN_PREFIX: Final = "act_"  # noqa: S105 - a label that makes leaked tokens recognisable
# The stored prefix: enough to tell tokens apart in a listing, far too little to guess the rest.
PREFIX_LENGTH: Final = 12
LAST_USED_RESOLUTION: Final = timedelta(minutes=1)
# A login name, not a mailbox: ".internal" is reserved for private use, never delivered.
FIRST_ADMIN_EMAIL: Final = "admin@aftercare.internal"


# Each argon2 hash or check takes 64 MiB for a moment. At most this many run at once in a
# process; a request finding them all busy waits up to HASHING_WAIT seconds, then is refused
# (HashingBusy) rather than holding another 64 MiB: 80 simultaneous logins took a process to 1 GB.
HASHING_SLOTS: Final = 4
HASHING_WAIT: Final = 2.0
_slots = threading.BoundedSemaphore(HASHING_SLOTS)


class StaffError(ValueError):
    """A staff account request that cannot be honoured; the message says why."""


class WrongPassword(StaffError):
    """The current password given to change it is not right."""


class HashingBusy(Exception):
    """Every password-hashing slot stayed busy: try again in a moment."""


@contextmanager
def hashing_slot(*, wait: float = HASHING_WAIT) -> Iterator[None]:
    """Hold one of the process's HASHING_SLOTS, or raise HashingBusy after ``wait`` seconds."""
    if not _slots.acquire(timeout=wait):
        raise HashingBusy("too many password checks at once")
    try:
        yield
    finally:
        _slots.release()


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()


def hash_password(password: str, *, user_inputs: Sequence[str] = ()) -> str:
    """An argon2id hash of ``password``, which must pass check_password_strength."""
    check_password_strength(password, user_inputs=user_inputs)
    with hashing_slot():
        return _hasher().hash(password)


def check_password_strength(password: str, *, user_inputs: Sequence[str] = ()) -> None:
    """Refuse a password shorter than 12 characters, or one zxcvbn scores below 3 ("safely
    unguessable") with ``user_inputs`` (the account's email and name) counted as known words:
    common passwords, keyboard walks, repeats, dates and words with digits appended are all
    found by its dictionaries and patterns, which a length rule alone lets through."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StaffError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if not password.strip():
        raise StaffError("password must not be blank")
    words = [w for text in (*user_inputs, *_SERVICE_WORDS) for w in _words(text)]
    # zxcvbn's matching grows quickly with length; past 100 characters it is long enough.
    result = zxcvbn(password[:100], user_inputs=words)
    if result["score"] < MIN_PASSWORD_SCORE:
        hint = result["feedback"]["warning"] or "it follows a common pattern"
        raise StaffError(
            f"password is too easy to guess ({hint.rstrip('.')}); use three or more unrelated "
            "words, or --generate"
        )


def _words(text: str) -> list[str]:
    """``text``, its parts and their run ("Nora Nightingale": nora, nightingale,
    noranightingale), so that a password built from the account's own name is found."""
    parts = [p for p in re.split(r"[^\w]+", text.lower()) if len(p) >= 3]
    local = text.lower().partition("@")[0]
    return [text.lower(), local, "".join(re.split(r"[^\w]+", local)), *parts]


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``."""
    try:
        with hashing_slot():
            return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    """A random one-time password (about 96 bits), for ``--generate`` and the first admin."""
    return secrets.token_urlsafe(12)


def normalise_email(email: str) -> str:
    try:
        normalised = validate_email(email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise StaffError(f"email: {exc}") from exc
    return normalised.lower()


def get_by_email(*, db_session: Session, email: str) -> StaffUser | None:
    return db_session.scalar(
        select(StaffUser).where(func.lower(StaffUser.email) == email.strip().lower())
    )


def create_staff(
    *,
    db_session: Session,
    email: str,
    password: str,
    now: datetime,
    role: str = "staff",
    name: str = "",
) -> StaffUser:
    """Add a staff account (no commit). Raises StaffError for a bad role, email or password."""
    if role not in ROLES:
        raise StaffError(f"role must be one of: {', '.join(ROLES)}")
    address = normalise_email(email)
    if get_by_email(db_session=db_session, email=address) is not None:
        raise StaffError(f"a staff account for {address} already exists")
    try:
        # The same rule as a patient's name: one line, nothing invisible.
        display_name = clean_name(name, ("name",)) if name.strip() else ""
    except ValidationFailed as exc:
        raise StaffError(str(exc)) from None
    user = StaffUser(
        email=address,
        name=display_name,
        password_hash=hash_password(password, user_inputs=(address, display_name)),
        role=role,
        created_at=now,
    )
    db_session.add(user)
    db_session.flush()
    return user


def authenticate(*, db_session: Session, email: str, password: str) -> StaffUser | None:
    """The enabled account with this email and password, else None (for the login page)."""
    user = get_by_email(db_session=db_session, email=email)
    if user is None or user.disabled_at is not None:
        # Spend the same time as a real check, so response times do not reveal accounts.
        verify_password(_dummy_hash(), password)
        return None
    if not verify_password(user.password_hash, password):
        return None
    if _hasher().check_needs_rehash(user.password_hash):
        with hashing_slot():
            user.password_hash = _hasher().hash(password)
    return user


def check_login(*, database: Database, email: str, password: str) -> int | None:
    """The id of the enabled account with this email and password, else None (the login page).

    The account is read in a short transaction and the password checked after it ends: a 64 MiB
    argon2 check, perhaps waiting for a hashing slot, must not keep the database waiting (on
    SQLite a transaction holds the only write lock).
    """
    with database.session() as db_session:
        user = get_by_email(db_session=db_session, email=email)
        found = (user.id, user.password_hash) if user and user.disabled_at is None else None
    if found is None:
        # Spend the same time as a real check, so response times do not reveal accounts.
        verify_password(_dummy_hash(), password)
        return None
    staff_id, password_hash = found
    if not verify_password(password_hash, password):
        return None
    if _hasher().check_needs_rehash(password_hash):
        with hashing_slot():
            rehashed = _hasher().hash(password)
        with database.session() as db_session:
            # Only if the password was not changed meanwhile.
            db_session.execute(
                update(StaffUser)
                .where(StaffUser.id == staff_id, StaffUser.password_hash == password_hash)
                .values(password_hash=rehashed)
            )
    return staff_id


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    with hashing_slot():
        return _hasher().hash(secrets.token_urlsafe(16))


def set_password(*, db_session: Session, staff_id: int, password: str) -> StaffUser:
    """Set a password (no commit) and end every browser session of the account: whoever knew
    the old password, or held a session opened with it, is logged out everywhere."""
    user = db_session.get_one(StaffUser, staff_id)
    user.password_hash = hash_password(password, user_inputs=(user.email, user.name))
    end_web_sessions(db_session=db_session, staff_id=staff_id)
    return user


def change_own_password(
    *, db_session: Session, staff_id: int, current: str, new: str, repeated: str
) -> StaffUser:
    """A staff member's change of their own password (no commit); every session of the account
    ends, the caller's included (the page starts a new one). StaffError says what is wrong."""
    user = db_session.get_one(StaffUser, staff_id)
    if user.disabled_at is not None:
        raise StaffError("the account is disabled")
    if not verify_password(user.password_hash, current):
        raise WrongPassword("the current password is not right")
    if new != repeated:
        raise StaffError("the new password and its repetition differ")
    if new == current:
        raise StaffError("the new password must differ from the current one")
    return set_password(db_session=db_session, staff_id=staff_id, password=new)


def end_web_sessions(*, db_session: Session, staff_id: int) -> int:
    """End every browser session of a staff member; how many there were."""
    result = db_session.scalars(
        delete(WebSession).where(WebSession.staff_id == staff_id).returning(WebSession.id)
    )
    return len(list(result))


def disable_staff(*, db_session: Session, staff_id: int, now: datetime) -> StaffUser:
    """Disable an account, end its browser sessions and revoke all its tokens (no commit)."""
    user = db_session.get_one(StaffUser, staff_id)
    user.disabled_at = user.disabled_at or now
    end_web_sessions(db_session=db_session, staff_id=staff_id)
    db_session.execute(
        update(ApiToken)
        .where(ApiToken.staff_id == staff_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return user


def count_staff(*, db_session: Session) -> int:
    return db_session.scalar(select(func.count()).select_from(StaffUser)) or 0


def ensure_first_admin(*, db_session: Session, now: datetime) -> tuple[StaffUser, str] | None:
    """On an empty staff table, create an admin with a one-time password; return both."""
    if count_staff(db_session=db_session):
        return None
    password = generate_password()
    user = create_staff(
        db_session=db_session,
        email=FIRST_ADMIN_EMAIL,
        password=password,
        now=now,
        role="admin",
        name="Administrator",
    )
    return user, password


# API tokens ---------------------------------------------------------------------------------


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(
    *, db_session: Session, staff_id: int, now: datetime, label: str = ""
) -> tuple[ApiToken, str]:
    """A new API token for this staff member: (its row, the token itself, shown only now)."""
    user = db_session.get_one(StaffUser, staff_id)
    if user.disabled_at is not None:
        raise StaffError("the account is disabled")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        staff_id=staff_id,
        token_hash=token_digest(token),
        prefix=token[:PREFIX_LENGTH],
        label=label[:100],
        created_at=now,
    )
    db_session.add(row)
    db_session.flush()
    return row, token


def staff_for_token(*, db_session: Session, token: str, now: datetime) -> StaffUser | None:
    """The enabled staff member owning this live token (and note its use), else None."""
    if not token or len(token) > 200:
        return None
    # One query for the token and its owner: this runs before every API request.
    found = db_session.execute(
        select(ApiToken, StaffUser)
        .join(StaffUser, StaffUser.id == ApiToken.staff_id)
        .where(ApiToken.token_hash == token_digest(token), ApiToken.revoked_at.is_(None))
    ).first()
    if found is None:
        return None
    row, user = found
    if user.disabled_at is not None:
        return None
    # Noted at most once a minute: a busy script should not turn every read into a write.
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
    return user


def list_tokens(*, db_session: Session, staff_id: int | None = None) -> Sequence[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.id)
    if staff_id is not None:
        query = query.where(ApiToken.staff_id == staff_id)
    return db_session.scalars(query).all()


def revoke_tokens(*, db_session: Session, prefix: str, now: datetime) -> int:
    """Revoke the live tokens whose stored prefix starts with ``prefix``; how many were revoked.

    A prefix shorter than the stored one could name several tokens: refused, so that an operator
    never revokes more than they meant to.
    """
    if len(prefix) < PREFIX_LENGTH:
        raise StaffError(f"give the token's full {PREFIX_LENGTH}-character prefix")
    result = db_session.scalars(
        update(ApiToken)
        .where(ApiToken.prefix == prefix[:PREFIX_LENGTH], ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(ApiToken.id)
    )
    return len(list(result))


def revoke_token(*, db_session: Session, token_id: int, now: datetime) -> ApiToken:
    """Revoke one token by id (idempotent)."""
    row = db_session.get_one(ApiToken, token_id)
    row.revoked_at = row.revoked_at or now
    return row
