"""SMS encoding: GSM-7 or UCS-2, how many units a text costs and how many segments it needs.

GSM-7 (3GPP TS 23.038) packs 160 septets into one message, or 153 per part once a message is
split (the user data header takes the rest). Characters of the extension table cost two
septets (an escape plus the character), and a pair is never split across parts. Any character
outside both tables forces the whole message into UCS-2: 70 UTF-16 code units in one message,
67 per part, and a surrogate pair is never split either.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

# The basic table, minus 0x1B (the escape to the extension table, never a character by itself).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

_SINGLE = {"GSM-7": 160, "UCS-2": 70}
_PART = {"GSM-7": 153, "UCS-2": 67}

# Typographic characters that commonly arrive in names and pasted text, and their GSM-7 stand-ins.
_TRANSLITERATE = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "`": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
    "\u2212": "-", "\u2026": "...", "\u2022": "-", "\t": " ",
    "\u00a0": " ", "\u2007": " ", "\u2009": " ", "\u202f": " ",
    "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "ı": "i", "Œ": "OE", "œ": "oe",
    "Þ": "Th", "þ": "th", "Ð": "D", "ð": "d",
}  # fmt: skip


@dataclass(frozen=True)
class SmsEncoding:
    """How an SMS body will be sent: its encoding, its cost in units and its segment count."""

    encoding: Encoding
    units: int
    segments: int


def _cost(char: str, encoding: Encoding) -> int:
    if encoding == "UCS-2":
        return 2 if ord(char) > 0xFFFF else 1
    return 2 if char in GSM7_EXTENSION else 1


def is_gsm7(text: str) -> bool:
    """Whether every character of ``text`` is in the GSM-7 basic or extension table."""
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def non_gsm_characters(text: str) -> list[str]:
    """The distinct characters of ``text`` that GSM-7 cannot carry, in order of appearance."""
    return list(dict.fromkeys(c for c in text if c not in GSM7_BASIC and c not in GSM7_EXTENSION))


def sms_encoding(text: str) -> SmsEncoding:
    """The encoding ``text`` needs, its length in septets (GSM-7) or UTF-16 code units (UCS-2),
    and the number of segments it will be sent as (an empty text is still one message)."""
    encoding: Encoding = "GSM-7" if is_gsm7(text) else "UCS-2"
    costs = [_cost(c, encoding) for c in text]
    units = sum(costs)
    if units <= _SINGLE[encoding]:
        return SmsEncoding(encoding, units, 1)
    # Pack part by part: an escape pair or a surrogate pair never straddles two parts.
    capacity = _PART[encoding]
    segments, used = 1, 0
    for cost in costs:
        if used + cost > capacity:
            segments, used = segments + 1, 0
        used += cost
    return SmsEncoding(encoding, units, segments)


def _gsm7_form(char: str) -> tuple[str, bool]:
    """``char`` in GSM-7, and whether it survives: as itself, a listed stand-in, or its base
    letter without the accents (combining marks) GSM-7 lacks. A character with no such form
    (李, a Cyrillic letter, an emoji) does not survive, and becomes nothing."""
    if char in GSM7_BASIC or char in GSM7_EXTENSION:
        return char, True
    if char in _TRANSLITERATE:
        return _TRANSLITERATE[char], True
    # Letters with accents GSM-7 lacks decompose into a base letter plus combining marks.
    base = unicodedata.normalize("NFKD", char)
    kept = "".join(c for c in base if c in GSM7_BASIC or c in GSM7_EXTENSION)
    lost = any(
        c not in GSM7_BASIC and c not in GSM7_EXTENSION and not unicodedata.combining(c)
        for c in base
    )
    # A spacing accent (U+00A8 diaeresis, U+00B4 acute) decomposes into a space and a mark:
    # only the space would be left.
    return kept, bool(kept.strip()) and not lost


def survives_gsm7(text: str) -> bool:
    """Whether every character of ``text`` has a GSM-7 form (see to_gsm7), so that the text an
    SMS carries is still the whole of ``text``: "Zoë" does (Zoe), "李 Wang" and
    a Cyrillic "JOHN" do not."""
    return all(_gsm7_form(c)[1] for c in unicodedata.normalize("NFC", text))


def to_gsm7(text: str) -> str:
    """``text`` with characters GSM-7 cannot carry replaced by close stand-ins, or dropped.

    For values that come from outside the templates (Zoë becomes Zoe, a curly apostrophe a
    straight one), so that one patient's accented name does not push a whole SMS into UCS-2.
    """
    return "".join(_gsm7_form(char)[0] for char in text)
