"""Security: who may call what, forged and replayed webhooks, unsubscribe tokens, no patient data
or secret in logs, Celery events or the broker during a full run, and the static checks (bandit,
pip-audit).

Routes are enumerated from the app itself (and cross-checked with /openapi.json), so a route added
later is covered without editing this file: it must refuse anonymous and wrong-role requests,
or be named in PUBLIC with the reason it may be public.
"""

from __future__ import annotations

import ast
import base64
import binascii
import email
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from loguru import logger as loguru_logger
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from aftercare.cli.demo import play
from aftercare.flags.service import raise_flag
from aftercare.ops.logs import JsonFormatter
from aftercare.reminders import states
from aftercare.runtime import Runtime, set_runtime
from aftercare.security import sign
from aftercare.settings import Settings
from aftercare.staff.service import disable_staff, issue_token, revoke_tokens
from aftercare.storage.models import DeliveryAttempt, InboundMessage, Patient, Reminder, StaffUser
from aftercare.web.app import create_app
from aftercare.web.pages import auth as web_auth
from tests.channels.test_smtp import Accounts, LoopbackServer, Recorder
from tests.conftest import REPO, TEST_SECRET, _truncate
from tests.fakes.twilio import ACCOUNT_SID, FakeTwilio
from tests.fakes.twilio import AUTH_TOKEN as FAKE_TWILIO_TOKEN
from tests.faults.corpus import table_snapshot
from tests.stacks import TREATED, Stack, make_stack, start_aftercare
from tests.web.test_api import add_staff, deliver_due

AUTH_TOKEN = "test-twilio-auth-token-0123456789abcdef"
PUBLIC_URL = "https://clinic.example"
INBOUND, STATUS = "/webhooks/twilio/inbound", "/webhooks/twilio/status"
NAME = "Philippa Quennell"
PHONE = "+447911123456"
EMAIL = "philippa.quennell@example.org"
ENROLMENT: dict[str, Any] = {
    "patient": {
        "name": NAME,
        "phone": "07911 123456",
        "email": EMAIL,
        "timezone": "Europe/London",
        "channels": ["sms", "email"],
    },
    "regimen": "micro-sclerotherapy",
    "parameters": {"daily_days": 7, "checkin_week": 10},
    "consent": True,
    "contraindications_checked": True,
}

# Routes anyone may call, each with the reason. Everything else must refuse anonymous callers.
PUBLIC = {
    ("GET", "/healthz"): "liveness probe: says 'ok', nothing else",
    ("GET", "/readyz"): "readiness probe: component states, no data",
    ("GET", "/metrics"): "Prometheus counts by state/channel/step; no ids, no personal data",
    ("GET", "/openapi.json"): "the API's description",
    ("POST", INBOUND): "Twilio: authenticated by X-Twilio-Signature (tested below)",
    ("POST", STATUS): "Twilio: authenticated by X-Twilio-Signature (tested below)",
    ("GET", "/unsubscribe/{token}"): "the signed token in the URL is the credential",
    ("POST", "/unsubscribe/{token}"): "the signed token in the URL is the credential",
    ("GET", "/login"): "the login form",
    ("POST", "/login"): "logging in (double-submit CSRF token, rate limited)",
}


def app_routes(app: Any) -> list[tuple[str, str, Any]]:
    """Every (method, path, route) the app answers, HEAD aside, through included routers."""
    out = []
    for route in iter_route_contexts(app.routes):
        out += [(m, route.path, route) for m in sorted(route.methods or ()) if m != "HEAD"]
    return out


def _calls(dependant: Any) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def admin_only(route: Any) -> bool:
    """Whether the route depends (at any depth) on an admin check."""
    if not isinstance(route.original_route, APIRoute):
        return False
    return any("admin" in getattr(call, "__name__", "") for call in _calls(route.dependant))


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


@dataclass
class Site:
    """The app on a database with a patient, a session and a flag (all id 1), a nurse and an
    admin with API tokens and browser sessions, and a revoked token and a disabled account."""

    rt: Runtime
    client: TestClient
    nurse_token: str
    admin_token: str
    nurse_cookie: str
    admin_cookie: str
    nurse_csrf: str
    revoked_token: str
    disabled_token: str
    disabled_cookie: str
    expired_cookie: str
    routes: list[tuple[str, str, Any]] = field(default_factory=list)

    def call(
        self, method: str, path: str, *, bearer: str | None = None, cookie: str | None = None
    ) -> Any:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        self.client.cookies.clear()
        if cookie:
            self.client.cookies.set(web_auth.SESSION_COOKIE, cookie)
        kwargs: dict[str, Any] = {"headers": headers, "follow_redirects": False}
        if method in ("POST", "PATCH", "PUT"):
            if path.startswith("/api/"):
                kwargs["json"] = {}
            else:
                kwargs["data"] = {"name": "Changed Name", "note": "x"}
        response = self.client.request(method, concrete(path), **kwargs)
        self.client.cookies.clear()
        return response


