"""The bad-input corpus: tables of hostile or broken values for every edge of the service, each
with where the error must point and (a fragment of) what it must say.

One value table per field (names, phones, emails, zones, instants, parameters...) feeds every
face that takes that field: the JSON API (``POST /api/v1/sessions``, ``PATCH
/api/v1/patients/{id}``), the CSV import and the CLI. The API checks shape and length first
(pydantic), the service checks meaning (the same code for every face), so a case may say how the
API words its refusal when it differs. Plus tables of webhook payloads, regimen files and
templates. ``table_snapshot`` is the "nothing changed" check: every table's row count and a
digest of its rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from aftercare.storage.db import Database
from aftercare.storage.models import Base

MB = 1024 * 1024
# The largest value a JSON body can carry under the default body limit (64 KiB) with room for
# the rest of the body: a bigger body is refused whole with 413 before it is read
# (tests/web/test_request_limits.py), so the field-by-field refusal is pinned just below it.
BIG = 48 * 1024

# Columns that legitimately move on a read-only request (a token's "last used" stamp).
VOLATILE = {("api_tokens", "last_used_at")}


def table_snapshot(db: Database) -> dict[str, tuple[int, str]]:
    """Every table: its row count and a digest of all its rows (ordered by primary key)."""
    out: dict[str, tuple[int, str]] = {}
    with db.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if (table.name, c.name) not in VOLATILE]
            rows = connection.execute(select(*columns).order_by(*table.primary_key.columns)).all()
            digest = hashlib.sha256(repr([tuple(row) for row in rows]).encode()).hexdigest()
            out[table.name] = (len(rows), digest)
    return out


@dataclass(frozen=True)
class RawJson:
    """A value that only raw JSON text can carry (a lone surrogate): spliced in as written."""

    text: str


@dataclass(frozen=True)
class Value:
    """One bad value of a field.

    ``reason``: the service's message (every face). ``api``: the API's message when its schema
    refuses the value first (a wrong type, a length limit), else the service's. ``csv``: False
    when the value cannot be a CSV cell or means something else there (a non-string; blank is
    "use the default").
    """

    id: str
    value: Any
    reason: str
    api: str | None = None
    csv: bool = True

    @property
    def api_reason(self) -> str:
        return self.api or self.reason


TOO_LONG = "String should have at most"
NOT_A_STRING = "Input should be a valid string"

# Characters that make text look like something else or hide part of it.
RTL_OVERRIDE = "\u202e"
ZERO_WIDTH_JOINER = "\u200d"
ZERO_WIDTH_SPACE = "\u200b"

NAMES = [
    Value("blank", "   ", "is required"),
    Value("longer-than-200", "A" * 201, "is longer than 200 characters", api=TOO_LONG),
    Value(
        "forty-eight-kilobytes", "A" * BIG, "is longer than 200 characters", api=TOO_LONG, csv=False
    ),
    Value("rtl-override", f"Jane {RTL_OVERRIDE}eoD", "contains control or invisible characters"),
    Value("zero-width-joiner", f"Ja{ZERO_WIDTH_JOINER}ne Doe", "control or invisible"),
    Value("zero-width-space", f"Jane{ZERO_WIDTH_SPACE} Doe", "control or invisible"),
    Value("byte-order-mark", "\ufeffJane Doe", "control or invisible"),
    Value("nul", "Jane\x00 Doe", "control or invisible", csv=False),
    Value("escape-sequence", "Jane \x1b[31mDoe", "control or invisible"),
    Value("bell", "Jane\x07 Doe", "control or invisible"),
    Value("delete", "Jane\x7f Doe", "control or invisible"),
    Value("private-use", "Jane \ue000Doe", "control or invisible"),
    Value(
        "lone-surrogate",
        RawJson('"Jane \\ud800Doe"'),
        "control or invisible",
        api="unable to parse raw data as a unicode string",
        csv=False,
    ),
    Value("a-number", 42, "is required", api=NOT_A_STRING, csv=False),
    Value("a-list", ["Jane"], "is required", api=NOT_A_STRING, csv=False),
    # Default-ignorable code points that render as nothing (or as a blank letter).
    Value("hangul-filler", "Jane \u3164Doe", "control or invisible"),
    Value("hangul-filler-only", "\u3164", "control or invisible"),
    Value("hangul-choseong-filler", "\u115f Doe", "control or invisible"),
    Value("halfwidth-hangul-filler", "Jane \uffa0", "control or invisible"),
    Value("combining-grapheme-joiner", "Ja\u034fne Doe", "control or invisible"),
    Value("variation-selector", "Jane\ufe0f Doe", "control or invisible"),
    Value("tag-character", "Jane\U000e0041 Doe", "control or invisible"),
    Value("mongolian-vowel-separator", "Jane\u180eDoe", "control or invisible"),
    Value("braille-blank", "Jane\u2800Doe", "control or invisible"),
    Value("braille-blank-only", "\u2800", "control or invisible"),
    # Line breaks and tabs: a name is one line, so they are refused, not collapsed to spaces.
    Value("line-feed", "Jane\nDoe", "control or invisible"),
    Value("carriage-return", "Jane\rDoe", "control or invisible"),
    Value("crlf", "Jane Doe\r\n", "control or invisible"),
    Value("tab", "Jane\tDoe", "control or invisible"),
    Value("next-line", "Jane\x85Doe", "control or invisible"),
    Value("line-separator", "Jane\u2028Doe", "control or invisible"),
    Value("paragraph-separator", "Jane\u2029Doe", "control or invisible"),
]

# Every wrong shape of a phone number (default region GB; SMS is chosen, so one is required).
NOT_A_NUMBER = "is not a phone number"
NOT_VALID = "is not a valid phone number"
NOT_MOBILE = "is not a mobile number"
ONLY_DIGITS = "is not a phone number (only digits, spaces and"
PHONES = [
    Value("empty", "", "is required for SMS"),
    Value("spaces-only", "   ", "is required for SMS"),
    Value("only-plus", "+", NOT_A_NUMBER),
    Value("plus-and-spaces", "+  ", NOT_A_NUMBER),
    Value("too-short", "0791", NOT_VALID),
    Value("one-digit-short", "07911 12345", NOT_VALID),
    Value("one-digit-long", "07911 1234567", NOT_VALID),
    Value("too-long", "+44 7911 123456 7890 1234", NOT_A_NUMBER),
    Value("longer-than-40", "0" * 41, NOT_A_NUMBER, api=TOO_LONG),
    Value("forty-eight-kilobytes", "7" * BIG, NOT_A_NUMBER, api=TOO_LONG, csv=False),
    Value("country-code-00", "+00 7911 123456", NOT_VALID),
    Value("country-code-0", "+0", NOT_A_NUMBER),
    Value("landline", "020 7946 0000", NOT_MOBILE),
    Value("premium-rate", "09067 123456", NOT_MOBILE),
    Value("freephone", "0800 123 4567", NOT_MOBILE),
    Value("shared-cost", "0845 123 4567", NOT_MOBILE),
    Value("personal-number", "070 1234 5678", NOT_MOBILE),
    Value("letters", "07911 ABC456", ONLY_DIGITS),
    Value("vanity-word", "0800 FLOWERS", ONLY_DIGITS),
    Value("letter-o-for-zero", "O7911 123456", ONLY_DIGITS),
    Value("letter-l-for-one", "07911 l23456", ONLY_DIGITS),
    Value(
        "fullwidth-digits",
        "\uff10\uff17\uff19\uff11\uff11 \uff11\uff12\uff13\uff14\uff15\uff16",
        ONLY_DIGITS,
    ),
    Value("arabic-indic-digits", "٠٧٩١١١٢٣٤٥٦", ONLY_DIGITS),
    Value("mathematical-digits", "𝟎𝟕𝟗𝟏𝟏𝟏𝟐𝟑𝟒𝟓𝟔", ONLY_DIGITS),
    Value("extension", "+44 7911 123456 ext. 12", ONLY_DIGITS),
    Value("tel-uri", "tel:+447911123456", ONLY_DIGITS),
    Value("star-prefix", "*447911123456", ONLY_DIGITS),
    Value("two-pluses", "++447911123456", ONLY_DIGITS),
    Value("plus-inside", "+44+7911123456", ONLY_DIGITS),
    Value("sql-injection", "07911' OR '1'='1", ONLY_DIGITS),
    Value("rtl-override", f"07911{RTL_OVERRIDE}123456", NOT_A_NUMBER),
    Value("zero-width-joiner", f"07911{ZERO_WIDTH_JOINER}123456", NOT_A_NUMBER),
    Value("nul", "07911 123456\x00", NOT_A_NUMBER, csv=False),
    Value("newline", "07911 123456\n", NOT_A_NUMBER),
    Value("tab", "07911\t123456", NOT_A_NUMBER),
    Value("a-number", 7911123456, "is required for SMS", api=NOT_A_STRING, csv=False),
]

NOT_AN_EMAIL = "is not a valid email address"
EMAILS = [
    Value("empty", "", "is required for email"),
    Value("spaces-only", "  ", "is required for email"),
    Value("no-at", "jane.example.org", NOT_AN_EMAIL),
    Value("no-domain", "jane@", NOT_AN_EMAIL),
    Value("no-local-part", "@example.org", NOT_AN_EMAIL),
    Value("two-ats", "jane@@example.org", NOT_AN_EMAIL),
    Value("double-dot", "jane@example..org", NOT_AN_EMAIL),
    Value("space", "jane doe@example.org", NOT_AN_EMAIL),
    Value("header-injection", "jane@example.org\r\nBcc: all@example.org", NOT_AN_EMAIL),
    Value("nul", "jane@example.org\x00", NOT_AN_EMAIL, csv=False),
    Value("rtl-override", f"jane@{RTL_OVERRIDE}gro.elpmaxe", NOT_AN_EMAIL),
    Value("reserved-domain", "jane@localhost", NOT_AN_EMAIL),
    Value("ip-literal", "jane@[127.0.0.1]", NOT_AN_EMAIL),
    Value("sql-injection", "x' OR '1'='1@example.org", NOT_AN_EMAIL),
    Value("longer-than-254", "j" * 64 + "@" + "e" * 186 + ".org", NOT_AN_EMAIL, api=TOO_LONG),
    Value(
        "forty-eight-kilobytes", "j" * BIG + "@example.org", NOT_AN_EMAIL, api=TOO_LONG, csv=False
    ),
    Value("a-number", 12, "is required for email", api=NOT_A_STRING, csv=False),
]

NOT_A_ZONE = "is not an IANA time zone"
ZONES = [
    Value("unknown", "Mars/Olympus_Mons", NOT_A_ZONE),
    Value("lower-case", "europe/london", NOT_A_ZONE),
    Value("utc-offset", "UTC+05:00", NOT_A_ZONE),
    Value("path-traversal", "../../../../etc/passwd", NOT_A_ZONE),
    Value("absolute-path", "/etc/localtime", NOT_A_ZONE),
    Value("traversal-inside", "Europe/../../etc/passwd", NOT_A_ZONE),
    Value("sql-injection", "Europe/London' OR '1'='1", NOT_A_ZONE),
    Value("nul", "Europe/London\x00", "contains control or invisible characters", csv=False),
    Value("rtl-override", f"Europe/London{RTL_OVERRIDE}", "control or invisible characters"),
    Value("longer-than-64", "Europe/" + "x" * 60, NOT_A_ZONE, api=TOO_LONG),
    Value("spaces-only", "   ", "is required", csv=False),  # CSV: blank means the default
    Value("a-number", 5, "is required", api=NOT_A_STRING, csv=False),
    # Names ZoneInfo loads that are no place a patient lives: the host's own zone, the leap-second
    # and POSIX copies, tzdata's placeholder, and zones kept only for backward compatibility
    # (legacy links, POSIX-style rules, and Etc/GMT+5, which is five hours *behind* GMT).
    Value("localtime", "localtime", NOT_A_ZONE),
    Value("right-utc", "right/UTC", NOT_A_ZONE),
    Value("right-london", "right/Europe/London", NOT_A_ZONE),
    Value("posix-london", "posix/Europe/London", NOT_A_ZONE),
    Value("posixrules", "posixrules", NOT_A_ZONE),
    Value("factory", "Factory", NOT_A_ZONE),
    Value("backward-link", "US/Eastern", NOT_A_ZONE),
    Value("posix-style-rule", "EST5EDT", NOT_A_ZONE),
    Value("etc-gmt-plus-5", "Etc/GMT+5", NOT_A_ZONE),
]

NOT_ISO = "is not an ISO-8601 date and time"
INSTANTS = [
    Value("february-30", "2026-02-30T10:00:00+00:00", NOT_ISO),
    Value("month-13", "2026-13-01T10:00:00+00:00", NOT_ISO),
    Value("hour-25", "2026-03-02T25:00:00+00:00", NOT_ISO),
    Value("offset-25-hours", "2026-03-02T10:00:00+25:00", NOT_ISO),
    Value("words", "yesterday morning", NOT_ISO),
    Value("no-offset", "2026-03-02T10:00:00", "must include a UTC offset"),
    Value("date-only", "2026-03-02", "must include a UTC offset"),
    Value("empty", "", "is required", csv=False),  # CSV: a missing cell is "required" too
    Value("year-1-at-plus-14", "0001-01-01T00:00:00+14:00", "is out of range"),
    Value("year-1-utc", "0001-01-01T00:00:00+00:00", "is out of range"),
    Value("year-9999-at-minus-14", "9999-12-31T23:59:59-14:00", "is out of range"),
    Value("year-3000", "3000-01-01T00:00:00+00:00", "is out of range"),
    Value("two-days-ahead", "2026-03-04T10:30:00+00:00", "is more than a day in the future"),
    Value("older-than-the-regimen", "2025-01-01T10:00:00+00:00", "is older than the regimen"),
    Value("epoch", "1970-01-01T00:00:00Z", "is older than the regimen"),
    Value("trailing-nul", "2026-03-02T10:00:00+00:00\x00", NOT_ISO, csv=False),
    Value("rtl-override", f"2026-03-02T10:00:00+00:00{RTL_OVERRIDE}", NOT_ISO),
    Value("fullwidth-digits", "\uff12\uff10\uff12\uff16-03-02T10:00:00+00:00", NOT_ISO),
    Value("sql-injection", "2026-03-02T10:00:00+00:00'; DROP TABLE patients; --", NOT_ISO),
    Value(
        "longer-than-64", "2026-03-02T10:00:00.000000+00:00" + " " * 40 + "x", NOT_ISO, api=TOO_LONG
    ),
    Value("epoch-seconds", 1772447400, "is required", api=NOT_A_STRING, csv=False),
]


@dataclass(frozen=True)
class Case:
    """One bad request: its body (a dict, RawJson, or bytes), where the 422 points, and why."""

    id: str
    body: Any
    loc: tuple[str | int, ...]
    reason: str


def _field_cases(field: str, values: list[Value], *, loc: tuple[str | int, ...]) -> list[Case]:
    return [Case(f"{field}-{v.id}", {field: v.value}, loc, v.api_reason) for v in values]


def enrolment_cases() -> list[Case]:
    """Bad bodies for ``POST /api/v1/sessions``; ``body`` holds the changes to a good body
    (``patient.X`` keys for the patient's fields, ``...`` to remove a field) or raw bytes."""
    patient = ("body", "patient")
    cases: list[Case] = []
    for field, values in (
        ("name", NAMES),
        ("phone", PHONES),
        ("email", EMAILS),
        ("timezone", ZONES),
    ):
        cases += [
            Case(
                f"patient.{field}-{v.id}",
                {f"patient.{field}": v.value},
                (*patient, field),
                v.api_reason,
            )
            for v in values
        ]
    cases += [
        Case(f"treated_at-{v.id}", {"treated_at": v.value}, ("body", "treated_at"), v.api_reason)
        for v in INSTANTS
    ]
    cases += [
        # Shape.
        Case("not-json", b'{"patient": ', ("body",), "JSON decode error"),
        Case("not-utf8", b"\xff\xfe{}", ("body",), ""),
        Case("a-list", b"[]", ("body",), "valid dictionary"),
        Case("a-string", b'"enrol Jane"', ("body",), "valid dictionary"),
        Case("null", b"null", ("body",), "valid dictionary"),
        Case("patient-missing", {"patient": ...}, patient, "Field required"),
        Case("patient-a-string", {"patient": "Jane Doe"}, patient, "valid dictionary"),
        Case("name-missing", {"patient.name": ...}, (*patient, "name"), "Field required"),
        Case("name-empty", {"patient.name": ""}, (*patient, "name"), "at least 1 character"),
        Case("name-null", {"patient.name": None}, (*patient, "name"), NOT_A_STRING),
        Case("treated_at-missing", {"treated_at": ...}, ("body", "treated_at"), "Field required"),
        Case("unknown-field", {"admin": True}, ("body", "admin"), "Extra inputs are not permitted"),
        Case("unknown-patient-field", {"patient.id": 1}, (*patient, "id"), "Extra inputs"),
        # Channels, and the contact each needs.
        Case("channels-empty", {"patient.channels": []}, (*patient, "channels"), "at least 1 item"),
        Case(
            "channels-a-string", {"patient.channels": "sms"}, (*patient, "channels"), "valid list"
        ),
        Case(
            "channels-fax",
            {"patient.channels": ["fax"]},
            (*patient, "channels", 0),
            "'sms' or 'email'",
        ),
        Case(
            "channels-null-item",
            {"patient.channels": [None]},
            (*patient, "channels", 0),
            "'sms' or 'email'",
        ),
        Case(
            "channels-twice",
            {"patient.channels": ["sms", "sms"]},
            (*patient, "channels", 1),
            "is listed twice",
        ),
        Case(
            "channels-three",
            {"patient.channels": ["sms", "email", "sms"]},
            (*patient, "channels"),
            "at most 2 items",
        ),
        Case(
            "sms-without-phone", {"patient.phone": ...}, (*patient, "phone"), "is required for SMS"
        ),
        Case(
            "email-without-email",
            {"patient.email": None},
            (*patient, "email"),
            "is required for email",
        ),
        # Regimen and parameters.
        Case(
            "regimen-unknown",
            {"regimen": "laser-resurfacing"},
            ("body", "regimen"),
            "unknown regimen",
        ),
        Case(
            "regimen-traversal",
            {"regimen": "../../etc/passwd"},
            ("body", "regimen"),
            "unknown regimen",
        ),
        Case(
            "regimen-sql",
            {"regimen": "x'; DROP TABLE reminders; --"},
            ("body", "regimen"),
            "unknown regimen",
        ),
        Case("regimen-empty", {"regimen": ""}, ("body", "regimen"), "at least 1 character"),
        Case("regimen-a-number", {"regimen": 1}, ("body", "regimen"), NOT_A_STRING),
        Case(
            "daily_days-10",
            {"parameters": {"daily_days": 10}},
            ("body", "parameters", "daily_days"),
            "must be one of 7, 14",
        ),
        Case(
            "daily_days-words",
            {"parameters": {"daily_days": "fourteen"}},
            ("body", "parameters", "daily_days"),
            "must be a whole number",
        ),
        Case(
            "daily_days-sql",
            {"parameters": {"daily_days": "14; DROP TABLE x"}},
            ("body", "parameters", "daily_days"),
            "must be a whole number",
        ),
        Case(
            "daily_days-float",
            {"parameters": {"daily_days": 14.5}},
            ("body", "parameters", "daily_days"),
            "valid",
        ),
        Case(
            "daily_days-bool",
            {"parameters": {"daily_days": True}},
            ("body", "parameters", "daily_days"),
            "valid",
        ),
        Case(
            "checkin_week-99",
            {"parameters": {"checkin_week": 99}},
            ("body", "parameters", "checkin_week"),
            "must be at most 13",
        ),
        Case(
            "checkin_week-negative",
            {"parameters": {"checkin_week": -1}},
            ("body", "parameters", "checkin_week"),
            "must be at least 8",
        ),
        Case(
            "checkin_week-huge",
            {"parameters": {"checkin_week": 10**30}},
            ("body", "parameters", "checkin_week"),
            "must be at most 13",
        ),
        Case(
            "garment-unknown",
            {"parameters": {"garment": "knee"}},
            ("body", "parameters", "garment"),
            "must be one of",
        ),
        Case(
            "parameter-unknown",
            {"parameters": {"dose_ml": 3}},
            ("body", "parameters", "dose_ml"),
            "is not a parameter of regimen",
        ),
        Case(
            "parameters-a-list",
            {"parameters": [14, 10]},
            ("body", "parameters"),
            "valid dictionary",
        ),
        Case(
            "parameters-too-many",
            {"parameters": {f"p{i}": 1 for i in range(21)}},
            ("body", "parameters"),
            "at most 20 items",
        ),
        # Confirmations.
        Case(
            "consent-false",
            {"consent": False},
            ("body", "consent"),
            "consent to messages must be confirmed",
        ),
        Case("consent-missing", {"consent": ...}, ("body", "consent"), "Field required"),
        Case("consent-maybe", {"consent": "maybe"}, ("body", "consent"), "valid boolean"),
        Case("consent-null", {"consent": None}, ("body", "consent"), "valid boolean"),
        # JSON has booleans: a string or a number is not staff confirming anything.
        Case("consent-string-true", {"consent": "true"}, ("body", "consent"), "valid boolean"),
        Case("consent-string-yes", {"consent": "yes"}, ("body", "consent"), "valid boolean"),
        Case("consent-one", {"consent": 1}, ("body", "consent"), "valid boolean"),
        Case("consent-one-float", {"consent": 1.0}, ("body", "consent"), "valid boolean"),
        Case(
            "checklist-string-true",
            {"contraindications_checked": "true"},
            ("body", "contraindications_checked"),
            "valid boolean",
        ),
        Case(
            "checklist-one",
            {"contraindications_checked": 1},
            ("body", "contraindications_checked"),
            "valid boolean",
        ),
        Case(
            "checklist-false",
            {"contraindications_checked": False},
            ("body", "contraindications_checked"),
            "contraindication checklist",
        ),
    ]
    return cases


PATCH_FIELDS = {"name": NAMES, "phone": PHONES, "email": EMAILS, "timezone": ZONES}


def patch_cases() -> list[Case]:
    """Bad bodies for ``PATCH /api/v1/patients/{id}`` (the patient has SMS and email)."""
    cases: list[Case] = []
    for field, values in PATCH_FIELDS.items():
        cases += [
            Case(f"{field}-{v.id}", {field: v.value}, ("body", field), v.api_reason)
            for v in values
            # Blank names are "is required" here too; a bare "" has no schema minimum.
        ]
    cases += [
        Case("name-empty", {"name": ""}, ("body", "name"), "is required"),
        Case("phone-null-while-sms", {"phone": None}, ("body", "phone"), "is required for SMS"),
        Case("email-null-while-email", {"email": None}, ("body", "email"), "is required for email"),
        Case("channels-empty", {"channels": []}, ("body", "channels"), "choose at least one"),
        Case("channels-fax", {"channels": ["fax"]}, ("body", "channels", 0), "'sms' or 'email'"),
        Case(
            "channels-twice",
            {"channels": ["email", "email"]},
            ("body", "channels", 1),
            "is listed twice",
        ),
        Case("channels-a-string", {"channels": "sms"}, ("body", "channels"), "valid list"),
        Case(
            "unknown-field",
            {"erased_at": None},
            ("body", "erased_at"),
            "Extra inputs are not permitted",
        ),
        Case("public-id", {"public_id": "0" * 32}, ("body", "public_id"), "Extra inputs"),
        Case("a-list", [{"name": "Jane"}], ("body",), "valid dictionary"),
        Case("not-json", b'{"name": "Ja', ("body",), "JSON decode error"),
        Case("not-utf8", b'{"name": "\xff"}', ("body",), ""),
    ]
    return cases


# CSV import ----------------------------------------------------------------------------------

CSV_FIELDS = {
    "name": NAMES,
    "phone": PHONES,
    "email": EMAILS,
    "timezone": ZONES,
    "treated_at": INSTANTS,
}
CSV_EXTRA = [
    # (id, column, value, reason)
    ("name-empty", "name", "", "is required"),
    ("channels-fax", "channels", "sms,fax", "must be 'sms' or 'email'"),
    ("channels-twice", "channels", "email;email", "is listed twice"),
    ("regimen-unknown", "regimen", "laser-resurfacing", "unknown regimen"),
    ("regimen-traversal", "regimen", "../../etc/passwd", "unknown regimen"),
    ("daily_days-10", "daily_days", "10", "must be one of 7, 14"),
    ("daily_days-words", "daily_days", "fourteen", "must be a whole number"),
    ("checkin_week-99", "checkin_week", "99", "must be at most 13"),
    ("checkin_week-formula", "checkin_week", "=1+9", "must be a whole number"),
    ("consent-no", "consent", "no", "(write yes, true or 1)"),
    ("consent-empty", "consent", "", "(write yes, true or 1)"),
    ("checklist-no", "contraindications_checked", "N", "(write yes, true or 1)"),
    ("treated_at-missing", "treated_at", "", "is required"),
]


def csv_row_cases() -> list[tuple[str, str, str, str]]:
    """(id, column, cell, reason): one bad cell in an otherwise good row."""
    cases = [
        (f"{column}-{v.id}", column, v.value, v.reason)
        for column, values in CSV_FIELDS.items()
        for v in values
        if v.csv
    ]
    return cases + CSV_EXTRA


GOOD_ROW = {
    "name": "Philippa Quennell",
    "phone": "07911 123456",
    "email": "philippa.quennell@example.org",
    "timezone": "Europe/London",
    "channels": "sms,email",
    "treated_at": "2026-03-02T10:00:00+00:00",
    "regimen": "micro-sclerotherapy",
    "daily_days": "14",
    "checkin_week": "10",
    "consent": "yes",
    "contraindications_checked": "yes",
}
HEADER = ",".join(GOOD_ROW)
GOOD_LINE = ",".join(f'"{v}"' for v in GOOD_ROW.values())

# Files that cannot be imported at all: (id, bytes, what the one error line says).
CSV_FILES = [
    (
        "not-utf8",
        (HEADER + "\n" + GOOD_LINE.replace("Philippa", "Ph\xefl")).encode("latin-1"),
        "is not UTF-8 text",
    ),
    ("utf16", (HEADER + "\n" + GOOD_LINE).encode("utf-16"), "is not UTF-8 text"),
    (
        "nul-byte",
        (HEADER + "\n" + GOOD_LINE.replace("Quennell", "Quen\x00nell")).encode(),
        "contains NUL bytes",
    ),
    ("empty", b"", "is empty"),
    ("blank-lines-only", b"\n\n  \n", "is empty"),
    (
        "header-only-blank-first",
        ("\n" + HEADER + "\n" + GOOD_LINE).encode(),
        "starts with a blank line",
    ),
    (
        "unknown-column",
        (HEADER + ",password\n" + GOOD_LINE + ",x").encode(),
        "unknown column 'password'",
    ),
    (
        "column-twice",
        (HEADER + ",name\n" + GOOD_LINE + ",x").encode(),
        "column 'name' appears twice",
    ),
    ("missing-column", ",".join(list(GOOD_ROW)[1:]).encode() + b"\n", "missing column 'name'"),
    ("semicolons", HEADER.replace(",", ";").encode() + b"\n", "is not comma-separated"),
    (
        "unclosed-quote",
        (HEADER + '\n"Philippa Quennell,07911 123456').encode(),
        "is not a valid CSV file",
    ),
    (
        "one-megabyte-cell",
        (HEADER + "\n" + GOOD_LINE.replace("Philippa", "P" * MB)).encode(),
        "is not a valid CSV file",
    ),
    ("sql-column", (HEADER + ',"name; DROP TABLE patients"\n').encode(), "unknown column"),
]


# Twilio webhooks (signed with the right token: the signature is not what is wrong) --------------

# Regimen files ---------------------------------------------------------------------------------

REGIMEN = """\
id: sample
name: A sample regimen
version: 1
parameters:
  days:
    type: int
    default: 7
    choices: [7, 14]
  week:
    type: int
    default: 10
    min: 8
    max: 13
steps:
  - id: start
    title: Start
    at:
      elapsed: 72h
    channels: [sms, email]
    critical: true
  - id: morning
    title: Morning
    at:
      after_step: start
      next: "08:00"
    repeat:
      count: {param: days}
    channels: [sms, email]
    valid_for: 4h
  - id: checkin
    title: Check-in
    at:
      day: {param: week, times: 7}
      time: "10:00"
    channels: [email]
"""


def _regimen(old: str, new: str) -> str:
    assert REGIMEN.count(old) == 1, old
    return REGIMEN.replace(old, new)


_LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)).replace(
    "*l0", '"lol"'
)

