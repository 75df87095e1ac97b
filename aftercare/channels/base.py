"""The transport interface. Channels know nothing of the web or the database."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable


@dataclass(frozen=True)
class SmsMessage:
    key: str  # idempotency key, e.g. "reminder-42"; never patient data
    to: str
    body: str


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class EmailMessage:
    key: str
    to: str
    subject: str
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()


Message = SmsMessage | EmailMessage


@dataclass(frozen=True)
class SendResult:
    provider_id: str
    status: str = "sent"


@dataclass(frozen=True)
class Slot:
    """A sender's sending slot ``wait`` seconds from now: reserved for the caller when ``held``,
    else further away than the caller would wait, and nothing was reserved."""

    wait: float
    held: bool


class TransportError(Exception):
    """A failed send. ``permanent`` errors fail the reminder; the others are retried.

    ``opted_out`` means the provider says the recipient has withdrawn consent.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        code: str | None = None,
        opted_out: bool = False,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.code = code
        self.opted_out = opted_out
        # The request may have reached the provider: reconcile before any retry.
        self.ambiguous = ambiguous


class SlotMissed(Exception):
    """A paced send reached its reserved slot too late to use it: nothing was sent, and the slot
    passes unused. The caller reserves a new one (the message is not failed)."""

    def __init__(self, late: float) -> None:
        super().__init__(f"reached the sending slot {late * 1000:.0f} ms late")
        self.late = late


class LookupUnsupported(Exception):
    """The transport cannot tell whether an earlier send went through."""


class Transport(Protocol):
    name: str
    channel: Literal["sms", "email"]

    def send(self, message: Message) -> SendResult:
        """Hand one message to the provider, or raise TransportError."""
        ...

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        """Find a message already accepted for this key/recipient since ``since``, if any.

        Raises LookupUnsupported when the provider cannot be asked.
        """
        ...


@runtime_checkable
class PacedTransport(Transport, Protocol):
    """A transport whose provider takes a limited number of messages per second per sender.

    The caller reserves the messages' sending slots first, then sends each one with
    ``send(message, at=...)``, the monotonic time its slot was reserved for: the message goes at
    that moment, with no other wait and no second reservation. ``send(message)`` alone waits for
    a slot itself.
    """

    def reserve(self, messages: Sequence[Message], *, within: float) -> list[Slot]:
        """Reserve, in order, each message's sending slot if it is at most ``within`` seconds
        away (``held``); a slot further away is not reserved, and then neither is any later one
        of the same sender. Never sleeps.

        Raises TransportError (transient, nothing reserved) when the pacing cannot be asked.
        """
        ...

    def send(self, message: Message, *, at: float | None = None) -> SendResult:
        """Hand one message to the provider: at ``at`` (``time.monotonic()``) when its slot was
        reserved for then, else after waiting for a slot. Raises SlotMissed (nothing sent) when
        called too long after ``at``."""
        ...