def _cookie(rt: Runtime, staff_id: int, now: datetime) -> tuple[str, str]:
    with rt.db.session() as s:
        token, row = web_auth.start_session(db_session=s, staff_id=staff_id, now=now)
        return token, row.csrf_token


@pytest.fixture
def site(runtime: Runtime) -> Iterator[Site]:
    runtime.settings = runtime.settings.model_copy(
        update={"twilio_auth_token": AUTH_TOKEN, "public_base_url": PUBLIC_URL}
    )
    now = runtime.clock.now()
    nurse_id, nurse_token = add_staff(runtime, "nurse@example.org", "staff")
    admin_id, admin_token = add_staff(runtime, "admin@example.org", "admin")
    gone_id, disabled_token = add_staff(runtime, "gone@example.org", "admin")
    nurse_cookie, nurse_csrf = _cookie(runtime, nurse_id, now)
    admin_cookie, _ = _cookie(runtime, admin_id, now)
    disabled_cookie, _ = _cookie(runtime, gone_id, now)
    expired_cookie, _ = _cookie(runtime, admin_id, now - web_auth.SESSION_LIFETIME * 2)
    with runtime.db.session() as s:
        row, revoked = issue_token(db_session=s, staff_id=admin_id, now=now)
        s.flush()
        revoke_tokens(db_session=s, prefix=row.prefix, now=now)
        disable_staff(db_session=s, staff_id=gone_id, now=now)
    app = create_app(runtime)
    with TestClient(app) as client:
        body = {**ENROLMENT, "treated_at": now.isoformat()}
        created = client.post(
            "/api/v1/sessions", json=body, headers={"Authorization": f"Bearer {nurse_token}"}
        )
        assert created.status_code == 201, created.text
        with runtime.db.session() as s:
            raise_flag(s, kind="unrecognised_reply", patient_id=1, text="a reply", now=now)
        yield Site(
            runtime,
            client,
            nurse_token,
            admin_token,
            nurse_cookie,
            admin_cookie,
            nurse_csrf,
            revoked,
            disabled_token,
            disabled_cookie,
            expired_cookie,
            app_routes(app),
        )


def private_routes(site: Site) -> list[tuple[str, str, Any]]:
    return [r for r in site.routes if (r[0], r[1]) not in PUBLIC]


# Who may call what ------------------------------------------------------------------------------


