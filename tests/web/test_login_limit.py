"""The login rate limit: forwarded headers believed only from configured proxies, limits per
email and client, per email and per client, and a count that holds under concurrent guesses
(real HTTP against the app served as ``aftercare run`` serves it)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from aftercare.cli.supervise import uvicorn_config
from aftercare.clock import FixedClock
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.staff import throttle
from aftercare.storage.models import LoginThrottle
from aftercare.web.app import create_app
from tests.conftest import REPO, _truncate, make_settings
from tests.live_server import Live, serve
from tests.web.test_pages import ADMIN, NURSE, PASSWORD, add_staff

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
WRONG = "not the password at all"


def log_in(
    client: httpx.Client | TestClient,
    email: str = NURSE,
    password: str = WRONG,
    headers: dict[str, str] | None = None,
) -> int:
    """One login through the form (its own double-submit token, no earlier session); the
    answer's status."""
    client.cookies.clear()
    form = client.get("/login", headers=headers)
    token = CSRF.search(form.text)
    assert token is not None, form.text
    response = client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": token.group(1), "next": "/"},
        headers=headers,
    )
    return response.status_code


@dataclass
class Site:
    rt: Runtime
    live: Live

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.live.url, follow_redirects=False, timeout=60)

    def failures(self, email: str, client: str) -> list[int]:
        """The counts of the email+client, email and client buckets."""
        keys = [b.key for b in throttle.buckets(email=email, client=client)]
        with self.rt.db.session() as s:
            rows = {r.key_hash: r.failures for r in s.scalars(select(LoginThrottle))}
        return [rows.get(key, 0) for key in keys]


def _serve(rt: Runtime) -> Iterator[Site]:
    add_staff(rt, NURSE, "staff")
    add_staff(rt, ADMIN, "admin")
    with serve(create_app(rt)) as live:
        yield Site(rt, live)


@pytest.fixture
def site(runtime: Runtime) -> Iterator[Site]:
    yield from _serve(runtime)


@pytest.fixture
def pg_site(tmp_path: Path, pg_url: str, clock: FixedClock) -> Iterator[Site]:
    """The race needs PostgreSQL: SQLite has one writer at a time."""
    rt = Runtime(make_settings(tmp_path, database_url=pg_url))
    rt.clock = clock
    try:
        yield from _serve(rt)
    finally:
        _truncate(rt.db)
        rt.db.dispose()


def test_a_new_x_forwarded_for_on_every_guess_does_not_reset_the_limit(site: Site) -> None:
    statuses = []
    for n in range(throttle.PAIR_LIMIT + 2):
        with site.client() as client:
            forged = {"X-Forwarded-For": f"203.0.113.{n + 1}"}
            statuses.append(log_in(client, NURSE, WRONG, headers=forged))

    assert statuses[: throttle.PAIR_LIMIT - 1] == [401] * (throttle.PAIR_LIMIT - 1)
    assert statuses[throttle.PAIR_LIMIT - 1 :] == [429] * 3
    with site.client() as client:
        assert log_in(client, NURSE, PASSWORD, headers={"X-Forwarded-For": "198.51.100.7"}) == 429
    assert site.failures(NURSE, "127.0.0.1")[0] == throttle.PAIR_LIMIT


def test_forty_simultaneous_wrong_guesses_on_postgres_check_at_most_the_limit(
    pg_site: Site,
) -> None:
    site = pg_site

    def guess(_: int) -> int:
        with site.client() as client:
            return log_in(client, NURSE, WRONG)

    with ThreadPoolExecutor(max_workers=40) as pool:
        statuses = Counter(pool.map(guess, range(40)))

    # Each checked guess is counted before its password is; at most the limit were counted, and
    # the guesses that made up the fifth and later were refused unchecked (429).
    assert site.failures(NURSE, "127.0.0.1")[0] == throttle.PAIR_LIMIT
    assert statuses[401] <= throttle.PAIR_LIMIT - 1
    assert statuses[401] + statuses[429] == 40
    with site.client() as client:
        assert log_in(client, NURSE, PASSWORD) == 429


# Behind a trusted proxy (TestClient from 10.0.0.2, the configured proxy) --------------------


PROXY = "10.0.0.2"


@pytest.fixture
def proxied(runtime: Runtime) -> Iterator[tuple[Runtime, TestClient]]:
    runtime.settings = runtime.settings.model_copy(update={"trusted_proxies": "10.0.0.0/24"})
    add_staff(runtime, NURSE, "staff")
    add_staff(runtime, ADMIN, "admin")
    with TestClient(create_app(runtime), client=(PROXY, 40000), follow_redirects=False) as c:
        yield runtime, c


