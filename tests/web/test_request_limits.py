"""What a request may cost the app before it is refused: body limits on every route (announced
or chunked), the API token checked before the body is read, password hashing bounded, no API
answer cached, no third-party script on the app's origin. Real HTTP against the app served as
``aftercare run`` serves it."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from aftercare.clock import FixedClock
from aftercare.runtime import Runtime
from aftercare.staff import service
from aftercare.storage.models import LoginThrottle, Patient, Reminder, TreatmentSession
from aftercare.web.app import create_app
from aftercare.web.pages.login import LOGIN_MAX_BODY
from tests.conftest import _truncate, make_settings
from tests.live_server import Live, serve
from tests.web.test_api import SESSION_BODY
from tests.web.test_api import add_staff as add_api_staff
from tests.web.test_pages import NURSE, add_staff

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
LIMIT = 64 * 1024  # AFTERCARE_MAX_BODY_BYTES's default


@dataclass
class Site:
    rt: Runtime
    live: Live
    token: str

    def stored(self) -> tuple[int, ...]:
        with self.rt.db.session() as s:
            return tuple(
                s.scalar(select(func.count()).select_from(m)) or 0
                for m in (Patient, TreatmentSession, Reminder, LoginThrottle)
            )

    def raw(self, head: str, body_parts: list[bytes], *, chunked: bool = False) -> bytes:
        """Send a request by hand (the head, then each part: as chunks when ``chunked``),
        stopping if the server answers or closes first; the answer's bytes."""
        with socket.create_connection((self.live.host, self.live.port), timeout=30) as sock:
            sock.sendall(head.encode("latin-1"))
            try:
                for part in body_parts:
                    sock.sendall(
                        f"{len(part):x}\r\n".encode() + part + b"\r\n" if chunked else part
                    )
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed while the body was still coming
            return _read_response(sock)


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def headers_of(answer: bytes) -> dict[str, str]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head)}


def _serve(rt: Runtime) -> Iterator[Site]:
    add_staff(rt, NURSE, "staff")
    _, token = add_api_staff(rt, "api@example.org", "staff")
    with serve(create_app(rt)) as live:
        yield Site(rt, live, token)


@pytest.fixture
def site(runtime: Runtime) -> Iterator[Site]:
    yield from _serve(runtime)


@pytest.fixture
def pg_site(tmp_path: Path, pg_url: str, clock: FixedClock) -> Iterator[Site]:
    rt = Runtime(make_settings(tmp_path, database_url=pg_url))
    rt.clock = clock
    try:
        yield from _serve(rt)
    finally:
        _truncate(rt.db)
        rt.db.dispose()


def _padded_enrolment(size: int) -> bytes:
    """A well-formed enrolment whose notes make it ``size`` bytes or more."""
    body = json.loads(json.dumps(SESSION_BODY))
    body["treated_at"] = "2026-03-02T10:00:00+00:00"
    body["padding"] = "x" * size
    return json.dumps(body).encode()


# Body limits ----------------------------------------------------------------------------------


def test_a_200_mb_json_body_announced_to_the_api_is_413_before_it_is_read(site: Site) -> None:
    before = site.stored()

    answer = site.raw(
        "POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {200 * 1024 * 1024}\r\n\r\n",
        [b'{"patient": {"name": "' + b"x" * 1024],
    )

    assert status_of(answer) == 413
    assert headers_of(answer)["cache-control"] == "no-store"
    assert site.stored() == before


def test_a_chunked_body_over_the_limit_is_413_as_it_arrives_and_nothing_is_stored(
    site: Site,
) -> None:
    before = site.stored()
    body = _padded_enrolment(4 * LIMIT)

    answer = site.raw(
        "POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {site.token}\r\nTransfer-Encoding: chunked\r\n\r\n",
        [body[i : i + 8192] for i in range(0, len(body), 8192)],
        chunked=True,
    )

    assert status_of(answer) == 413
    assert site.stored() == before


def test_a_chunked_body_under_the_limit_is_read_as_usual(site: Site) -> None:
    body = json.dumps(SESSION_BODY).encode()

    answer = site.raw(
        "POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {site.token}\r\nTransfer-Encoding: chunked\r\n\r\n",
        [body[:100], body[100:]],
        chunked=True,
    )

    assert status_of(answer) == 201
    assert site.stored()[:2] == (1, 1)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_multipart_login_is_413_and_nothing_is_stored(site: Site, chunked: bool) -> None:
    before = site.stored()
    boundary = "aftercareboundary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + b"\0" * (3 * 1024 * 1024)
    body = part + f"\r\n--{boundary}--\r\n".encode()
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"

    answer = site.raw(
        "POST /login HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n{length}\r\n\r\n",
        [body[i : i + 65536] for i in range(0, len(body), 65536)],
        chunked=chunked,
    )

    assert status_of(answer) == 413
    assert site.stored() == before


def test_every_route_refuses_a_body_over_its_limit_and_changes_nothing(runtime: Runtime) -> None:
    add_staff(runtime, NURSE, "staff")
    _, token = add_api_staff(runtime, "api@example.org", "staff")
    client = TestClient(create_app(runtime), follow_redirects=False)
    big = {"name": "x" * (LIMIT + 1)}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/api/v1/sessions", {"json": big, "headers": {"Authorization": f"Bearer {token}"}}),
        ("/api/v1/flags/1/resolve", {"json": big, "headers": {"Authorization": f"Bearer {token}"}}),
        ("/sessions/new", {"data": big}),
        ("/login", {"data": {"email": "x" * (LOGIN_MAX_BODY + 1)}}),
        ("/webhooks/twilio/inbound", {"data": big}),
        ("/unsubscribe/abc.def", {"data": big}),
    ]
    with runtime.db.session() as s:
        before = s.scalar(select(func.count()).select_from(Patient))

    for path, kwargs in cases:
        assert client.post(path, **kwargs).status_code == 413, path

    with runtime.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Patient)) == before