def test_every_route_is_either_public_for_a_stated_reason_or_needs_a_login(site: Site) -> None:
    private = private_routes(site)
    assert len(private) >= 15  # the API and the staff pages
    assert all(any(p.startswith(x) for x in ("/api/v1/", "/")) for _, p, _ in private)
    answered = {(m, p) for m, p, _ in site.routes}
    # The public list holds only routes that exist (no stale exemption).
    assert set(PUBLIC) <= answered, set(PUBLIC) - answered
    schema = site.client.get("/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert documented <= answered
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/api/"):
                assert operation.get("security"), f"{method} {path} declares no security"


def test_anonymous_callers_are_refused_by_every_private_route_and_change_nothing(
    site: Site,
) -> None:
    before = table_snapshot(site.rt.db)
    for method, path, _ in private_routes(site):
        response = site.call(method, path)
        if path.startswith("/api/"):
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"
        else:
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"].startswith("/login"), (method, path)
    assert table_snapshot(site.rt.db) == before


@pytest.mark.parametrize(
    "credential",
    ["garbage", "revoked", "disabled", "cookie-on-api", "bearer-on-pages", "expired-cookie"],
)
def test_bad_or_misplaced_credentials_are_refused_everywhere_and_change_nothing(
    site: Site, credential: str
) -> None:
    before = table_snapshot(site.rt.db)
    bearer = {
        "garbage": "act_" + "x" * 40,
        "revoked": site.revoked_token,
        "disabled": site.disabled_token,
        "bearer-on-pages": site.admin_token,
    }.get(credential)
    cookie = {
        "garbage": "not-a-session",
        "disabled": site.disabled_cookie,
        "cookie-on-api": site.admin_cookie,
        "expired-cookie": site.expired_cookie,
    }.get(credential)
    for method, path, _ in private_routes(site):
        api = path.startswith("/api/")
        if (credential == "cookie-on-api" and not api) or (credential == "bearer-on-pages" and api):
            continue
        response = site.call(method, path, bearer=bearer, cookie=cookie)
        expected = 401 if api else 303
        assert response.status_code == expected, (credential, method, path, response.text[:200])
    assert table_snapshot(site.rt.db) == before


def test_admin_only_routes_refuse_staff_with_403_and_let_admins_in(site: Site) -> None:
    admin_routes = [r for r in private_routes(site) if admin_only(r[2])]
    assert ("GET", "/api/v1/audit") in {(m, p) for m, p, _ in admin_routes}
    before = table_snapshot(site.rt.db)
    for method, path, _ in admin_routes:
        api = path.startswith("/api/")
        as_nurse = site.call(
            method,
            path,
            bearer=site.nurse_token if api else None,
            cookie=None if api else site.nurse_cookie,
        )
        assert as_nurse.status_code == 403, (method, path, as_nurse.status_code)
    assert table_snapshot(site.rt.db) == before
    for method, path, _ in admin_routes:
        if method != "GET":
            continue
        api = path.startswith("/api/")
        as_admin = site.call(
            method,
            path,
            bearer=site.admin_token if api else None,
            cookie=None if api else site.admin_cookie,
        )
        assert as_admin.status_code == 200, (method, path, as_admin.status_code)


def test_staff_page_posts_without_this_sessions_csrf_token_are_403_and_change_nothing(
    site: Site,
) -> None:
    posts = [
        (m, p) for m, p, _ in private_routes(site) if m == "POST" and not p.startswith("/api/")
    ]
    assert posts, "no staff page takes a POST"
    before = table_snapshot(site.rt.db)
    with site.rt.db.session() as s:
        admin = s.scalars(select(StaffUser).where(StaffUser.role == "admin")).first()
        assert admin is not None
    other_csrf = _cookie(site.rt, admin.id, site.rt.clock.now())[1]  # another session's token
    for method, path in posts:
        for token in (None, "forged", other_csrf):
            site.client.cookies.set(web_auth.SESSION_COOKIE, site.nurse_cookie)
            data = {"name": "Changed Name", "note": "x"}
            if token:
                data[web_auth.CSRF_FIELD] = token
            response = site.client.request(
                method, concrete(path), data=data, follow_redirects=False
            )
            site.client.cookies.clear()
            assert response.status_code == 403, (path, token, response.status_code)
    after = table_snapshot(site.rt.db)
    # Starting the admin's second session above wrote one web_sessions row; nothing else moved.
    assert {k: v for k, v in after.items() if k != "web_sessions"} == {
        k: v for k, v in before.items() if k != "web_sessions"
    }


def test_session_and_login_cookies_are_httponly_samesite_and_secure_behind_https(
    site: Site,
) -> None:
    response = site.client.get("/login")
    assert response.status_code == 200
    cookies = response.headers.get_list("set-cookie")
    assert cookies, "the login form sets its double-submit cookie"
    for cookie in cookies:
        lowered = cookie.lower()
        assert "httponly" in lowered
        assert "samesite=lax" in lowered
        assert "secure" in lowered  # AFTERCARE_PUBLIC_BASE_URL is https here


# Twilio signatures -------------------------------------------------------------------------------


def _sign(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


def _sms(body: str = "2", sid: str = "SM" + "1" * 32, sender: str = PHONE) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": sender,
        "To": "+447700900000",
        "Body": body,
        "NumMedia": "0",
    }


def _post(site: Site, path: str, params: dict[str, str], headers: dict[str, str]) -> Any:
    return site.client.post(path, data=params, headers=headers)


FORGERIES: dict[str, Callable[[dict[str, str]], tuple[str, dict[str, str], dict[str, str]]]] = {
    # Each: the valid params -> (path, params sent, headers)
    "no-signature": lambda p: (INBOUND, p, {}),
    "empty-signature": lambda p: (INBOUND, p, {"X-Twilio-Signature": ""}),
    "garbage-signature": lambda p: (INBOUND, p, {"X-Twilio-Signature": "not base64 at all!"}),
    "huge-signature": lambda p: (INBOUND, p, {"X-Twilio-Signature": "A" * 8000}),
    "another-token": lambda p: (
        INBOUND,
        p,
        {"X-Twilio-Signature": _sign(PUBLIC_URL + INBOUND, p, "someone-elses-token")},
    ),
    "empty-token": lambda p: (
        INBOUND,
        p,
        {"X-Twilio-Signature": _sign(PUBLIC_URL + INBOUND, p, "")},
    ),
    "signed-for-the-internal-url": lambda p: (
        INBOUND,
        p,
        {"X-Twilio-Signature": _sign("http://testserver" + INBOUND, p)},
    ),
    "signed-for-a-forwarded-host": lambda p: (
        INBOUND,
        p,
        {
            "X-Twilio-Signature": _sign("https://evil.example" + INBOUND, p),
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
        },
    ),
    "replayed-with-another-body": lambda p: (
        INBOUND,
        {**p, "Body": "START"},
        {"X-Twilio-Signature": _sign(PUBLIC_URL + INBOUND, p)},
    ),
    "replayed-with-another-sender": lambda p: (
        INBOUND,
        {**p, "From": "+447912345678"},
        {"X-Twilio-Signature": _sign(PUBLIC_URL + INBOUND, p)},
    ),
    "replayed-with-a-field-added": lambda p: (
        INBOUND,
        {**p, "OptOutType": "STOP"},
        {"X-Twilio-Signature": _sign(PUBLIC_URL + INBOUND, p)},
    ),
    "replayed-to-another-url": lambda p: (
        STATUS,
        p,
        {"X-Twilio-Signature": _sign(PUBLIC_URL + INBOUND, p)},
    ),
    "replayed-with-a-query-string": lambda p: (
        INBOUND + "?x=1",
        p,
        {"X-Twilio-Signature": _sign(PUBLIC_URL + INBOUND, p)},
    ),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_missing_and_replayed_twilio_signatures_are_403_and_change_nothing(
    site: Site, forgery: str
) -> None:
    before = table_snapshot(site.rt.db)
    path, params, headers = FORGERIES[forgery](_sms("STOP"))
    response = _post(site, path, params, headers)
    assert response.status_code == 403, response.text
    assert table_snapshot(site.rt.db) == before


def test_without_an_auth_token_configured_every_webhook_is_refused(site: Site) -> None:
    site.rt.settings = site.rt.settings.model_copy(update={"twilio_auth_token": ""})
    before = table_snapshot(site.rt.db)
    params = _sms("STOP")
    for token in ("", AUTH_TOKEN):
        headers = {"X-Twilio-Signature": _sign(PUBLIC_URL + INBOUND, params, token)}
        assert _post(site, INBOUND, params, headers).status_code == 403
    assert table_snapshot(site.rt.db) == before


def test_an_exact_replay_of_a_valid_inbound_message_changes_nothing_more(site: Site) -> None:
    params = _sms("STOP", sid="SM" + "7" * 32)
    headers = {"X-Twilio-Signature": _sign(PUBLIC_URL + INBOUND, params)}
    first = _post(site, INBOUND, params, headers)
    assert first.status_code == 200, first.text
    with site.rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(InboundMessage)) == 1
        assert s.get(Patient, 1).sms_opted_out_at is not None  # type: ignore[union-attr]
    after_first = table_snapshot(site.rt.db)

    site.rt.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
    for _ in range(3):
        again = _post(site, INBOUND, params, headers)
        assert again.status_code == 200, again.text

    assert table_snapshot(site.rt.db) == after_first


def test_an_exact_replay_of_a_status_callback_changes_nothing_more(site: Site) -> None:
    assert deliver_due(site.rt)  # the welcome SMS and email go out (outbox transport)
    with site.rt.db.session() as s:
        sid = s.scalars(
            select(DeliveryAttempt.provider_id)
            .join(Reminder, Reminder.id == DeliveryAttempt.reminder_id)
            .where(Reminder.channel == "sms")
        ).first()
    assert sid
    params = {"MessageSid": sid, "MessageStatus": "delivered", "To": PHONE}
    headers = {"X-Twilio-Signature": _sign(PUBLIC_URL + STATUS, params)}
    assert _post(site, STATUS, params, headers).status_code == 200
    after_first = table_snapshot(site.rt.db)
    site.rt.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
    assert _post(site, STATUS, params, headers).status_code == 200
    assert table_snapshot(site.rt.db) == after_first


# Unsubscribe tokens -----------------------------------------------------------------------------


def _patients(site: Site) -> tuple[Patient, Patient]:
    body = json.loads(json.dumps({**ENROLMENT, "treated_at": site.rt.clock.now().isoformat()}))
    body["patient"].update(name="Other Patient", phone="07912 345678", email="other@example.org")
    created = site.client.post(
        "/api/v1/sessions", json=body, headers={"Authorization": f"Bearer {site.nurse_token}"}
    )
    assert created.status_code == 201, created.text
    with site.rt.db.session() as s:
        first = s.get(Patient, 1)
        other = s.get(Patient, created.json()["patient_id"])
        assert first is not None
        assert other is not None
        return first, other


def _forged_tokens(first: Patient, other: Patient) -> dict[str, str]:
    good = sign(first.public_id, secret=TEST_SECRET)
    mac = good.split(".")[1]
    flipped = ("B" if mac[0] != "B" else "C") + mac[1:]
    return {
        "random": "0123456789abcdef0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAA",
        "wrong-secret": sign(first.public_id, secret="another-deployments-secret-key"),
        "one-character-changed": f"{first.public_id}.{flipped}",
        "mac-truncated": good[:-4],
        "mac-missing": first.public_id,
        "mac-empty": first.public_id + ".",
        "another-patients-id-with-this-mac": f"{other.public_id}.{mac}",
        "another-purpose": sign(first.public_id, secret=TEST_SECRET, purpose="login"),
        "two-dots": good + ".x",
        "traversal": "..%2F..%2Fetc%2Fpasswd",
        "overlong": good + "A" * 200,
        "unicode": first.public_id + ".\u0410" * 24,
        "sql": quote("1' OR '1'='1.x"),
    }


def test_forged_unsubscribe_tokens_are_refused_alike_and_change_nothing(site: Site) -> None:
    first, other = _patients(site)
    before = table_snapshot(site.rt.db)
    for name, token in _forged_tokens(first, other).items():
        for method in ("GET", "POST"):
            response = site.client.request(
                method, f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}
            )
            assert response.status_code == 404, (name, method, response.status_code)
            assert NAME not in response.text
    assert table_snapshot(site.rt.db) == before


