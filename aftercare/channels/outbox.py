"""Development transport: write each message as a file under ``<data dir>/outbox/<channel>/``.

The file name is the message's idempotency key and is created exclusively, so the outbox can
answer "was this already sent?" exactly, like a provider's message log. ``sent.log`` records
every send call in order, duplicates included.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from datetime import datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Literal

from aftercare.channels.base import EmailMessage, Message, SendResult, SmsMessage
from aftercare.channels.smtp.mime import new_stamp, render_mime
from aftercare.private import append_private, private_dir, write_private


class OutboxTransport:
    name = "outbox"

    def __init__(self, channel: Literal["sms", "email"], folder: Path, sender: str = "") -> None:
        self.channel = channel
        self.folder = folder / channel
        self.sender = sender

    def _path(self, message: Message) -> Path:
        suffix = ".eml" if isinstance(message, EmailMessage) else ".json"
        return self.folder / f"{message.key}{suffix}"

    def send(self, message: Message) -> SendResult:
        private_dir(self.folder)
        path = self._path(message)
        data = _encode(message, self.sender)
        # Every call is recorded, duplicates included, so a duplicate send can be seen.
        append_private(self.folder / "sent.log", message.key + "\n")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.unlink(missing_ok=True)  # left by a killed process that had this pid
        write_private(tmp, data)
        try:
            # link() fails if the key exists: a second send of the same key changes nothing.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return SendResult(provider_id=self._provider_id(message))

    def _provider_id(self, message: Message) -> str:
        if isinstance(message, SmsMessage):
            # Shaped like Twilio's message SIDs (the status webhook accepts no other shape), so
            # a developer can post status callbacks for outbox messages; stable per key.
            return "SM" + hashlib.sha256(message.key.encode()).hexdigest()[:32]
        return f"outbox-{message.key}"

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        # The sent.log line is written first, in one write: a process killed after it (by
        # another of its send threads, say) has sent the message even if its file is missing.
        if self._path(message).exists() or self._logged(message.key):
            return SendResult(provider_id=self._provider_id(message))
        return None

    def _logged(self, key: str) -> bool:
        try:
            with (self.folder / "sent.log").open(encoding="utf-8") as log:
                return any(line.rstrip("\n") == key for line in log)
        except FileNotFoundError:
            return False


def forget_messages(folder: Path, keys: Iterable[str]) -> int:
    """Delete the messages with these keys from an outbox folder (an erased patient's), in every
    channel; ``sent.log`` keeps its keys, which are ids. Returns how many files went."""
    removed = 0
    for key in keys:
        for channel, suffix in (("sms", ".json"), ("email", ".eml")):
            path = folder / channel / f"{key}{suffix}"
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
    return removed


def _encode(message: Message, sender: str) -> bytes:
    if isinstance(message, SmsMessage):
        record = {"key": message.key, "to": message.to, "body": message.body}
        return json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8")
    # The same bytes the SMTP transport would send (CRLF line ends, RFC 2047 header words).
    sender = sender or "aftercare@localhost"
    stamp = new_stamp(message, domain=parseaddr(sender)[1].rpartition("@")[2] or None)
    return render_mime(message, sender=sender, stamp=stamp)
