"""Validation of enrolment input, shared by the API, the CLI and CSV import.

Every check names the field (as a ``loc`` path) and the reason; nothing is stored on failure.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from zoneinfo import available_timezones

import phonenumbers
import regex
from email_validator import EmailNotValidError, validate_email

from aftercare.regimens.model import CHANNELS, Channel

Loc = tuple[str | int, ...]

# What a person types in a phone number: ASCII digits and the usual separators, '+' first.
# phonenumbers would also accept letters (vanity numbers: "ABC" becomes 222, a stranger's
# number), other scripts' digits, '*', "ext." and "tel:"; none of those belongs in a mobile
# number that a patient's reminders go to.
_PHONE_CHARACTERS = re.compile(r"^\+?[0-9 ().\-/]*$")
# Instants outside these years are no treatment time: planning near the ends of the calendar
# overflows (year 1 at +14:00 has no UTC equivalent at all).
_EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
_LATEST = datetime(3000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class FieldError:
    loc: Loc
    msg: str

    def __str__(self) -> str:
        return f"{'.'.join(str(p) for p in self.loc)}: {self.msg}"


class ValidationFailed(ValueError):
    """One or more fields are wrong; ``errors`` names each."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


# Control, format (U+202E, zero-width joiners), surrogate, private-use and unassigned characters,
# and line and paragraph separators: none belongs in a one-line value.
_CONTROL = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Unicode's Default_Ignorable_Code_Point: characters a renderer shows as nothing when it does not
# support them (Hangul fillers U+3164 and U+115F, the combining grapheme joiner U+034F, variation
# selectors, tag characters), so a name of them looks blank or like another name. The property
# is not in unicodedata; the regex module reads it from the Unicode data.
_DEFAULT_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
# Braille patterns are a tactile notation, not a script names are written in, and U+2800 (the
# blank pattern) shows as an empty letter: refused in names.
_BRAILLE = regex.compile(r"\p{Block=Braille_Patterns}")
# The bidirectional controls that reorder what follows them (embeddings, overrides, isolates),
# by their Unicode Bidi_Class: U+202E makes "Jane eoD" read "Jane Doe".


def _has_control_chars(text: str) -> bool:
    # ASCII has no format, surrogate, private-use or unassigned characters, and its control
    # characters (0x00-0x1f, 0x7f) are exactly the ones str.isprintable() refuses.
    if text.isascii():
        return not text.isprintable()
    return any(unicodedata.category(ch) in _CONTROL for ch in text)


def _has_invisible_chars(text: str) -> bool:
    """Control characters (line breaks and tabs included), or characters that render as
    nothing: default-ignorable code points and braille patterns."""
    if text.isascii():
        return not text.isprintable()
    return (
        _has_control_chars(text)
        or _DEFAULT_IGNORABLE.search(text) is not None
        or _BRAILLE.search(text) is not None
    )


def clean_name(value: object, loc: Loc) -> str:
    """A person's name on one line: runs of spaces collapse to one, but line breaks, tabs,
    control, format and invisible characters are refused (the name is shown to staff and
    texted to the patient as it is stored)."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed([FieldError(loc, "is required")])
    if _has_invisible_chars(value):
        raise ValidationFailed([FieldError(loc, "contains control or invisible characters")])
    name = " ".join(value.split())
    if len(name) > 200:
        raise ValidationFailed([FieldError(loc, "is longer than 200 characters")])
    return name


def clean_phone(value: object, loc: Loc, *, region: str = "GB") -> str:
    """A mobile number in E.164 form (``+447700900123``)."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed([FieldError(loc, "is required for SMS")])
    if len(value) > 40 or _has_control_chars(value):
        raise ValidationFailed([FieldError(loc, "is not a phone number")])
    if not _PHONE_CHARACTERS.match(value.strip()):
        raise ValidationFailed(
            [FieldError(loc, "is not a phone number (only digits, spaces and + ( ) . - / allowed)")]
        )
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise ValidationFailed([FieldError(loc, "is not a phone number")]) from exc
    # number_type is UNKNOWN exactly when is_valid_number is false: one match of the number
    # against its region's patterns instead of two.
    kind = phonenumbers.number_type(number)
    if kind == phonenumbers.PhoneNumberType.UNKNOWN:
        raise ValidationFailed([FieldError(loc, "is not a valid phone number")])
    if kind not in (
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    ):
        raise ValidationFailed([FieldError(loc, "is not a mobile number, so it cannot get SMS")])
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def clean_email(value: object, loc: Loc) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed([FieldError(loc, "is required for email")])
    if len(value) > 254 or _has_control_chars(value):
        raise ValidationFailed([FieldError(loc, "is not a valid email address")])
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValidationFailed([FieldError(loc, f"is not a valid email address ({exc})")]) from exc