def test_an_unsubscribe_token_stops_email_for_its_own_patient_only(site: Site) -> None:
    first, other = _patients(site)
    token = sign(first.public_id, secret=TEST_SECRET)
    before = table_snapshot(site.rt.db)
    assert site.client.get(f"/unsubscribe/{token}").status_code == 200
    assert table_snapshot(site.rt.db) == before  # a GET (a mail scanner) changes nothing
    assert site.client.post(f"/unsubscribe/{token}").status_code == 200
    with site.rt.db.session() as s:
        assert s.get(Patient, first.id).email_opted_out_at is not None  # type: ignore[union-attr]
        assert s.get(Patient, other.id).email_opted_out_at is None  # type: ignore[union-attr]
        assert s.get(Patient, first.id).sms_opted_out_at is None  # type: ignore[union-attr]


def test_an_erased_patients_old_unsubscribe_link_no_longer_names_anyone(site: Site) -> None:
    first, _ = _patients(site)
    token = sign(first.public_id, secret=TEST_SECRET)
    erased = site.client.delete(
        f"/api/v1/patients/{first.id}", headers={"Authorization": f"Bearer {site.admin_token}"}
    )
    assert erased.status_code == 204
    before = table_snapshot(site.rt.db)
    assert site.client.get(f"/unsubscribe/{token}").status_code == 404
    assert site.client.post(f"/unsubscribe/{token}").status_code == 404
    assert table_snapshot(site.rt.db) == before