def test_the_body_limit_is_a_setting(runtime: Runtime) -> None:
    _, token = add_api_staff(runtime, "api@example.org", "staff")
    runtime.settings = runtime.settings.model_copy(update={"max_body_bytes": 2048})
    client = TestClient(create_app(runtime), headers={"Authorization": f"Bearer {token}"})

    assert client.post("/api/v1/sessions", content=b"{" + b" " * 2048 + b"}").status_code == 413
    assert client.post("/api/v1/sessions", json=SESSION_BODY).status_code == 201


# The API token comes first --------------------------------------------------------------------


@pytest.mark.parametrize("authorization", ["", "Authorization: Bearer act_forged\r\n"])
def test_an_api_request_without_a_live_token_is_401_before_its_body_arrives(
    site: Site, authorization: str
) -> None:
    with socket.create_connection((site.live.host, site.live.port), timeout=20) as sock:
        sock.sendall(
            (
                "POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"{authorization}Content-Length: 60000\r\n\r\n"
            ).encode()
            + b'{"patient": '
        )
        # The rest of the body never comes: only an answer given before reading it arrives.
        answer = _read_response(sock)

    assert status_of(answer) == 401
    assert headers_of(answer)["www-authenticate"] == "Bearer"
    assert headers_of(answer)["cache-control"] == "no-store"


# Password hashing ------------------------------------------------------------------------------


def test_a_login_finding_every_hashing_slot_busy_is_503_and_is_not_counted(site: Site) -> None:
    with httpx.Client(base_url=site.live.url, timeout=30) as client:
        token = CSRF.search(client.get("/login").text)
        assert token is not None
        with ExitStack() as held:
            for _ in range(service.HASHING_SLOTS):
                held.enter_context(service.hashing_slot())
            response = client.post(
                "/login",
                data={"email": NURSE, "password": "whatever it is", "csrf_token": token.group(1)},
            )

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "try again in a moment" in response.text
    with site.rt.db.session() as s:
        assert set(s.scalars(select(LoginThrottle.failures))) == {0}


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux 4.0+)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_eighty_simultaneous_logins_with_random_emails_keep_memory_bounded(pg_site: Site) -> None:
    # On PostgreSQL, where logins hash in parallel (on SQLite they used to queue on the write
    # lock, and time out with 500s, which hid the missing bound).
    site = pg_site
    argon2_mib = service._hasher().memory_cost // 1024  # 64 MiB each

    def login(n: int) -> int:
        with httpx.Client(base_url=site.live.url, timeout=60) as client:
            token = CSRF.search(client.get("/login").text)
            assert token is not None
            return client.post(
                "/login",
                data={
                    "email": f"random{n}@example.org",
                    "password": "a guess at a password",
                    "csrf_token": token.group(1),
                },
            ).status_code

    login(0)  # the dummy hash and the first connection are made once
    baseline = _status_kib("VmRSS")
    _peak_rss_reset()
    with ThreadPoolExecutor(max_workers=80) as pool:
        statuses = list(pool.map(login, range(1, 81)))
    peak_mib = (_status_kib("VmHWM") - baseline) / 1024

    print(f"80 logins: {sorted(set(statuses))}, peak RSS {peak_mib:.0f} MiB over the baseline")
    assert set(statuses) <= {401, 503}
    # Unbounded, the threadpool alone would run 40 hashes at once (2.5 GiB); the slots leave the
    # hashes in flight plus request overhead.
    assert peak_mib < (service.HASHING_SLOTS + 4) * argon2_mib


# Answers --------------------------------------------------------------------------------------


def test_every_api_answer_says_no_store(runtime: Runtime) -> None:
    _, token = add_api_staff(runtime, "api@example.org", "staff")
    client = TestClient(
        create_app(runtime),
        headers={"Authorization": f"Bearer {token}"},
        raise_server_exceptions=False,
    )
    answers = {
        "201": client.post("/api/v1/sessions", json=SESSION_BODY),
        "200": client.get("/api/v1/flags"),
        "401": client.get("/api/v1/flags", headers={"Authorization": ""}),
        "404": client.get("/api/v1/sessions/999"),
        "405": client.put("/api/v1/flags"),
        "413": client.post("/api/v1/sessions", content=b"x" * (LIMIT + 1)),
        "422": client.post("/api/v1/sessions", json={}),
    }
    if not runtime.db.is_postgres:
        with runtime.db.engine.begin() as conn:  # a broken database: an unhandled error
            conn.execute(text("DROP TABLE flags"))
        answers["500"] = client.get("/api/v1/flags")

    for expected, response in answers.items():
        assert str(response.status_code) == expected, (expected, response.text)
        assert response.headers.get("cache-control") == "no-store", expected


def test_no_page_loads_a_script_from_elsewhere_and_the_api_description_stays(
    runtime: Runtime,
) -> None:
    client = TestClient(create_app(runtime))

    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    assert client.get("/docs/oauth2-redirect").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "Aftercare"


def test_threads_waiting_for_a_hashing_slot_get_one_as_it_frees() -> None:
    order: list[str] = []
    with ExitStack() as held:
        for _ in range(service.HASHING_SLOTS):
            held.enter_context(service.hashing_slot())
        waiter = threading.Thread(
            target=lambda: order.append("got" if _take_slot(wait=30) else "refused")
        )
        waiter.start()
        order.append("freeing")
    waiter.join(timeout=30)

    assert order == ["freeing", "got"]


def _take_slot(*, wait: float) -> bool:
    try:
        with service.hashing_slot(wait=wait):
            return True
    except service.HashingBusy:
        return False
