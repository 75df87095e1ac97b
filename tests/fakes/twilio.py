"""A local fake of Twilio's Messages API, for the real ``twilio`` client to talk to over HTTP.

Only the network edge is faked. The server listens on 127.0.0.1 (a free port) in a background
thread and implements:

* ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form-encoded ``To``, ``From`` or
  ``MessagingServiceSid``, ``Body``, ``StatusCallback``; HTTP basic auth) answering 201 with a
  Message resource shaped like Twilio's (``sid`` "SM" + 32 hex, ``status`` "queued", or
  "accepted" for a Messaging Service, ``date_sent`` null);
* ``GET`` of the same path with ``To``, ``From``, ``DateSent``, ``DateSent<``, ``DateSent>`` and
  ``PageSize``, answering one list page (``messages``, ``next_page_uri`` null, page fields).
  Like Twilio's documented filter, ``DateSent`` compares whole (UTC) days, and a message whose
  ``date_sent`` is still null (queued) never matches a ``DateSent`` filter.

Behaviour is scripted per request, in order (:meth:`FakeTwilio.script`): ``"ok"``;
``"STATUS:CODE"`` (an error answer, e.g. ``"429:20429"``, ``"500:20500"``, ``"400:21211"``);
``"drop"`` (store the message, then close the connection without answering); ``"lost"`` (close
without storing: the request never got through); ``"hang"`` (store, then answer nothing until
``hang_seconds`` have passed or the fake stops). With ``mps`` set, a sender that has had ``mps``
messages accepted in the last second is answered 429 (code 20429). Every POST is logged in
:attr:`FakeTwilio.received` with its (monotonic) receive time.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "fake-auth-token-0123456789"
API_VERSION = "2010-04-01"
_PATH = re.compile(rf"/{API_VERSION}/Accounts/(?P<sid>AC[0-9a-f]{{32}})/Messages\.json")
_E164 = re.compile(r"\+[1-9]\d{6,14}")

_ERRORS = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    21211: "The 'To' number {to} is not a valid phone number.",
    21602: "Message body is required.",
    21603: "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number: {to}, is not currently reachable using the 'From' number",
    21614: "'To' number {to} is not a valid mobile number",
}


@dataclass
class Received:
    """One POST as the fake saw it."""

    at: float  # time.monotonic() when the request had been read
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None
    answer: str  # "201", "STATUS:CODE", "drop", "lost", "hang"
    sid: str | None  # set when the message was stored (Twilio has it)


def _rfc2822(instant: datetime | None) -> str | None:
    return None if instant is None else instant.strftime("%a, %d %b %Y %H:%M:%S +0000")


class FakeTwilio:
    """The fake server; use as a context manager (or ``start``/``stop``)."""

    def __init__(
        self,
        *,
        account_sid: str = ACCOUNT_SID,
        auth_token: str = AUTH_TOKEN,
        clock: Callable[[], datetime] | None = None,
        mps: float | None = None,
        hang_seconds: float = 30.0,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        # Twilio's clock, for date_created/date_sent; tests pass the service's own clock.
        self.clock = clock or (lambda: datetime.now(UTC))
        self.mps = mps
        self.hang_seconds = hang_seconds
        # False: stored messages stay "queued" with date_sent null (Twilio has not sent them).
        self.send_immediately = True
        self.received: list[Received] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self.list_requests: list[dict[str, str]] = []
        self._script: deque[str] = deque()
        self._list_script: deque[str] = deque()
        self._recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Control ----------------------------------------------------------------------------------

    def start(self) -> FakeTwilio:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, *behaviours: str) -> None:
        """Answer the next POSTs with these behaviours, in order; then "ok"."""
        with self._lock:
            self._script.extend(behaviours)

    def script_lists(self, *behaviours: str) -> None:
        """Answer the next list GETs with these ("STATUS:CODE" or "drop"); then the page."""
        with self._lock:
            self._list_script.extend(behaviours)

    def set_status(self, sid: str, status: str) -> None:
        with self._lock:
            self.messages[sid]["status"] = status

    # Assertions -------------------------------------------------------------------------------

    def stored(self) -> list[Received]:
        """The POSTs whose message Twilio now has (accepted, dropped or hung)."""
        with self._lock:
            return [r for r in self.received if r.sid is not None]

    def answers(self) -> list[str]:
        with self._lock:
            return [r.answer for r in self.received]

    # Request handling (server threads) --------------------------------------------------------

    def _authorised(self, handler: _Handler, account: str) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        given = handler.headers.get("Authorization", "")
        return account == self.account_sid and secrets.compare_digest(given, f"Basic {expected}")

    def _post(self, handler: _Handler, account: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(handler.rfile.read(length).decode()).items()}
        if not self._authorised(handler, account):
            handler.error(401, 20003)
            return
        to = form.get("To", "")
        with self._lock:
            behaviour = self._script.popleft() if self._script else "ok"
            entry = Received(
                at=time.monotonic(),
                to=to,
                from_=form.get("From"),
                messaging_service_sid=form.get("MessagingServiceSid"),
                body=form.get("Body", ""),
                status_callback=form.get("StatusCallback"),
                answer=behaviour if behaviour != "ok" else "201",
                sid=None,
            )
            self.received.append(entry)
            refusal = self._refusal(behaviour, form, entry)
            if refusal is None and behaviour != "lost":
                resource = self._store(entry, form)
        if behaviour == "lost":
            handler.close_connection = True
            return
        if refusal is not None:
            handler.error(*refusal, to=to)
            return
        if behaviour == "drop":
            handler.close_connection = True
            return
        if behaviour == "hang":
            self._stopping.wait(self.hang_seconds)
            handler.close_connection = True
            return
        handler.reply(201, resource)

    def _refusal(
        self, behaviour: str, form: dict[str, str], entry: Received
    ) -> tuple[int, int] | None:
        """(HTTP status, Twilio code) when this POST is refused; call with the lock held."""
        if ":" in behaviour:
            status, code = behaviour.split(":")
            return int(status), int(code)
        if not entry.to:
            return 400, 21604
        if not entry.body:
            return 400, 21602
        sender = entry.messaging_service_sid or entry.from_
        if not sender:
            return 400, 21603
        if not _E164.fullmatch(entry.to):
            return 400, 21211
        if self.mps is not None:
            recent = self._recent.setdefault(sender, deque())
            while recent and entry.at - recent[0] >= 1.0:
                recent.popleft()
            if len(recent) >= self.mps:
                entry.answer = "429:20429"
                return 429, 20429
            recent.append(entry.at)
        return None

    def _store(self, entry: Received, form: dict[str, str]) -> dict[str, Any]:
        """Keep the message like Twilio does; returns the creation answer (lock held)."""
        sid = "SM" + secrets.token_hex(16)
        entry.sid = sid
        now = self.clock().astimezone(UTC)
        service = entry.messaging_service_sid
        resource: dict[str, Any] = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": entry.body,
            "date_created": _rfc2822(now),
            "date_sent": None,
            "date_updated": _rfc2822(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": entry.from_,
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service else "queued",
            "subresource_uris": {
                "media": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
            "to": entry.to,
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json",
            "_created": now,
            "_sent": None,
        }
        answer = {k: v for k, v in resource.items() if not k.startswith("_")}
        if self.send_immediately:
            resource.update(status="sent", date_sent=_rfc2822(now), _sent=now)
            if service:
                resource["from"] = "+15005550006"  # the pool number the service picked
        self.messages[sid] = resource
        return answer

    def _list(self, handler: _Handler, account: str, query: str) -> None:
        if not self._authorised(handler, account):
            handler.error(401, 20003)
            return
        params = {k: v[0] for k, v in parse_qs(query).items()}
        with self._lock:
            self.list_requests.append(params)
            behaviour = self._list_script.popleft() if self._list_script else "ok"
            rows = sorted(self.messages.values(), key=lambda m: m["_created"], reverse=True)
        if behaviour == "drop":
            handler.close_connection = True
            return
        if behaviour != "ok":
            status, code = behaviour.split(":")
            handler.error(int(status), int(code))
            return
        size = int(params.get("PageSize", "50"))
        chosen = [
            {k: v for k, v in m.items() if not k.startswith("_")}
            for m in rows
            if _matches(m, params)
        ][:size]
        uri = f"/{API_VERSION}/Accounts/{account}/Messages.json?PageSize={size}&Page=0"
        handler.reply(
            200,
            {
                "messages": chosen,
                "start": 0,
                "end": max(len(chosen) - 1, 0),
                "page": 0,
                "page_size": size,
                "first_page_uri": uri,
                "previous_page_uri": None,
                "next_page_uri": None,
                "uri": uri,
            },
        )


def _day(value: str) -> date:
    """The UTC day of a DateSent filter value: ``YYYY-MM-DD`` or ``YYYY-MM-DDThh:mm:ssZ``."""
    return date.fromisoformat(value[:10])


def _matches(message: dict[str, Any], params: dict[str, str]) -> bool:
    if "To" in params and message["to"] != params["To"]:
        return False
    if "From" in params and message["from"] != params["From"]:
        return False
    sent: datetime | None = message["_sent"]
    filters = [(k, v) for k, v in params.items() if k.startswith("DateSent")]
    if filters and sent is None:
        return False
    for key, value in filters:
        day = sent.date() if sent else None
        if key == "DateSent>" and not (day and day >= _day(value)):
            return False
        if key == "DateSent<" and not (day and day <= _day(value)):
            return False
        if key == "DateSent" and day != _day(value):
            return False
    return True


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a worker opening many connections at once (delivery
    # sends concurrently) overflowed it, and the kernel reset connections whose request had
    # already been written, which the client rightly took for ambiguous sends.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like api.twilio.com
    timeout = 30  # idle keep-alive connections are closed after this
    # Each answer is written as headers then body: without TCP_NODELAY, Nagle's algorithm holds
    # the body on a kept-alive connection until the client's delayed ACK (40 ms on Linux).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output stays readable."""

    @property
    def fake(self) -> FakeTwilio:
        return self.server.fake  # type: ignore[attr-defined, no-any-return]

    def _route(self) -> tuple[str, str] | None:
        parts = urlsplit(self.path)
        match = _PATH.fullmatch(parts.path)
        if match is None:
            self.error(404, 20404)
            return None
        return match["sid"], parts.query

    def do_POST(self) -> None:
        route = self._route()
        if route is not None:
            self.fake._post(self, route[0])

    def do_GET(self) -> None:
        route = self._route()
        if route is not None:
            self.fake._list(self, route[0], route[1])

    def reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: int, code: int, *, to: str = "") -> None:
        message = _ERRORS.get(code, f"Error {code}").format(to=to)
        self.reply(
            status,
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
        )


def window_counts(times: list[float], width: float = 1.0) -> Iterator[int]:
    """For each receive time, how many receive times fall in [t, t + width)."""
    ordered = sorted(times)
    for i, start in enumerate(ordered):
        yield sum(1 for t in ordered[i:] if t - start < width)
