"""The SMTP transport keeps connections open between messages: a batch's emails over one
session, RSET after a refused message, a new connection when the server dropped the kept one.
Against a real SMTP server (aiosmtpd) on a loopback port, counting its connections."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from aftercare.channels.base import TransportError
from aftercare.channels.smtp import transport as smtp_email
from tests.channels.test_smtp import (
    LoopbackServer,
    Recorder,
    StartServer,
    sample_email,
    start_server,  # noqa: F401 - the fixture
    transport,
)


@dataclass
class Counting(Recorder):
    """A Recorder that also counts greetings (one EHLO per new connection) and RSETs."""

    greetings: int = 0
    resets: int = 0
    events: list[str] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.greetings += 1
        session.host_name = hostname
        return responses

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.resets += 1
        return "250 OK"


def url(server: LoopbackServer) -> str:
    return f"smtp://127.0.0.1:{server.port}?starttls=off&timeout=5"


def test_send_when_several_emails_then_one_connection_carries_them(
    start_server: StartServer,  # noqa: F811
) -> None:
    server = start_server(Counting())
    smtp = transport(url(server))
    for i in range(5):
        smtp.send(sample_email(key=f"reminder-{i}"))
    smtp.close()
    assert len(server.recorder.received) == 5
    assert server.recorder.greetings == 1


def test_send_when_a_message_is_refused_then_rset_and_the_next_goes_on_the_same_connection(
    start_server: StartServer,  # noqa: F811
) -> None:
    recorder = Counting()
    server = start_server(recorder)
    smtp = transport(url(server))
    smtp.send(sample_email(key="reminder-1"))
    recorder.rcpt_reply = "550 5.1.1 No such user"
    with pytest.raises(TransportError) as refused:
        smtp.send(sample_email(key="reminder-2"))
    assert refused.value.permanent
    assert not refused.value.ambiguous
    recorder.rcpt_reply = None
    recorder.data_replies.append("451 4.3.0 Try again later")
    with pytest.raises(TransportError) as deferred:
        smtp.send(sample_email(key="reminder-3"))
    assert not deferred.value.permanent
    smtp.send(sample_email(key="reminder-4"))
    smtp.close()
    assert recorder.resets == 2
    assert recorder.greetings == 1
    assert len(recorder.received) == 2  # 1 and 4


def test_send_when_the_server_dropped_the_kept_connection_then_sent_on_a_new_one(
    start_server: StartServer,  # noqa: F811
) -> None:
    recorder = Counting()
    # The server hangs up on a client that says nothing for half a second.
    server = start_server(recorder, timeout=0.5)
    smtp = transport(url(server))
    smtp.send(sample_email(key="reminder-1"))
    time.sleep(1.5)
    smtp.send(sample_email(key="reminder-2"))  # no error: nothing of it had gone out
    smtp.close()
    assert [b"reminder-1" in r.data for r in recorder.received] == [True, False]
    assert len(recorder.received) == 2
    assert recorder.greetings == 2


def test_send_when_the_kept_connection_waited_too_long_then_a_new_one_is_opened(
    start_server: StartServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Counting()
    server = start_server(recorder)
    now = [1000.0]
    smtp = smtp_email.SmtpTransport(
        config=smtp_email.parse_smtp_url(url(server)),
        sender="care@riverside.example",
        monotonic=lambda: now[0],
    )
    smtp.send(sample_email(key="reminder-1"))
    now[0] += smtp_email.IDLE_SECONDS / 2
    smtp.send(sample_email(key="reminder-2"))
    now[0] += smtp_email.IDLE_SECONDS + 1
    smtp.send(sample_email(key="reminder-3"))
    smtp.close()
    assert len(recorder.received) == 3
    assert recorder.greetings == 2


def test_send_when_the_body_went_out_on_a_kept_connection_and_no_answer_then_not_resent(
    start_server: StartServer,  # noqa: F811
) -> None:
    """Only a connection lost before the body is retried on a new one: after it, the server
    may have queued the message, so the failure is ambiguous and left to delivery."""
    recorder = Counting()
    server = start_server(recorder)
    smtp = smtp_email.SmtpTransport.from_url(
        f"smtp://127.0.0.1:{server.port}?starttls=off&timeout=1", sender="care@riverside.example"
    )
    smtp.send(sample_email(key="reminder-0"))
    recorder.stall_after_data = 3
    with pytest.raises(TransportError) as lost:
        smtp.send(sample_email(key="reminder-1"))
    assert lost.value.ambiguous
    smtp.close()
    assert len(recorder.received) == 2
    assert recorder.greetings == 1
