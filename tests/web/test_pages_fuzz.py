"""A property-based fuzz of everything outside the JSON API: the staff pages, the login form,
the unsubscribe link and Twilio's webhooks (``tests/web/test_api_fuzz.py`` covers ``/api/v1``).

Every route the app answers (read from the app, so a page added later is fuzzed too) gets path,
query and form values that break naive parsing: digits from other scripts (superscript,
Arabic-Indic, fullwidth), huge and signed numbers, NULs, controls, bidi marks, URL-ish and empty
text, alongside plain values that reach deeper. A sweep first puts each of a list of such
values, one at a time, in every parameter and form field of every page. Pages are called as a
logged-in nurse and as a logged-in admin with the session's CSRF token (and sometimes without
it); webhooks are signed with the clinic's Twilio token so that their fields reach the services.
No answer may be a 5xx and no exception may escape, on SQLite and on PostgreSQL (which refuses
NUL in text).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from aftercare.flags.service import raise_flag
from aftercare.regimens.model import ParameterError
from aftercare.runtime import Runtime
from aftercare.security import sign
from aftercare.storage.models import Patient
from aftercare.web.app import create_app
from aftercare.web.pages import auth as web_auth
from tests.conftest import REPO
from tests.factories import enrol
from tests.web.test_api import add_staff as api_staff
from tests.web.test_pages import FORM, add_staff

# Per route and role; raise it for a deeper run (AFTERCARE_FUZZ_EXAMPLES=500).
EXAMPLES = int(os.environ.get("AFTERCARE_FUZZ_EXAMPLES", "25"))
AUTH_TOKEN = "fuzz-twilio-auth-token-0123456789abcdef"
PUBLIC_URL = "https://clinic.example"
WEBHOOKS = ("/webhooks/twilio/inbound", "/webhooks/twilio/status")
# Covered elsewhere: the JSON API (schemathesis) and FastAPI's own API description pages; and
# /readyz, whose 503 is its answer while beat has not run (it reads no input).
ELSEWHERE = ("/api/", "/openapi.json", "/docs", "/redoc", "/readyz")

NASTY = [
    "",
    " ",
    "0",
    "1",
    "2",
    "-1",
    "+1",
    "²",
    "٣",
    "１２",
    "¹0",
    "1e3",
    "1.5",
    "0x10",
    "1_000",
    "9" * 11,
    "9" * 30,
    "9" * 5000,
    str(2**31),
    str(2**63),
    str(-(2**63) - 1),
    "\x00",
    "a\x00b",
    "1\x00",
    "\r\n",
    "\t",
    "é",
    "abc.é",
    "abc.%C3%A9",
    "\u202e",
    "\u3164",
    "\ufeff1",
    "%",
    "%00",
    "../../etc/passwd",
    "//evil.example",
    "/\\evil",
    "<script>",
    "'",
    "null",
    "true",
    "Europe/London",
    "localtime",
    "sms",
    "email",
    "sms,email",
    "save",
    "preview",
    "yes",
    "2026-03-20",
    "10:00",
    "2026-02-30",
    "25:61",
    "micro-sclerotherapy",
    "+447911123456",
    "STOP",
    "START",
    "HELP",
    "delivered",
    "undelivered",
    "SM" + "a" * 32,
    "AC" + "0" * 32,
]
# The sweep below tries each of these in every parameter of every page, one at a time.
SWEEP = [
    "",
    "-1",
    "²",
    "٣",
    "１２",
    "9" * 5000,
    str(2**63),
    "\x00",
    "1\x00",
    "\r\n",
    "é",
    "abc.é",
    "\u202e",
    "%00",
    "//evil.example",
]
VALUES = st.one_of(
    st.sampled_from(SWEEP),
    st.sampled_from(NASTY),
    st.sampled_from(NASTY),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.integers(-(2**70), 2**70).map(str),
    st.from_regex(r"[0-9]{1,12}", fullmatch=True),
)


def _template_fields() -> list[str]:
    """Every form field a staff page or the login form names."""
    names: set[str] = set(FORM) | {"next", "done", "q", "patient", "action", "before", "note"}
    for page in (REPO / "templates" / "web").rglob("*.html"):
        names |= set(re.findall(r'name="([A-Za-z_-]+)"', page.read_text(encoding="utf-8")))
    return sorted(names - {"viewport", "robots", "referrer", "csrf_token"})


FIELDS = _template_fields()
FIELD_VALUES = st.dictionaries(st.sampled_from([*FIELDS, "x"]), VALUES, max_size=6)


def _page_routes() -> list[tuple[str, str]]:
    out = []
    for route in iter_route_contexts(create_app().routes):
        if route.path.startswith(ELSEWHERE) or route.path in WEBHOOKS:
            continue
        methods = sorted(route.methods or ()) or ["GET"]  # a mount: files under it
        path = route.path if route.methods else route.path + "/{path}"
        out += [(m, path) for m in methods if m != "HEAD"]
    return out


def _query_names() -> dict[tuple[str, str], list[str]]:
    """The query parameters each route declares (``/audit``: action, patient, before)."""
    out: dict[tuple[str, str], list[str]] = {}
    for route in iter_route_contexts(create_app().routes):
        dependant = getattr(route, "dependant", None)
        names = [p.alias for p in dependant.query_params] if dependant is not None else []
        for method in route.methods or ():
            out[(method, route.path)] = names
    return out


PAGE_ROUTES = _page_routes()
QUERY_NAMES = _query_names()
PARAM = re.compile(r"\{([^}]+)\}")


@dataclass
class Site:
    rt: Runtime
    client: TestClient
    staff_ids: dict[str, int]
    token: str

    def log_in(self, role: str) -> str:
        """A fresh session for ``role`` (a fuzzed POST /logout ends the previous one)."""
        with self.rt.db.session() as s:
            cookie, row = web_auth.start_session(
                db_session=s, staff_id=self.staff_ids[role], now=self.rt.clock.now()
            )
            csrf = row.csrf_token
        self.client.cookies.clear()
        self.client.cookies.set(web_auth.SESSION_COOKIE, cookie)
        return csrf


@pytest.fixture
def site(runtime: Runtime) -> Iterator[Site]:
    runtime.settings = runtime.settings.model_copy(
        update={"twilio_auth_token": AUTH_TOKEN, "public_base_url": PUBLIC_URL}
    )
    staff_ids = {
        "staff": add_staff(runtime, "nurse@example.org", "staff", "Nora Nurse"),
        "admin": add_staff(runtime, "admin@example.org", "admin", "Ada Admin"),
    }
    enrol(runtime)
    now = runtime.clock.now()
    with runtime.db.session() as s:
        raise_flag(s, kind="unrecognised_reply", patient_id=1, text="a reply", now=now)
        public_id = s.scalars(select(Patient.public_id)).one()
    secret = runtime.settings.effective_secret_key()
    # raise_server_exceptions: an exception escaping the app fails the test with its traceback.
    with TestClient(create_app(runtime), follow_redirects=False) as client:
        yield Site(runtime, client, staff_ids, sign(public_id, secret=secret))


def _path(template: str, draw: Any, site: Site) -> str:
    def value(match: re.Match[str]) -> str:
        if match.group(1) == "token" and draw(st.booleans()):
            # The real token, or the real one bent: cut, extended, a character swapped.
            token = site.token
            return quote(draw(st.sampled_from([token, token[:-1], token + "é", token + "\x00"])))
        return quote(draw(VALUES), safe="")

    return PARAM.sub(value, template)


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("role", ["staff", "admin"])
@pytest.mark.parametrize(("method", "template"), PAGE_ROUTES)
@FUZZ
@given(data=st.data())
def test_no_page_answers_5xx_to_any_path_query_or_form(
    site: Site, role: str, method: str, template: str, data: st.DataObject
) -> None:
    csrf = site.log_in(role)
    path = _path(template, data.draw, site)
    declared = QUERY_NAMES.get((method, template), [])
    names = st.sampled_from(declared) if declared else st.sampled_from([*FIELDS, "x"])
    query = data.draw(st.dictionaries(names, VALUES, max_size=4), label="query")
    kwargs: dict[str, Any] = {"params": query}
    if method == "POST":
        # Often a valid enrolment form with some fields replaced, to get past the first error.
        form = dict(FORM) if data.draw(st.booleans(), label="from a valid form") else {}
        form.update(data.draw(FIELD_VALUES, label="form"))
        if data.draw(st.booleans(), label="with csrf"):
            form["csrf_token"] = csrf
        kwargs["data"] = form
    response = site.client.request(method, path, **kwargs)
    assert response.status_code < 500, (method, path, kwargs, response.text[:500])


TWILIO_FIELDS = [
    "MessageSid",
    "SmsSid",
    "AccountSid",
    "MessagingServiceSid",
    "From",
    "To",
    "Body",
    "NumMedia",
    "NumSegments",
    "MessageStatus",
    "SmsStatus",
    "ErrorCode",
    "ErrorMessage",
    "OptOutType",
    "ApiVersion",
]
SIDS = st.one_of(
    st.just("SM" + "1" * 32),
    st.from_regex(r"(SM|MM|SL)[0-9a-f]{32}", fullmatch=True),
    st.just("outbox-reminder-1"),
    VALUES,
)


@pytest.mark.parametrize("path", WEBHOOKS)
@FUZZ
@given(data=st.data())
def test_no_signed_webhook_answers_5xx_to_any_fields(
    site: Site, path: str, data: st.DataObject
) -> None:
    params = data.draw(st.dictionaries(st.sampled_from([*TWILIO_FIELDS, "x"]), VALUES, max_size=8))
    if data.draw(st.booleans(), label="steered"):
        params.setdefault("MessageSid", data.draw(SIDS, label="sid"))
        params.setdefault("From", data.draw(st.sampled_from(["+447911123456", *NASTY])))
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + path, params)
    site.client.cookies.clear()
    response = site.client.post(path, data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code < 500, (path, params, response.text[:500])


def _sweep_requests(site: Site) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """One nasty value at a time in each path parameter, declared query parameter and form
    field of every page route (the others valid), as (method, path, request arguments)."""
    for method, template in PAGE_ROUTES:
        params = PARAM.findall(template)
        valid_path = PARAM.sub("1", template)
        for value in SWEEP:
            for name in params:
                one = template.replace("{" + name + "}", quote(value, safe=""))
                yield method, PARAM.sub("1", one), {}
            for name in QUERY_NAMES.get((method, template), []):
                yield method, valid_path, {"params": {name: value}}
            if method == "POST":
                for name in FIELDS:
                    yield method, valid_path, {"data": {**FORM, name: value}}


def test_every_page_parameter_takes_each_nasty_value_without_a_5xx(site: Site) -> None:
    failures = []
    count = 0
    csrf = site.log_in("admin")
    for method, path, planned in _sweep_requests(site):
        kwargs = planned
        if "data" in planned:
            kwargs = {"data": {**planned["data"], "csrf_token": csrf}}
        try:
            response = site.client.request(method, path, **kwargs)
        except Exception as exc:
            failures.append((method, path, kwargs, type(exc).__name__))
            continue
        finally:
            if path == "/logout":  # it worked: the next page needs a session again
                csrf = site.log_in("admin")
        count += 1
        if response.status_code >= 500:
            failures.append((method, path, kwargs, response.status_code))
    assert count > 1000, count
    assert not failures, failures[:20]


# What the outside run found, pinned -------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("suffix", ["abc.%C3%A9", "abc%C3%A9.abc", "%D9%A3.%C2%B2"])
def test_an_unsubscribe_token_with_non_ascii_characters_is_the_not_found_page(
    site: Site, method: str, suffix: str
) -> None:
    site.client.cookies.clear()
    assert site.client.request(method, f"/unsubscribe/{suffix}").status_code == 404
    bent = site.token[:-1] + "%C3%A9"
    assert site.client.request(method, f"/unsubscribe/{bent}").status_code == 404


@pytest.mark.parametrize("patient", ["²", "٣", "１", "9" * 12])
def test_an_audit_filter_that_is_not_an_ascii_number_shows_the_unfiltered_log(
    site: Site, patient: str
) -> None:
    site.log_in("admin")
    response = site.client.get("/audit", params={"patient": patient})
    assert response.status_code == 200
    assert "Recorded a session" in response.text  # the enrolment, unfiltered


@pytest.mark.parametrize("value", ["²", "١٤", "１４", "9" * 5000, "--7", "7\x00"])
def test_a_regimen_parameter_that_is_not_an_ascii_number_is_refused_by_name(
    site: Site, value: str
) -> None:
    regimen = site.rt.registry.get("micro-sclerotherapy")
    parameter = regimen.parameters["daily_days"]
    with pytest.raises(ParameterError) as refused:
        parameter.validate(value)
    assert "whole number" in str(refused.value)
    assert parameter.validate(" 14 ") == 14


@pytest.mark.parametrize("value", ["²", "9" * 5000, "--7"])
def test_a_regimen_parameter_that_is_not_an_ascii_number_is_a_422_from_the_api_too(
    site: Site, value: str
) -> None:
    _, token = api_staff(site.rt, "api@example.org", "staff")
    body = {
        "patient": {
            "name": "Ann Example",
            "phone": "07911 123456",
            "timezone": "Europe/London",
            "channels": ["sms"],
        },
        "treated_at": site.rt.clock.now().isoformat(),
        "regimen": "micro-sclerotherapy",
        "parameters": {"daily_days": value},
        "consent": True,
        "contraindications_checked": True,
    }
    site.client.cookies.clear()
    answer = site.client.post(
        "/api/v1/sessions", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][-1] == "daily_days"
