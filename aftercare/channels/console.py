"""Development transport: print each message to standard output (not to the log)."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Literal, TextIO

from aftercare.channels.base import EmailMessage, LookupUnsupported, Message, SendResult


class ConsoleTransport:
    name = "console"

    def __init__(self, channel: Literal["sms", "email"], stream: TextIO | None = None) -> None:
        self.channel = channel
        self._stream = stream

    def send(self, message: Message) -> SendResult:
        out = self._stream or sys.stdout
        if isinstance(message, EmailMessage):
            out.write(f"--- email {message.key} to {message.to}: {message.subject}\n")
            out.write(message.text.rstrip() + "\n---\n")
        else:
            out.write(f"--- sms {message.key} to {message.to}\n{message.body}\n---\n")
        out.flush()
        return SendResult(provider_id=f"console-{message.key}")

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        raise LookupUnsupported("the console keeps no record")