# No patient data and no secret in logs, Celery events or the broker ---------------------------

SMTP_LOGIN = "care@clinic.example"
SMTP_PASSWORD = "smtp-Pa55w0rd-zq9x"
REPLY_TEXT = "my left calf feels quite zorblaxian today"
# Words of the messages that are also the service's own vocabulary: step and template ids,
# states, paths ("/api/v1/sessions") and Celery's "Task ... finished". Not message text.
CODE_WORDS = {
    # Words of the rewritten messages (issue 16) that log lines also use: "worker starting",
    # "every N minutes", "(patient 3, session 3)". Ids, never text.
    "minutes",
    "starting",
    "patient",
    "covered",  # inside "recovered"
    "finished",
    "sessions",
    "aftercare",
    "checkin",
    "completion",
    "continuous",
    "reminder",
    "reminders",
    "scheduled",
    "delivered",
    "welcome",
    "warning",
    "session",
    "message",
    "messages",
    "unsubscribe",
    "template",
}


@dataclass
class Capture:
    """Everything the processes and the broker said during a run."""

    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    app_logs: list[str] = field(default_factory=list)


# This process also runs the fakes (SMTP server, Twilio) and the event receiver; their logs are
# the test's, not the service's.
TEST_SIDE_LOGGERS = ("mail.log", "kombu", "celery", "redis", "asyncio")


