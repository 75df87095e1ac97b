"""Which sender texts a number: one sender, or a pool of numbers (``AFTERCARE_TWILIO_FROM``).

The sender is what Twilio paces (so many messages a second each): it is the transport's pacing
key, and the dispatcher evens a claim out over it (:func:`pacing_key`). Parsing the setting is
the settings' own job (:func:`aftercare.settings.parse_senders`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from aftercare.settings import parse_senders

if TYPE_CHECKING:
    from aftercare.settings import Settings

__all__ = ["SenderPool", "pacing_key", "parse_senders", "pick_sender"]
# Numbers whose sender a pool remembers (a send asks twice: reserving its slot, then sending).
_REMEMBERED = 10_000


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


class SenderPool:
    """Where SMS go from: a Messaging Service (which picks among its own numbers), one sender,
    or a pool of numbers with each patient always texted from the same one."""

    def __init__(self, senders: tuple[str, ...], *, messaging_service_sid: str = "") -> None:
        if not (senders or messaging_service_sid):
            raise ValueError("a sender pool needs a sender or a Messaging Service")
        self.senders = senders
        self.messaging_service_sid = messaging_service_sid
        self._picked: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> SenderPool:
        """The pool the settings describe (a Messaging Service overrides 'From')."""
        if settings.twilio_messaging_service_sid:
            return cls((), messaging_service_sid=settings.twilio_messaging_service_sid)
        return cls(parse_senders(settings.twilio_from))

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key messages are paced by: the service, or the number(s)."""
        return (self.messaging_service_sid,) if self.messaging_service_sid else self.senders

    def key(self, to: str) -> str:
        """The sender that texts ``to``, which its sends are paced by (hashed once a number)."""
        if self.messaging_service_sid:
            return self.messaging_service_sid
        picked = self._picked.get(to)
        if picked is None:
            if len(self._picked) >= _REMEMBERED:
                self._picked.clear()
            picked = self._picked[to] = pick_sender(self.senders, to)
        return picked


def pacing_key(settings: Settings) -> Callable[[str], str] | None:
    """Twilio's pacing key for a recipient's number when SMS go from a pool of numbers, else
    None (one sender, or a Messaging Service, which paces its own numbers)."""
    pool = SenderPool.from_settings(settings)
    return pool.key if len(pool.keys) > 1 else None