@lru_cache(maxsize=1)
def patient_zones() -> frozenset[str]:
    """The time zones a patient can be in: IANA's geographic zones (every zone IANA's
    ``zone1970.tab`` or ``zone.tab`` places in a country, as shipped by the tzdata package),
    plus ``UTC``, that ZoneInfo can load here.

    ZoneInfo also loads names that are no place: ``localtime`` (the host's own zone),
    ``right/...`` and ``posix/...`` (leap-second and POSIX copies), ``Factory`` and
    ``posixrules``, and names kept only for backward compatibility: old links (``US/Eastern``,
    ``Asia/Calcutta``), POSIX-style rules (``EST5EDT``) and ``Etc/GMT+5`` (five hours *behind*
    GMT). A patient's zone decides when their reminders go out, so only the first kind is taken.
    """
    names = {"UTC"}
    for tab in ("zone1970.tab", "zone.tab"):
        text = (resources.files("tzdata") / "zoneinfo" / tab).read_text(encoding="utf-8")
        for line in text.splitlines():
            if line and not line.startswith("#"):
                names.add(line.split("\t")[2])
    return frozenset(names & available_timezones())


def clean_timezone(value: object, loc: Loc) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed(
            [FieldError(loc, "is required (an IANA name such as Europe/London)")]
        )
    # A newline or other control character is broken input (a mangled CSV cell, a pasted
    # header): refused as phone and email refuse it, never silently trimmed into a valid zone.
    if _has_control_chars(value):
        raise ValidationFailed([FieldError(loc, "contains control or invisible characters")])
    name = value.strip()
    if name not in patient_zones():
        raise ValidationFailed(
            [
                FieldError(
                    loc,
                    f"{name[:64]!r} is not an IANA time zone of a place "
                    "(e.g. Europe/London, America/New_York, or UTC)",
                )
            ]
        )
    return name


def clean_channels(value: object, loc: Loc) -> tuple[Channel, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise ValidationFailed([FieldError(loc, "choose at least one of: sms, email")])
    out: list[Channel] = []
    for index, item in enumerate(value):
        if item not in CHANNELS:
            raise ValidationFailed([FieldError((*loc, index), "must be 'sms' or 'email'")])
        if item in out:
            raise ValidationFailed([FieldError((*loc, index), "is listed twice")])
        out.append(item)
    return tuple(c for c in CHANNELS if c in out)


def clean_instant(value: object, loc: Loc) -> datetime:
    """An ISO-8601 instant that carries a UTC offset, in the years 1900 to 2999 (UTC)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        parsed = _parse_iso(value.strip(), loc)
    else:
        raise ValidationFailed([FieldError(loc, "is required (ISO-8601 with a UTC offset)")])
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValidationFailed([FieldError(loc, "must include a UTC offset, e.g. +00:00")])
    try:
        in_range = _EARLIEST <= parsed.astimezone(UTC) < _LATEST
    except OverflowError:  # year 1 at +14:00, year 9999 at -14:00: no UTC equivalent
        in_range = False
    if not in_range:
        raise ValidationFailed([FieldError(loc, "is out of range")])
    return parsed


def _parse_iso(text: str, loc: Loc) -> datetime:
    bad = FieldError(loc, "is not an ISO-8601 date and time (e.g. 2026-03-01T10:30+00:00)")
    # ISO-8601 is printable ASCII; Python's parser stops at a NUL and ignores what follows.
    if len(text) > 64 or not (text.isascii() and text.isprintable()):
        raise ValidationFailed([bad])
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed([bad]) from exc
