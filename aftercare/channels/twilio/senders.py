"""``AFTERCARE_TWILIO_FROM``: one sender, or a pool of numbers (light: read by the settings)."""

from __future__ import annotations

import hashlib
import re

_E164 = re.compile(r"\+[1-9]\d{6,14}")


def parse_senders(value: str) -> tuple[str, ...]:
    """``AFTERCARE_TWILIO_FROM``: one sender (a number or an alphanumeric ID, as Twilio takes it),
    or a pool of E.164 numbers separated by commas. Raises ValueError naming a bad entry."""
    if "," not in value:
        return (value.strip(),) if value.strip() else ()
    senders = tuple(part.strip() for part in value.split(","))
    for position, sender in enumerate(senders, start=1):
        if not sender:
            raise ValueError(f"AFTERCARE_TWILIO_FROM: entry {position} of the list is empty")
        if not _E164.fullmatch(sender):
            raise ValueError(
                f"AFTERCARE_TWILIO_FROM: entry {position} ({sender!r}) is not an E.164 number "
                "such as +447700900123 (a list of senders holds numbers only)"
            )
        if sender in senders[: position - 1]:
            raise ValueError(f"AFTERCARE_TWILIO_FROM: {sender} is listed twice")
    return senders


def pick_sender(senders: tuple[str, ...], to: str) -> str:
    """The pool number that texts ``to``: always the same one for a number (a stable hash, not
    Python's per-process ``hash``), so a patient sees one sender and replies to it.

    Rendezvous hashing: each pool number scores the patient's number, the highest score wins.
    Adding a number to the pool moves only the patients it now wins (about one in the new pool
    size); removing one moves only that number's patients. (A hash modulo the pool size would
    move nearly every patient to a new sender whenever the pool changed.)
    """
    if len(senders) == 1:
        return senders[0]
    key = to.encode("utf-8")
    return max(
        senders, key=lambda sender: hashlib.sha256(sender.encode("utf-8") + b"|" + key).digest()
    )
