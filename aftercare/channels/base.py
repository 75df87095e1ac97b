"""The transport interface. Channels know nothing of the web or the database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol


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
