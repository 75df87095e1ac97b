"""The providers at the network edge: the tests' loopback fake of Twilio's Messages API and an
aiosmtpd sink, both recording when each message arrived (wall clock)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller

from bench.infra import free_port
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

__all__ = ["ACCOUNT_SID", "AUTH_TOKEN", "SENDER", "SmtpSink", "Twilio"]

SENDER = "+15005550006"
_KEY = b"X-Aftercare-Key: "


class Twilio:
    """The tests' fake Twilio (TCP_NODELAY: prompt answers), with receive times on the wall
    clock."""

    def __init__(self, *, mps: float | None = None) -> None:
        self.fake = FakeTwilio(mps=mps)
        # FakeTwilio stamps time.monotonic(); lateness is measured against wall-clock due times.
        self._offset = time.time() - time.monotonic()

    def __enter__(self) -> Twilio:
        self.fake.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.fake.stop()

    @property
    def url(self) -> str:
        return self.fake.url

    def accepted(self) -> list[float]:
        """Wall-clock receive times of the messages the fake accepted (answered 201)."""
        return [r.at + self._offset for r in list(self.fake.received) if r.answer == "201"]

    def accepted_sids(self) -> list[str]:
        return [r.sid for r in list(self.fake.received) if r.answer == "201" and r.sid]

    def refused(self, status: str = "429") -> int:
        return sum(1 for r in list(self.fake.received) if r.answer.startswith(status))

    def reset(self) -> None:
        with self.fake._lock:
            self.fake.received.clear()
            self.fake.messages.clear()
            self.fake._recent.clear()


@dataclass
class _Recorder:
    times: list[float] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or b""
        start = data.find(_KEY)
        key = ""
        if start >= 0:
            end = data.find(b"\r\n", start)
            key = data[start + len(_KEY) : end].decode("ascii", "replace").strip()
        with self.lock:
            self.times.append(time.time())
            self.keys.append(key)
        return "250 OK"


class SmtpSink:
    """aiosmtpd on 127.0.0.1: accepts every message, keeps its arrival time and reminder key."""

    def __init__(self) -> None:
        self.recorder = _Recorder()
        self.port = free_port()
        self.controller = Controller(
            self.recorder, hostname="127.0.0.1", port=self.port, server_hostname="sink.bench"
        )

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?starttls=off"

    def accepted(self) -> list[float]:
        with self.recorder.lock:
            return list(self.recorder.times)

    def duplicates(self) -> int:
        with self.recorder.lock:
            keys = [k for k in self.recorder.keys if k]
        return len(keys) - len(set(keys))

    def reset(self) -> None:
        with self.recorder.lock:
            self.recorder.times.clear()
            self.recorder.keys.clear()