# Nine levels of nine aliases: 387 million "lol"s if anything expanded them.
_STEPS_OF_LAUGHS = (
    'steps: [&l1 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"], '
    + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(2, 10))
    + "]\n"
)

# (id, file text, the key path named, a fragment of the reason)
REGIMENS = [
    ("not-yaml", _regimen("name: A sample regimen", "name: [unclosed"), "<root>", "not valid YAML"),
    (
        "python-object-tag",
        "!!python/object/apply:os.system ['touch /tmp/pwned']\n",
        "<root>",
        "not valid YAML",
    ),
    ("billion-laughs", _LAUGHS, "l1", "unknown key"),
    (
        "billion-laughs-as-steps",
        REGIMEN.split("steps:", maxsplit=1)[0] + _STEPS_OF_LAUGHS,
        "steps[0]",
        "must be a mapping",
    ),
    ("recursive-anchor", "&a [*a]\n", "<root>", "must be a mapping"),
    (
        "recursive-steps",
        REGIMEN.split("steps:", maxsplit=1)[0] + "steps: &s\n  - *s\n",
        "steps[0]",
        "must be a mapping",
    ),
    ("deeply-nested", "[" * 5_000 + "]" * 5_000, "<root>", "nested too deeply"),
    ("duplicate-key", _regimen("version: 1", "version: 1\nversion: 2"), "version", "duplicate key"),
    (
        "version-a-string",
        _regimen("version: 1", "version: 'one'"),
        "version",
        "positive whole number",
    ),
    ("version-float", _regimen("version: 1", "version: 1.5"), "version", "positive whole number"),
    ("version-huge", _regimen("version: 1", "version: 99999999999999999999"), "version", "at most"),
    ("name-a-list", _regimen("name: A sample regimen", "name: [a, b]"), "name", "non-empty text"),
    (
        "name-nul",
        _regimen("name: A sample regimen", 'name: "A\\0b"'),
        "name",
        "control or invisible",
    ),
    (
        "title-rtl",
        _regimen("title: Start", 'title: "Start\\u202e"'),
        "steps[0].title",
        "control or invisible",
    ),
    (
        "steps-a-mapping",
        REGIMEN.split("steps:", maxsplit=1)[0] + "steps: {start: 1}\n",
        "steps",
        "non-empty list",
    ),
    (
        "unknown-top-level-key",
        _regimen("version: 1", "version: 1\nadmin: true"),
        "admin",
        "unknown key",
    ),
    (
        "critical-a-string",
        _regimen("critical: true", "critical: 'yes'"),
        "steps[0].critical",
        "true or false",
    ),
    (
        "negative-duration",
        _regimen("elapsed: 72h", "elapsed: -72h"),
        "steps[0].at.elapsed",
        "duration",
    ),
    (
        "negative-valid_for",
        _regimen("valid_for: 4h", "valid_for: -4h"),
        "steps[1].valid_for",
        "duration",
    ),
    (
        "huge-duration",
        _regimen("elapsed: 72h", "elapsed: 99999999999999999999d"),
        "steps[0].at.elapsed",
        "at most 366 days",
    ),
    (
        "ten-years-in-hours",
        _regimen("elapsed: 72h", "elapsed: 87600h"),
        "steps[0].at.elapsed",
        "at most 366 days",
    ),
    (
        "huge-valid_for",
        _regimen("valid_for: 4h", "valid_for: 1000000m"),
        "steps[1].valid_for",
        "at most 366 days",
    ),
    (
        "huge-day",
        _regimen("day: {param: week, times: 7}", "day: 99999999999"),
        "steps[2].at.day",
        "at most 366",
    ),
    (
        "negative-day",
        _regimen("day: {param: week, times: 7}", "day: -1"),
        "steps[2].at.day",
        "must not be negative",
    ),
    (
        "huge-times",
        _regimen("times: 7}", "times: 99999999999999}"),
        "steps[2].at.day",
        "must stay between 0 and 366",
    ),
    (
        "plus-before-treatment",
        _regimen("times: 7}", "times: 7, plus: -1000}"),
        "steps[2].at.day",
        "must stay between 0 and 366",
    ),
    (
        "times-bool",
        _regimen("times: 7}", "times: true}"),
        "steps[2].at.day",
        "positive whole number",
    ),
    ("times-zero", _regimen("times: 7}", "times: 0}"), "steps[2].at.day", "positive whole number"),
    (
        "huge-parameter-max",
        _regimen("max: 13", "max: 99999999999999999999999"),
        "steps[2].at.day",
        "must stay between 0 and 366",
    ),
    (
        "huge-repeat-count",
        _regimen("count: {param: days}", "count: 99999999"),
        "steps[1].repeat.count",
        "at most 366",
    ),
    (
        "huge-every_days",
        _regimen("count: {param: days}", "count: {param: days}\n      every_days: 99999999999"),
        "steps[1].repeat.every_days",
        "at most 366",
    ),
    (
        "every_days-bool",
        _regimen("count: {param: days}", "count: {param: days}\n      every_days: true"),
        "steps[1].repeat.every_days",
        "positive whole number",
    ),
    (
        "default-infinite",
        _regimen("default: 10", "default: .inf"),
        "parameters.week.default",
        "whole number",
    ),
    ("empty-file", "", "<root>", "must be a mapping"),
]


