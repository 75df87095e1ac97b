"""The httpx HTTP layer under the twilio client (aftercare/channels/twilio/http.py): the real
``twilio`` client and transport, against the fake Twilio, through real proxies and TLS on
loopback. What the stock requests-based client did, this one must do too: honour HTTPS_PROXY,
HTTP_PROXY and NO_PROXY, verify certificates (REQUESTS_CA_BUNDLE), send the same request, and
fail in a way that says whether the request may have reached Twilio.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from aftercare.channels.base import SmsMessage, TransportError
from aftercare.channels.twilio import http as twilio_http
from aftercare.channels.twilio.http import HttpxClient
from aftercare.channels.twilio.ratelimit import LocalRateLimiter
from aftercare.channels.twilio.transport import Timeouts, TwilioTransport
from tests.factories import PATIENT_PHONE
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.tcp_proxy import TcpProxy

_pipe = TcpProxy._pipe  # one direction of a relayed connection

CLINIC_NUMBER = "+447700900123"
STATUS_CALLBACK = "https://aftercare.example-clinic.co.uk/webhooks/twilio/status"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets exactly the proxy and CA variables it is about."""
    for name in (*PROXY_VARIABLES, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def transport(api_base: str, timeouts: Timeouts | None = None) -> TwilioTransport:
    return TwilioTransport(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        from_=CLINIC_NUMBER,
        status_callback=STATUS_CALLBACK,
        api_base=api_base,
        limiter=LocalRateLimiter(mps=1000),
        timeouts=timeouts,
    )


def sms(n: int = 1) -> SmsMessage:
    return SmsMessage(key=f"reminder-{n}", to=PATIENT_PHONE, body=f"Wear your stockings ({n}).")


def _relay(conn: socket.socket, upstream: socket.socket) -> None:
    """Pipe both ways until both sides are done, then close both."""
    back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
    back.start()
    _pipe(conn, upstream)
    back.join(10)
    upstream.close()
    conn.close()


def _serve(listener: socket.socket, handle: Any) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _listen(backlog: int = 64) -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    return listener


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """The request head (up to the blank line) and whatever followed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


class HttpProxy:
    """A forward proxy: CONNECT tunnels, and absolute-URL requests relayed to their origin.
    Records each connection's first request line and its Proxy-Authorization."""

    def __init__(self, *, require: str = "") -> None:
        self.require = require  # a Proxy-Authorization value to insist on, or ""
        self.seen: list[tuple[str, str]] = []
        self._listener = _listen()
        threading.Thread(target=_serve, args=(self._listener, self._handle), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        self._listener.close()

    def _handle(self, conn: socket.socket) -> None:
        head, rest = _read_head(conn)
        lines = head.decode("latin1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        auth = headers.get("Proxy-Authorization", "")
        self.seen.append((lines[0], auth))
        if self.require and auth != self.require:
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            split = requests.utils.urlparse(target)
            upstream = socket.create_connection((split.hostname, split.port))
            path = split.path + (f"?{split.query}" if split.query else "")
            kept = [f"{method} {path} {version}"]
            kept += [line for line in lines[1:] if not line.startswith("Proxy-")]
            upstream.sendall("\r\n".join(kept).encode("latin1") + b"\r\n\r\n" + rest)
        _relay(conn, upstream)


class TlsFront:
    """TLS in front of a plain-HTTP server (the fake), with the given certificate."""

    def __init__(self, target: str, cert: Path, key: Path) -> None:
        self.target = requests.utils.urlparse(target)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._listener = _listen()
        threading.Thread(target=_serve, args=(self._listener, self._handle), daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        self._listener.close()

    def _handle(self, conn: socket.socket) -> None:
        try:
            secure = self._context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        upstream = socket.create_connection((self.target.hostname, self.target.port))
        _relay(secure, upstream)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and localhost)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_fake(fake: FakeTwilio, certificate: tuple[Path, Path]) -> Iterator[TlsFront]:
    front = TlsFront(fake.url, *certificate)
    yield front
    front.close()


@pytest.fixture
def proxy() -> Iterator[HttpProxy]:
    server = HttpProxy()
    yield server
    server.close()


# Proxies and certificates --------------------------------------------------------------------


def test_https_proxy_with_credentials_then_tunnelled_and_certificate_checked_by_ca_bundle(
    fake: FakeTwilio,
    tls_fake: TlsFront,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user_proxy = HttpProxy(require=twilio_http.basic_auth("clinic", "p@ss word"))
    monkeypatch.setenv("HTTPS_PROXY", user_proxy.url.replace("//", "//clinic:p%40ss%20word@"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    sent = transport(tls_fake.url)
    for n in range(3):
        sent.send(sms(n))
    assert [r.answer for r in fake.received] == ["201"] * 3
    # One tunnel, kept alive for every send, opened with the proxy's credentials.
    port = tls_fake.url.rsplit(":", 1)[1]
    assert user_proxy.seen == [
        (f"CONNECT 127.0.0.1:{port} HTTP/1.1", twilio_http.basic_auth("clinic", "p@ss word"))
    ]
    user_proxy.close()


def test_http_proxy_then_request_sent_to_the_proxy_with_the_whole_url(
    fake: FakeTwilio, proxy: HttpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    transport(fake.url).send(sms())
    assert len(fake.received) == 1
    [(line, _)] = proxy.seen
    assert line == f"POST {fake.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json HTTP/1.1"


def test_no_proxy_names_the_host_then_sent_directly(
    fake: FakeTwilio, proxy: HttpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    transport(fake.url).send(sms())
    assert len(fake.received) == 1
    assert proxy.seen == []


def test_proxy_refuses_the_tunnel_then_transient_and_not_ambiguous(
    fake: FakeTwilio, tls_fake: TlsFront, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = HttpProxy(require="Basic bm9ib2R5Om5vdGhpbmc=")
    monkeypatch.setenv("HTTPS_PROXY", strict.url)
    with pytest.raises(TransportError) as refused:
        transport(tls_fake.url).send(sms())
    assert (refused.value.permanent, refused.value.ambiguous) == (False, False)
    assert refused.value.code == "connect"
    assert fake.received == []
    strict.close()


def test_untrusted_certificate_then_transient_and_not_ambiguous(
    fake: FakeTwilio, tls_fake: TlsFront
) -> None:
    with pytest.raises(TransportError) as refused:
        transport(tls_fake.url).send(sms())
    assert (refused.value.permanent, refused.value.ambiguous) == (False, False)
    assert refused.value.code == "connect"
    assert fake.received == []


def test_proxy_schemes_this_layer_does_not_speak_keep_the_stock_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "https://api.twilio.com"
    assert twilio_http.supported(url)
    monkeypatch.setenv("HTTPS_PROXY", "proxy.example:3128")  # no scheme: http, as requests says
    assert twilio_http.supported(url)
    assert twilio_http.proxy_for(url) == "http://proxy.example:3128"
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy.example:1080")
    assert not twilio_http.supported(url)
    monkeypatch.setenv("NO_PROXY", "twilio.com")
    assert twilio_http.supported(url)
    assert twilio_http.proxy_for(url) is None


# Errors ------------------------------------------------------------------------------------


def test_connect_timeout_then_transient_and_not_ambiguous() -> None:
    # A listener whose backlog is full: the handshake is never answered.
    listener = _listen(backlog=0)
    port = listener.getsockname()[1]
    held = socket.create_connection(("127.0.0.1", port))
    try:
        slow = transport(f"http://127.0.0.1:{port}", Timeouts(connect=0.3, read=5.0))
        with pytest.raises(TransportError) as refused:
            slow.send(sms())
    finally:
        held.close()
        listener.close()
    assert (refused.value.permanent, refused.value.ambiguous) == (False, False)
    assert refused.value.code == "connect"
    assert "ConnectTimeout" in refused.value.message


def test_connection_reset_after_sending_then_ambiguous(fake: FakeTwilio) -> None:
    fake.script("drop")
    with pytest.raises(TransportError) as dropped:
        transport(fake.url).send(sms())
    assert (dropped.value.ambiguous, dropped.value.code) == (True, "no-answer")
    assert len(fake.stored()) == 1


def test_idle_connection_closed_by_twilio_then_next_send_opens_a_new_one_not_ambiguous() -> None:
    """Twilio closes idle kept-alive connections; that must not make the next send ambiguous."""
    answer = json.dumps({"sid": "SM" + "0" * 32, "status": "queued"}).encode()
    served: list[int] = []
    closed = threading.Event()

    def one_answer_then_close(conn: socket.socket) -> None:
        _read_head(conn)
        served.append(1)
        conn.sendall(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(answer), answer)
        )
        conn.close()  # no "Connection: close": the client only finds out when it looks
        closed.set()

    listener = _listen()
    threading.Thread(target=_serve, args=(listener, one_answer_then_close), daemon=True).start()
    sender = transport(f"http://127.0.0.1:{listener.getsockname()[1]}")
    for n in range(3):
        closed.clear()
        assert sender.send(sms(n)).provider_id == "SM" + "0" * 32
        assert closed.wait(5)
    listener.close()
    assert len(served) == 3


def test_compressed_and_chunked_answer_is_read() -> None:
    """Twilio is asked for identity; an answer compressed anyway (by a proxy) is still read."""
    body = gzip.compress(json.dumps({"sid": "SM" + "1" * 32, "status": "queued"}).encode())

    def gzipped_chunks(conn: socket.socket) -> None:
        _read_head(conn)
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in (body[:half], body[half:]))
        conn.sendall(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        conn.close()

    listener = _listen()
    threading.Thread(target=_serve, args=(listener, gzipped_chunks), daemon=True).start()
    result = transport(f"http://127.0.0.1:{listener.getsockname()[1]}").send(sms())
    listener.close()
    assert (result.provider_id, result.status) == ("SM" + "1" * 32, "queued")


# The same request as the stock client ------------------------------------------------------


def _capture(http_client: Any, action: str) -> tuple[str, dict[str, str], bytes]:
    """What ``http_client`` sends for a create or a list, as a server reads it."""
    got: list[bytes] = []
    answer = json.dumps(
        {"sid": "SM" + "2" * 32, "status": "queued"} if action == "create" else {"messages": []}
    ).encode()

    def record(conn: socket.socket) -> None:
        head, rest = _read_head(conn)
        length = int(dict(
            line.split(": ", 1) for line in head.decode().split("\r\n")[1:]
        ).get("Content-Length", "0"))  # fmt: skip
        while len(rest) < length:
            rest += conn.recv(65536)
        got.append(head + b"\r\n\r\n" + rest)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(answer), answer)
        )
        conn.close()

    listener = _listen()
    threading.Thread(target=_serve, args=(listener, record), daemon=True).start()
    client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http_client)
    client.api.base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    if action == "create":
        client.messages.create(
            to=PATIENT_PHONE, from_=CLINIC_NUMBER, body="Café & co: 2+2=4 ✓", status_callback="x"
        )
    else:
        client.messages.list(to=PATIENT_PHONE, limit=20)
    listener.close()
    head, _, body = got[0].partition(b"\r\n\r\n")
    request_line, *lines = head.decode("latin1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
    return request_line, headers, body


@pytest.mark.parametrize("action", ["create", "list"])
def test_lean_client_sends_what_the_stock_client_sends(action: str) -> None:
    quiet = logging.Logger("test.quiet", logging.WARNING)
    stock = _capture(TwilioHttpClient(logger=quiet), action)
    lean = _capture(HttpxClient(connect_timeout=5, read_timeout=5, logger=quiet), action)
    assert lean[0] == stock[0]
    assert lean[1]["host"].startswith("127.0.0.1:")
    assert lean[2] == stock[2]
    # requests also offers compression and says keep-alive; HTTP/1.1 keeps alive anyway.
    ignored = {"accept-encoding", "connection", "host"}
    assert {k: v for k, v in lean[1].items() if k not in ignored} == {
        k: v for k, v in stock[1].items() if k not in ignored
    }


def test_form_encoding_matches_requests() -> None:
    data: dict[str, object] = {
        "To": "+447911123456",
        "Body": "Café & co: 50% off? a=b+c ✓\nnext line",
        "MediaUrl": ["https://x.example/a?b=1&c=2", None, "https://x.example/d"],
        "Attempt": 3,
        "Flag": True,
    }
    prepared = requests.Request("POST", "http://h/", data=data).prepare()
    assert twilio_http.form_encode(data) == prepared.body


# Logs and threads --------------------------------------------------------------------------


def test_no_recipient_number_in_any_log_record_at_debug(
    fake: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sender = transport(fake.url)
    sender.send(sms(1))
    fake.script("400:21211", "drop")
    with pytest.raises(TransportError):
        sender.send(sms(2))
    with pytest.raises(TransportError):
        sender.send(sms(3))
    assert sender.lookup(sms(3), since=datetime.now(UTC) - timedelta(minutes=1)) is not None
    assert fake.list_requests  # the lookup ran, with the number in its query string
    for record in caplog.records:
        text = record.getMessage()
        for value in (PATIENT_PHONE, PATIENT_PHONE.lstrip("+"), "7911123456"):
            assert value not in text


def test_sends_from_many_threads_at_once_each_arrive_once(fake: FakeTwilio) -> None:
    sender = transport(fake.url)
    results: list[str] = []
    lock = threading.Lock()

    def send_many(thread: int) -> None:
        for n in range(25):
            sid = sender.send(sms(thread * 100 + n)).provider_id
            with lock:
                results.append(sid)

    threads = [threading.Thread(target=send_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == len(set(results)) == 200
    assert sorted(r.body for r in fake.received) == sorted(
        sms(t * 100 + n).body for t in range(8) for n in range(25)
    )
    assert {r.sid for r in fake.received} == set(results)