class _Lines(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(TEST_SIDE_LOGGERS):
            self.sink.append(self.format(record) + " " + repr(record.args))


def _events(broker_url: str, capture: Capture) -> Callable[[], None]:
    """Receive every Celery event (as Flower would) until the returned stop() is called."""
    app = Celery(broker=broker_url, set_as_current=False)
    connection = app.connection()
    receiver = app.events.Receiver(connection, handlers={"*": capture.events.append})
    thread = threading.Thread(
        target=receiver.capture, kwargs={"limit": None, "timeout": None}, daemon=True
    )
    thread.start()

    def stop() -> None:
        receiver.should_stop = True
        thread.join(timeout=10)
        connection.release()

    return stop


def _monitor(redis_url: str, capture: Capture) -> Callable[[], None]:
    """Every command any client sends to the run's Redis database (MONITOR)."""
    # No read timeout: redis-py 8 times a read out after 5 s by default, and MONITOR is silent
    # whenever the run is idle, which ended the capture with a TimeoutError part way through.
    client = redis.Redis.from_url(redis_url, socket_timeout=None)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    monitor = client.monitor()

    def watch() -> None:
        try:
            with monitor as m:
                for command in m.listen():
                    if command.get("db") == db:
                        capture.commands.append(command["command"])
        except (redis.RedisError, ValueError, OSError, AttributeError):
            return  # stopped

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def stop() -> None:
        monitor.connection.disconnect()
        thread.join(timeout=10)
        client.close()

    return stop


def _scan_keys(redis_url: str, capture: Capture) -> None:
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter():
        kind = client.type(key)
        capture.keys.append(key)
        if kind == b"list":
            capture.keys += client.lrange(key, 0, -1)
        elif kind == b"string":
            capture.keys.append(client.get(key) or b"")
        elif kind == b"set":
            capture.keys += list(client.smembers(key))
        elif kind == b"hash":
            capture.keys += [k + b" " + v for k, v in client.hgetall(key).items()]
        elif kind == b"zset":
            capture.keys += client.zrange(key, 0, -1)
    client.close()


_B64 = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")


def _decoded(blob: bytes, depth: int = 3) -> bytes:
    """``blob`` with every base64 run in it decoded too (kombu bodies are base64 JSON, nested)."""
    out = [blob]
    if depth:
        for run in _B64.findall(blob):
            try:
                out.append(_decoded(base64.b64decode(run + b"=" * (-len(run) % 4)), depth - 1))
            except (binascii.Error, ValueError):
                continue
    return b"\n".join(out)


def _phone_forms(e164: str) -> list[str]:
    national = "0" + e164[3:]
    return [e164, e164[1:], national, f"{national[:5]} {national[5:]}", e164[3:], "+44 7911 123456"]


def _message_texts(fake: FakeTwilio, mail: Recorder) -> list[str]:
    texts = [r.body for r in fake.received]
    for received in mail.received:
        message = email.message_from_bytes(received.data, policy=policy.default)
        texts.append(str(message["Subject"]))
        for part in message.walk():
            if part.get_content_type() == "text/plain":
                texts.append(part.get_content())
    return texts


def _distinctive_words(texts: list[str]) -> set[str]:
    words = {w.lower() for text in texts for w in re.findall(r"[A-Za-z]{7,}", text)}
    return words - CODE_WORDS


def _stack(tmp_path: Path, extra: dict[str, str]) -> Stack:
    """make_stack with these settings, the transports included (make_stack fixes them to the
    outbox), for the processes and for this process's runtime alike."""
    chosen = {k: extra.pop(k) for k in ("AFTERCARE_SMS_TRANSPORT", "AFTERCARE_EMAIL_TRANSPORT")}
    stack = make_stack(tmp_path, extra)
    stack.env.update(chosen)
    settings = Settings.from_environment(stack.env)
    stack.rt = Runtime(settings)
    stack.rt.clock = stack.clock
    return stack


@pytest.mark.e2e
def test_a_full_run_puts_no_patient_data_or_secret_in_logs_events_or_the_broker(
    tmp_path: Path, pg_url: str, redis_url: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    capture = Capture()
    fake = FakeTwilio().start()
    accounts = Accounts(login=SMTP_LOGIN.encode(), password=SMTP_PASSWORD.encode())
    mail = LoopbackServer(
        Recorder(require_auth=True), authenticator=accounts, auth_require_tls=False
    )
    mail.start()
    smtp_url = (
        f"smtp://{quote(SMTP_LOGIN, safe='')}:{quote(SMTP_PASSWORD, safe='')}"
        f"@127.0.0.1:{mail.port}?starttls=off"
    )
    stack = _stack(
        tmp_path,
        {
            "AFTERCARE_DATABASE_URL": pg_url,
            "AFTERCARE_BROKER_URL": redis_url,
            "AFTERCARE_TASK_EVENTS": "true",
            "AFTERCARE_SMS_TRANSPORT": "twilio",
            "AFTERCARE_TWILIO_API_BASE": fake.url,
            "AFTERCARE_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "AFTERCARE_TWILIO_AUTH_TOKEN": FAKE_TWILIO_TOKEN,
            "AFTERCARE_TWILIO_FROM": "+447700900000",
            "AFTERCARE_EMAIL_TRANSPORT": "smtp",
            "AFTERCARE_SMTP_URL": smtp_url,
            "AFTERCARE_EMAIL_FROM": "Riverside Vein Clinic <care@clinic.example>",
            "AFTERCARE_PUBLIC_BASE_URL": PUBLIC_URL,
            "AFTERCARE_CLINIC_NAME": "Riverside Vein Clinic",
        },
    )
    assert stack.env["AFTERCARE_LOG_LEVEL"] == "DEBUG"
    fake.clock = stack.clock.now
    handler = _Lines(capture.app_logs)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # Reply triage's libraries log through loguru (medspacy's PyRuSH would log each message's
    # words at DEBUG): everything loguru says, PyRuSH included, is captured too.
    loguru_logger.enable("PyRuSH")
    loguru_sink = loguru_logger.add(capture.app_logs.append, level="DEBUG")
    stops = [_events(redis_url, capture), _monitor(redis_url, capture)]
    try:
        set_runtime(stack.rt)
        _, token = add_staff(stack.rt, "nurse@example.org", "staff")
        with TestClient(create_app(stack.rt)) as client:
            body = {**ENROLMENT, "treated_at": TREATED.isoformat()}
            created = client.post(
                "/api/v1/sessions", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            assert created.status_code == 201, created.text
            reply = _sms(REPLY_TEXT, sid="SM" + "9" * 32)
            signature = _sign(PUBLIC_URL + INBOUND, reply, FAKE_TWILIO_TOKEN)
            answered = client.post(INBOUND, data=reply, headers={"X-Twilio-Signature": signature})
            assert answered.status_code == 200, answered.text
        set_runtime(None)
        processes.append(
            start_aftercare(stack, "worker", "--pool=prefork", "--concurrency=2", name="worker")
        )
        processes.append(start_aftercare(stack, "beat", name="beat"))
        play(
            stack.rt, stack.clock, on_step=lambda _: _scan_keys(redis_url, capture), step_timeout=90
        )
        with stack.rt.db.session() as s:
            sent_sms = s.scalar(
                select(func.count())
                .select_from(Reminder)
                .where(Reminder.state == states.SENT, Reminder.channel == "sms")
            )
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.wait(timeout=30)
    finally:
        for stop in stops:
            stop()
        root.removeHandler(handler)
        root.setLevel(old_level)
        loguru_logger.remove(loguru_sink)
        loguru_logger.disable("PyRuSH")
        set_runtime(None)
        fake.stop()
        mail.stop()
        _truncate(stack.rt.db)
        stack.rt.db.dispose()

    texts = _message_texts(fake, mail.recorder)
    # The run really ran: every message went out, through the worker, with events on.
    assert len(fake.received) == sent_sms
    # 34 messages for this patient since issue 16 cut the evening texts (46 before).
    assert len(texts) > 30
    logs = "".join(p.read_text(errors="replace") for p in stack.logs.glob("*.log"))
    assert "aftercare.send" in logs
    assert '"level":"debug"' in logs
    kinds = {e["type"] for e in capture.events}
    assert {"task-sent", "task-received", "task-succeeded"} <= kinds, kinds
    assert any("aftercare.send" in c for c in capture.commands)
    # Task arguments in events are reminder ids and nothing else.
    for event in capture.events:
        if (
            event["type"] in ("task-sent", "task-received")
            and event.get("name") == "aftercare.send"
        ):
            (ids,) = ast.literal_eval(event["args"])
            assert all(isinstance(i, int) for i in ids), event["args"]

    sources = {
        "worker and beat logs": logs,
        "the app's logs": "\n".join(capture.app_logs),
        "Celery events": json.dumps(capture.events, default=str),
        "Redis commands": _decoded("\n".join(capture.commands).encode()).decode(errors="replace"),
        "Redis keys": _decoded(b"\n".join(capture.keys)).decode(errors="replace"),
    }
    local_part = EMAIL.split("@", maxsplit=1)[0]
    personal = [NAME, *NAME.split(), EMAIL, local_part, *_phone_forms(PHONE), REPLY_TEXT]
    words = _distinctive_words([*texts, REPLY_TEXT])
    assert len(words) > 30
    secrets = [TEST_SECRET, FAKE_TWILIO_TOKEN, SMTP_PASSWORD, quote(SMTP_PASSWORD, safe="")]
    found = [
        (where, value)
        for where, text in sources.items()
        for value in [*personal, *sorted(words), *secrets]
        if value.lower() in text.lower()
    ]
    assert not found, f"patient data, message text or a secret found: {found}"


# Static checks -----------------------------------------------------------------------------------


def test_bandit_finds_nothing_above_low_severity() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("bandit")),
            "-q",
            "-r",
            "aftercare",
            "-ll",
            "-f",
            "json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(result.stdout)
    findings = [
        f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}"
        for r in report["results"]
    ]
    assert result.returncode == 0, findings
    assert not findings


# pip-audit exits 0 having audited nothing when the index has no vulnerability data; its JSON
# says so per dependency ("skip_reason"). Our own package, installed editable, is never audited.
OWN_PACKAGES = {"aftercare"}


def audit_verdict(report: dict[str, Any]) -> tuple[str, str]:
    """``("pass" | "skip" | "fail", why)`` for a pip-audit JSON report.

    A known vulnerability fails. A run that audited nothing, or left any dependency unaudited,
    never passes: it is a skip that says what was not audited. Only a run that audited every
    dependency and found nothing passes.
    """
    dependencies = report.get("dependencies")
    if not isinstance(dependencies, list) or not dependencies:
        return "skip", f"pip-audit reported no dependencies: {str(report)[:300]}"
    audited = [d for d in dependencies if "skip_reason" not in d]
    unaudited = [
        d for d in dependencies if "skip_reason" in d and d.get("name") not in OWN_PACKAGES
    ]
    vulnerable = {
        f"{d['name']} {d.get('version', '?')}": [v["id"] for v in d["vulns"]]
        for d in audited
        if d.get("vulns")
    }
    if vulnerable:
        return "fail", f"known vulnerabilities: {vulnerable}"
    if not audited:
        reasons = sorted({d["skip_reason"].split(":")[0] for d in dependencies})
        return "skip", f"pip-audit audited none of {len(dependencies)} dependencies: {reasons}"
    if unaudited:
        names = sorted(d["name"] for d in unaudited)
        return "skip", f"pip-audit could not audit {len(unaudited)} dependencies: {names[:20]}"
    return "pass", f"{len(audited)} dependencies audited, none known to be vulnerable"


def _no_verdict(why: str) -> None:
    """Skip with the reason, or fail where an audit is required (AFTERCARE_TEST_REQUIRE_AUDIT=1:
    a machine that reaches the advisory service, such as a release check)."""
    if os.environ.get("AFTERCARE_TEST_REQUIRE_AUDIT") == "1":
        pytest.fail(f"no audit: {why}")
    pytest.skip(why)


def test_pip_audit_reports_no_known_vulnerable_dependency() -> None:
    """Runs where pip-audit can reach an advisory database; on a machine whose package index
    has no vulnerability data it audits nothing, and the test says so instead of passing."""
    tool = Path(sys.executable).with_name("pip-audit")
    result = subprocess.run(
        [str(tool), "--progress-spinner", "off", "-f", "json", "--skip-editable"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        _no_verdict(f"pip-audit could not run here: {result.stderr.strip()[-300:]}")
    verdict, why = audit_verdict(report)
    if verdict == "skip":
        _no_verdict(why)
    assert verdict == "pass", why
    assert result.returncode == 0, result.stderr


def _dep(name: str, reason: str | None = None, vulns: list[str] | None = None) -> dict[str, Any]:
    if reason is not None:
        return {"name": name, "skip_reason": reason}
    return {"name": name, "version": "1.0", "vulns": [{"id": v} for v in vulns or []]}


OFFLINE = "Dependency not found on PyPI and could not be audited: jinja2 (3.1.6)"


@pytest.mark.parametrize(
    ("deps", "verdict"),
    [
        # This machine: the mirror has no vulnerability data, pip-audit exits 0.
        ([_dep("aftercare", "distribution marked as editable"), _dep("jinja2", OFFLINE)], "skip"),
        ([], "skip"),
        # One audited, the rest not: not a pass either.
        ([_dep("aftercare", "editable"), _dep("fastapi"), _dep("jinja2", OFFLINE)], "skip"),
        ([_dep("aftercare", "editable"), _dep("fastapi"), _dep("jinja2")], "pass"),
        ([_dep("fastapi"), _dep("jinja2", vulns=["GHSA-cpwx-vrp4-4pq7"])], "fail"),
        ([_dep("jinja2", OFFLINE), _dep("h11", vulns=["CVE-2025-43859"])], "fail"),
    ],
)
def test_a_pip_audit_run_passes_only_when_it_audited_every_dependency_and_found_nothing(
    deps: list[dict[str, Any]], verdict: str
) -> None:
    assert audit_verdict({"dependencies": deps, "fixes": []})[0] == verdict


def test_bandit_runs_in_make_lint() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "bandit -q -r aftercare -ll" in lint
    assert shutil.which("bandit", path=str(Path(sys.executable).parent))


def test_the_webhook_refusal_log_names_no_secret_and_no_sender(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    params = _sms(f"hello from {NAME}")
    _post(site, INBOUND, params, {"X-Twilio-Signature": "forged"})
    text = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert "twilio webhook refused" in text
    for value in (AUTH_TOKEN, NAME, PHONE, "forged"):
        assert value not in text


def test_the_broker_scan_would_see_a_name_inside_a_kombu_message() -> None:
    """The full run's scan is only as good as its decoding: a task body is base64 JSON inside a
    JSON envelope (inside a MONITOR line), and the name must surface from it."""
    body = base64.b64encode(json.dumps([[NAME], {}, {}]).encode()).decode()
    envelope = json.dumps({"body": body, "content-type": "application/json"})
    monitor_line = f"LPUSH aftercare.send {json.dumps(envelope)}"
    assert NAME in _decoded(monitor_line.encode()).decode(errors="replace")