# Templates ----------------------------------------------------------------------------------------

# (id, SMS template text, a fragment of the reason). Rendered with a context that has first_name.
TEMPLATES = [
    (
        "class-mro-subclasses",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "refused by the sandbox",
    ),
    (
        "cycler-globals",
        "{{ cycler.__init__.__globals__.os.system('id') }}",
        "refused by the sandbox",
    ),
    ("joiner-globals", "{{ joiner.__init__.__globals__ }}", "refused by the sandbox"),
    ("namespace-globals", "{{ namespace.__init__.__globals__ }}", "refused by the sandbox"),
    ("self-globals", "{{ self.__init__.__globals__ }}", "refused by the sandbox"),
    ("attr-filter", "{{ cycler|attr('__init__')|attr('__globals__') }}", "undefined"),
    ("format-string", "{{ '{0.__class__.__mro__}'.format(first_name) }}", "refused by the sandbox"),
    ("mutate-a-list", "{% set items = [] %}{{ items.append(1) }}", "refused by the sandbox"),
    (
        "undefined-variable",
        "Hello {{ frist_name }}, keep your stockings on.",
        "'frist_name' is undefined",
    ),
    ("range-of-a-billion", "{% for i in range(10**9) %}x{% endfor %}", "MAX_RANGE"),
    ("range-just-over-the-limit", "{% for i in range(100001) %}{% endfor %}ok", "MAX_RANGE"),
    ("string-times-a-billion", "{{ 'x' * 10**9 }}", "repetition longer than"),
    ("list-times-a-billion", "{{ [1] * 10**9 }}", "repetition longer than"),
    ("power-tower", "{{ 2 ** (10 ** 9) }}", "too large"),
    ("lipsum-megabytes", "{{ lipsum(10**6) }}", "'lipsum' is undefined"),
    ("include-outside-the-folder", "{% include '../../../etc/passwd' %}", "template not found"),
    ("import-a-module", "{% import 'os' as os %}{{ os.system('id') }}", "template not found"),
    ("division-by-zero", "{{ 1 / 0 }}", "ZeroDivisionError"),
    ("syntax-error", "{% for %}", "Expected an expression"),
    (
        "too-long-sms",
        "Hello {{ first_name }}. " + "Keep your stockings on all day. " * 12,
        "segment(s); it must be GSM-7 in at most 2",
    ),
    ("not-gsm", "Hello {{ first_name }} \u202e", "not GSM-7"),
    ("empty", "{# nothing #}", "SMS body is empty"),
]

# Names that are text, not code: stored and shown as typed, never evaluated.
INJECTION_NAMES = [
    "{{7*7}} Smith",
    "{%raw%}Jane{%endraw%} Doe",
    "{{cycler.__init__.__globals__}} Doe",
    "{#hidden#} Doe",
    "Robert');DROP_TABLE_patients;-- Tables",
    "<script>alert(1)</script> Doe",
    "${7*7}#{7*7} Doe",
]