def _failures(rt: Runtime, email: str, client: str) -> list[int]:
    keys = [b.key for b in throttle.buckets(email=email, client=client)]
    with rt.db.session() as s:
        rows = {r.key_hash: r.failures for r in s.scalars(select(LoginThrottle))}
    return [rows.get(key, 0) for key in keys]


def test_behind_a_trusted_proxy_the_client_is_the_rightmost_address_it_did_not_add(
    proxied: tuple[Runtime, TestClient],
) -> None:
    rt, client = proxied
    for n in range(throttle.PAIR_LIMIT):
        # The client prepends a new address each time; the proxy appends the real one.
        log_in(client, NURSE, WRONG, headers={"X-Forwarded-For": f"192.0.2.{n}, 198.51.100.9"})

    assert _failures(rt, NURSE, "198.51.100.9")[0] == throttle.PAIR_LIMIT
    assert log_in(client, NURSE, PASSWORD, headers={"X-Forwarded-For": "198.51.100.9"}) == 429
    # Another client behind the same proxy is not held by the first one's guesses.
    assert log_in(client, NURSE, PASSWORD, headers={"X-Forwarded-For": "198.51.100.10"}) == 303


def test_one_account_guessed_from_many_addresses_is_refused_at_the_account_limit(
    proxied: tuple[Runtime, TestClient],
) -> None:
    rt, client = proxied
    statuses = [
        log_in(client, NURSE, WRONG, headers={"X-Forwarded-For": f"198.51.{n // 200}.{n % 200}"})
        for n in range(throttle.ACCOUNT_LIMIT + 1)
    ]

    assert statuses[: throttle.ACCOUNT_LIMIT - 1] == [401] * (throttle.ACCOUNT_LIMIT - 1)
    assert statuses[throttle.ACCOUNT_LIMIT - 1 :] == [429, 429]
    fresh = {"X-Forwarded-For": "192.0.2.200"}
    assert log_in(client, NURSE, PASSWORD, headers=fresh) == 429
    assert log_in(client, ADMIN, PASSWORD, headers=fresh) == 303  # another account is not held
    clock = rt.clock
    assert isinstance(clock, FixedClock)
    clock.advance(throttle.WINDOW + timedelta(seconds=1))
    assert log_in(client, NURSE, PASSWORD, headers=fresh) == 303


def test_one_address_trying_many_emails_is_refused_at_the_address_limit(
    proxied: tuple[Runtime, TestClient],
) -> None:
    _, client = proxied
    spray = {"X-Forwarded-For": "203.0.113.66"}
    statuses = Counter(
        log_in(client, f"guess{n}@example.org", WRONG, headers=spray)
        for n in range(throttle.ADDRESS_LIMIT + 1)
    )

    assert statuses == {401: throttle.ADDRESS_LIMIT - 1, 429: 2}
    assert log_in(client, NURSE, PASSWORD, headers=spray) == 429
    assert log_in(client, NURSE, PASSWORD, headers={"X-Forwarded-For": "203.0.113.67"}) == 303


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    proxied: tuple[Runtime, TestClient],
) -> None:
    rt, _ = proxied
    outsider = TestClient(create_app(rt), client=("192.0.2.50", 1234), follow_redirects=False)
    for n in range(throttle.PAIR_LIMIT):
        log_in(outsider, NURSE, WRONG, headers={"X-Forwarded-For": f"198.51.100.{n}"})

    assert _failures(rt, NURSE, "192.0.2.50")[0] == throttle.PAIR_LIMIT


@pytest.mark.parametrize("value", ["*", "10.0.0.0/33", "proxy.example", "10.0.0.1, *"])
def test_trusted_proxies_setting_refuses_wildcards_and_names(value: str) -> None:
    with pytest.raises(ValidationError, match="trusted_proxies"):
        Settings.model_validate({"trusted_proxies": value})


def test_trusted_proxies_setting_takes_addresses_and_networks() -> None:
    settings = Settings.model_validate({"trusted_proxies": " 10.0.0.1, 172.18.0.0/16 ,::1"})

    assert settings.trusted_proxy_list == ["10.0.0.1", "172.18.0.0/16", "::1"]


def test_no_deployment_lets_uvicorn_believe_forwarded_headers() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    api = compose["services"]["api"]["command"]
    image = (REPO / "Dockerfile").read_text(encoding="utf-8")
    cmd = next(line for line in image.splitlines() if line.startswith("CMD "))

    for command in (" ".join(api), cmd):
        assert "--no-proxy-headers" in command, command
        assert "--forwarded-allow-ips" not in command, command
    assert uvicorn_config(object(), host="127.0.0.1", port=8000).proxy_headers is False
