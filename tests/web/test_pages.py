"""The staff pages through the real app (TestClient), on SQLite and PostgreSQL: logins, the
login rate limit, cookies, CSRF on every form, recording a session (preview, save, errors),
pause/resume/cancel, editing contact details, flags and the admin-only audit log.

The browser suite (``tests/browser``) drives the same pages in Chromium."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from aftercare.clock import FixedClock
from aftercare.flags.service import raise_flag
from aftercare.runtime import Runtime
from aftercare.staff.service import hash_password
from aftercare.storage.models import (
    AuditEvent,
    Flag,
    LoginThrottle,
    Patient,
    Reminder,
    StaffUser,
    TreatmentSession,
    WebSession,
)
from aftercare.web.app import create_app
from tests.factories import add_staff as staff_row
from tests.factories import enrol

# PostgreSQL work in one transaction rolled back after each test (tests/conftest.py).
pytestmark = pytest.mark.rollback

PASSWORD = "a password for the page tests"
NURSE = "nurse@example.org"
ADMIN = "admin@example.org"
CONTRAINDICATIONS = ["no-dvt", "not-pregnant", "no-travel", "no-deep-disease"]
FORM: dict[str, Any] = {
    "name": "Philippa Quennell",
    "phone": "07911 123456",
    "email": "philippa.quennell@example.org",
    "timezone": "Europe/London",
    "channels": ["sms", "email"],
    "treated_date": "2026-03-02",
    "treated_time": "10:00",
    "regimen": "micro-sclerotherapy",
    "param-daily_days": "14",
    "param-checkin_week": "10",
    "param-garment": "lower-leg",
    "contra": CONTRAINDICATIONS,
    "consent": "yes",
}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@lru_cache(maxsize=1)
def _password_hash() -> str:
    return hash_password(PASSWORD)


@dataclass
class Pages:
    """The app with a nurse (role staff) and an admin; ``client`` is logged in as the nurse."""

    rt: Runtime
    client: TestClient
    nurse_id: int
    admin_id: int

    @property
    def clock(self) -> FixedClock:
        assert isinstance(self.rt.clock, FixedClock)
        return self.rt.clock

    def new_client(self, **kwargs: Any) -> TestClient:
        return TestClient(self.client.app, follow_redirects=False, **kwargs)

    def csrf(self, client: TestClient | None = None) -> str:
        page = (client or self.client).get("/")
        assert page.status_code == 200, page.text
        found = CSRF.search(page.text)
        assert found is not None
        return found.group(1)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Response:
        """A form POST carrying the session's CSRF token."""
        return self.client.post(path, data={"csrf_token": self.csrf(), **(data or {})}, **kwargs)

    def enrol(self, **changes: Any) -> Response:
        return self.post("/sessions/new", {**FORM, "action": "save", **changes})

    def count(self, model: Any) -> int:
        with self.rt.db.session() as s:
            return s.scalar(select(func.count()).select_from(model)) or 0

    def counts(self) -> tuple[int, ...]:
        return tuple(self.count(m) for m in (Patient, TreatmentSession, Reminder, AuditEvent, Flag))

    def session(self, session_id: int) -> TreatmentSession:
        with self.rt.db.session() as s:
            return s.get_one(TreatmentSession, session_id)


def add_staff(rt: Runtime, email: str, role: str, name: str = "") -> int:
    with rt.db.session() as s:
        user = staff_row(
            s,
            now=rt.clock.now(),
            email=email,
            name=name,
            password_hash=_password_hash(),
            role=role,
        )
        return user.id


def log_in(
    client: TestClient, email: str = NURSE, password: str = PASSWORD, next_url: str = "/"
) -> Response:
    form = client.get("/login")
    token = CSRF.search(form.text)
    assert token is not None
    return client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": token.group(1), "next": next_url},
    )


@pytest.fixture
def pages(runtime: Runtime) -> Iterator[Pages]:
    nurse_id = add_staff(runtime, NURSE, "staff", "Nora Nurse")
    admin_id = add_staff(runtime, ADMIN, "admin", "Ada Admin")
    with TestClient(create_app(runtime), follow_redirects=False) as client:
        assert log_in(client).status_code == 303
        yield Pages(runtime, client, nurse_id, admin_id)


def text_of(response: Response) -> str:
    """The page's text with tags removed and entities decoded, for reading assertions."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.text)).split())


def session_id_of(response: Response, rt: Runtime) -> int:
    assert response.status_code == 303, response.text
    patient_id = int(response.headers["location"].split("/patients/")[1].split("?")[0])
    with rt.db.session() as s:
        return s.scalars(
            select(TreatmentSession.id).where(TreatmentSession.patient_id == patient_id)
        ).one()


# Logging in and out ----------------------------------------------------------------------------


STAFF_PAGES = ["/", "/sessions/new", "/patients", "/patients/1", "/flags", "/audit"]


@pytest.mark.parametrize("path", STAFF_PAGES)
def test_anonymous_visitor_is_sent_to_the_login_page(pages: Pages, path: str) -> None:
    response = pages.new_client().get(path)

    assert response.status_code == 303
    expected = "/login" if path == "/" else f"/login?next={path}"
    assert response.headers["location"] == expected


@pytest.mark.parametrize(
    "path",
    ["/sessions/new", "/sessions/1/pause", "/sessions/1/cancel", "/flags/1/resolve", "/logout"],
)
def test_anonymous_post_is_sent_to_log_in_and_changes_nothing(pages: Pages, path: str) -> None:
    enrol(pages.rt)
    before = pages.counts()

    response = pages.new_client().post(path, data={**FORM, "action": "save"})

    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert pages.counts() == before
    assert pages.session(1).status == "active"


def test_login_opens_the_page_asked_for_and_stores_only_a_hash_of_the_cookie(
    pages: Pages,
) -> None:
    client = pages.new_client()

    response = log_in(client, ADMIN, next_url="/flags")

    assert response.status_code == 303
    assert response.headers["location"] == "/flags"
    token = client.cookies["aftercare_session"]
    with pages.rt.db.session() as s:
        row = s.scalars(select(WebSession).where(WebSession.staff_id == pages.admin_id)).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert row.expires_at == pages.clock.now() + timedelta(hours=12)
    assert client.get("/flags").status_code == 200


@pytest.mark.parametrize(
    ("email", "password"),
    [(NURSE, "not the password"), ("nobody@example.org", PASSWORD), (NURSE, ""), ("a\x00b", "x")],
)
def test_wrong_email_or_password_gets_one_generic_message(
    pages: Pages, email: str, password: str
) -> None:
    client = pages.new_client()

    response = log_in(client, email, password)

    assert response.status_code == 401
    assert "Wrong email or password." in text_of(response)
    assert "aftercare_session" not in client.cookies


def test_login_is_refused_after_five_failures_for_fifteen_minutes(pages: Pages) -> None:
    client = pages.new_client()
    for _ in range(4):
        assert log_in(client, NURSE, "wrong password").status_code == 401

    fifth = log_in(client, NURSE, "wrong password")
    right_password = log_in(client, NURSE, PASSWORD)

    assert fifth.status_code == 429
    assert right_password.status_code == 429
    assert "Too many failed attempts" in text_of(right_password)
    assert "try again in 15 minutes" in text_of(right_password)
    assert "aftercare_session" not in client.cookies
    assert log_in(pages.new_client(), ADMIN).status_code == 303  # another email is not held
    with pages.rt.db.session() as s:
        keys = s.scalars(select(LoginThrottle.key_hash)).all()
    assert all(NURSE not in k for k in keys)

    pages.clock.advance(timedelta(minutes=15, seconds=1))
    assert log_in(client, NURSE, PASSWORD).status_code == 303


def test_a_successful_login_clears_earlier_failures(pages: Pages) -> None:
    client = pages.new_client()
    for _ in range(4):
        log_in(client, NURSE, "wrong password")
    assert log_in(client, NURSE, PASSWORD).status_code == 303
    for _ in range(4):
        assert log_in(pages.new_client(), NURSE, "wrong password").status_code == 401


def test_login_without_the_forms_own_token_is_refused(pages: Pages) -> None:
    client = pages.new_client()

    response = client.post("/login", data={"email": NURSE, "password": PASSWORD})

    assert response.status_code == 403
    assert "aftercare_session" not in client.cookies


def test_session_cookie_is_httponly_and_samesite_but_not_secure_over_http(pages: Pages) -> None:
    response = log_in(pages.new_client())

    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("aftercare_session=")
    )
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in flags
    assert "samesite=lax" in flags
    assert "path=/" in flags
    assert "secure" not in flags


def test_session_cookie_is_secure_behind_an_https_base_url(pages: Pages) -> None:
    pages.rt.settings = pages.rt.settings.model_copy(
        update={"public_base_url": "https://aftercare.example.org"}
    )
    client = pages.new_client(base_url="https://testserver")

    response = log_in(client)

    cookies = response.headers.get_list("set-cookie")
    session_cookie = next(c for c in cookies if c.startswith("aftercare_session="))
    assert "secure" in {part.strip().lower() for part in session_cookie.split(";")}
    assert client.get("/").status_code == 200


def test_session_ends_after_twelve_hours(pages: Pages) -> None:
    pages.clock.advance(timedelta(hours=12))

    response = pages.client.get("/")

    assert response.status_code == 303
    assert response.headers["location"] == "/login"


def test_a_disabled_account_is_logged_out(pages: Pages) -> None:
    with pages.rt.db.session() as s:
        s.get_one(StaffUser, pages.nurse_id).disabled_at = pages.clock.now()

    assert pages.client.get("/").status_code == 303


def test_logout_ends_the_session_on_the_server(pages: Pages) -> None:
    stolen = pages.client.cookies["aftercare_session"]

    response = pages.post("/logout")

    assert response.status_code == 303
    assert response.headers["location"] == "/login?done=logged_out"
    assert pages.count(WebSession) == 0
    replay = pages.new_client(cookies={"aftercare_session": stolen})
    assert replay.get("/").status_code == 303


@pytest.mark.parametrize("next_url", ["//evil.example/", "https://evil.example/", "/\\evil"])
def test_login_never_redirects_off_site(pages: Pages, next_url: str) -> None:
    response = log_in(pages.new_client(), next_url=next_url)

    assert response.headers["location"] == "/"


# CSRF -----------------------------------------------------------------------------------------


def _csrf_targets(pages: Pages) -> list[tuple[str, dict[str, Any]]]:
    session_id = enrol(pages.rt)
    with pages.rt.db.session() as s:
        flag = raise_flag(s, kind="urgent_reply", patient_id=1, text="pain", now=pages.clock.now())
    return [
        ("/sessions/new", {**FORM, "action": "save"}),
        (f"/sessions/{session_id}/pause", {}),
        (f"/sessions/{session_id}/cancel", {}),
        ("/patients/1/edit", {**FORM, "phone": "07912 345678"}),
        (f"/flags/{flag.id}/resolve", {"note": "called"}),
        ("/logout", {}),
    ]


@pytest.mark.parametrize("token", ["missing", "wrong", "another session's"])
def test_every_form_without_this_sessions_csrf_token_is_403_and_changes_nothing(
    pages: Pages, token: str
) -> None:
    other = pages.new_client()
    log_in(other, ADMIN)
    tokens = {"missing": None, "wrong": "x" * 43, "another session's": pages.csrf(other)}
    for path, data in _csrf_targets(pages):
        before = (pages.counts(), pages.count(WebSession), pages.session(1).status)
        sent = dict(data) if tokens[token] is None else {**data, "csrf_token": tokens[token]}

        response = pages.client.post(path, data=sent)

        assert response.status_code == 403, path
        assert "This form has expired" in text_of(response)
        assert (pages.counts(), pages.count(WebSession), pages.session(1).status) == before
    with pages.rt.db.session() as s:
        assert s.get_one(Patient, 1).phone == "+447911123456"
        assert s.scalars(select(Flag.resolved_at)).one() is None


# Record a session -----------------------------------------------------------------------------


def test_record_form_defaults_to_now_in_the_clinics_zone(pages: Pages) -> None:
    response = pages.client.get("/sessions/new")

    assert response.status_code == 200
    # Text fields in the clinic's own format: a date input would follow the browser's locale
    # (a US browser shows 03/02/2026 for 2 March).
    assert 'name="treated_date" type="text" inputmode="numeric"' in response.text
    assert 'value="02/03/2026"' in response.text
    assert 'name="treated_time" type="text" inputmode="numeric"' in response.text
    assert 'value="10:30"' in response.text
    assert 'name="timezone" type="text" value="Europe/London"' in response.text
    for label in ("Patient name", "Mobile phone", "Email address", "Time zone"):
        assert f">{label}</label>" in response.text
    for key in CONTRAINDICATIONS:
        assert f'<label for="contra-{key}">' in response.text


def test_preview_shows_the_timeline_in_the_patients_time_and_stores_nothing(
    pages: Pages,
) -> None:
    before = pages.counts()

    response = pages.post(
        "/sessions/new",
        {**FORM, "timezone": "America/New_York", "treated_time": "05:00", "action": "preview"},
    )

    assert response.status_code == 200
    page = text_of(response)
    assert "34 messages from Mon 2 Mar 2026, 05:30 EST" in page  # recorded at 05:30
    assert "in the patient's time (America/New_York)" in page
    # 05:00 New York is 10:00 UTC; the 72-hour step is exact elapsed time, shown locally.
    assert "Thu 5 Mar, 05:00 End of continuous wear (72 hours) Email" in page
    assert "Put your stockings on for the day (14 of 14)" in page
    assert 'value="Philippa Quennell"' in response.text
    assert pages.counts() == before


def test_preview_needs_only_the_timing_fields(pages: Pages) -> None:
    response = pages.post(
        "/sessions/new", {**FORM, "name": "", "phone": "", "consent": "", "action": "preview"}
    )

    assert response.status_code == 200
    assert "End of continuous wear" in text_of(response)
    assert "Please check" not in text_of(response)


def test_preview_with_a_bad_zone_names_it_and_shows_no_timeline(pages: Pages) -> None:
    response = pages.post("/sessions/new", {**FORM, "timezone": "Mars/Base", "action": "preview"})

    page = text_of(response)
    assert "Time zone: 'Mars/Base' is not an IANA time zone" in page
    assert "End of continuous wear" not in page


def test_save_records_the_session_and_opens_the_patients_timeline(pages: Pages) -> None:
    response = pages.enrol(**{"param-daily_days": "7", "param-checkin_week": "12"})

    session_id = session_id_of(response, pages.rt)
    assert response.headers["location"] == "/patients/1?done=enrolled"
    session = pages.session(session_id)
    assert session.parameters == {
        "daily_days": 7,
        "checkin_week": 12,
        "garment": "lower-leg",
        "evening_reminders": "first_and_last",
        # Optional advice (issue 16): on by default, stored like every parameter.
        "walking_advice": "include",
        "washing_advice": "include",
        "pain_relief_advice": "include",
        "lumpy_veins_advice": "include",
    }
    assert session.created_by_id == pages.nurse_id
    assert session.consent
    assert session.contraindications_checked
    with pages.rt.db.session() as s:
        event = s.scalars(select(AuditEvent)).one()
    assert (event.action, event.actor_id, event.patient_id) == ("enrol", pages.nurse_id, 1)
    page = text_of(pages.client.get("/patients/1?done=enrolled"))
    assert "Session recorded" in page
    assert "Philippa Quennell" in page
    assert "07911 123456" in page  # as the clinic writes it; the tel: link keeps E.164
    assert "Welcome, continuous wear and what is normal" in page


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"name": ""}, "name", "Patient name is required"),
        ({"phone": "12345"}, "phone", "Mobile phone is not a valid phone number"),
        ({"email": "not-an-email"}, "email", "Email address is not a valid email address"),
        ({"timezone": "Nowhere/City"}, "timezone", "'Nowhere/City' is not an IANA time zone"),
        ({"channels": []}, "channel-sms", "choose at least one of: sms, email"),
        ({"treated_date": "yesterday"}, "treated_date", "needs a date and a time"),
        ({"treated_date": "2026-03-04"}, "treated_date", "is more than a day in the future"),
        ({"treated_date": "2025-01-01"}, "treated_date", "aftercare is already over"),
        ({"param-checkin_week": "20"}, "param-checkin_week", "must be at most 13"),
        ({"consent": ""}, "consent", "Confirm that the patient agrees"),
        ({"contra": CONTRAINDICATIONS[:3]}, "contra-no-dvt", "Confirm all four contraindication"),
    ],
)
def test_bad_field_is_named_next_to_it_and_in_the_summary_and_nothing_is_stored(
    pages: Pages, changes: dict[str, Any], field: str, message: str
) -> None:
    before = pages.counts()

    response = pages.enrol(**changes)

    assert response.status_code == 422
    assert pages.counts() == before
    summary = re.search(r'class="error-summary".*?</div>', response.text, re.S)
    assert summary is not None
    assert f'href="#{field}"' in summary.group(0)
    assert message in html.unescape(summary.group(0))
    inline = re.search(rf'<p class="field-error" id="{field}-error">(.*?)</p>', response.text)
    assert inline is not None
    assert message in html.unescape(inline.group(1))
    assert f'id="{field}"' in response.text


def test_every_bad_field_is_reported_at_once(pages: Pages) -> None:
    response = pages.enrol(name="", phone="1", treated_date="", consent="", contra=[])

    summary = re.search(r'class="error-summary".*?</div>', response.text, re.S)
    assert summary is not None
    links = re.findall(r'href="#([^"]+)"', summary.group(0))
    # In the form's own order, as a reader meets the fields.
    assert links == ["name", "phone", "treated_date", "contra-no-dvt", "consent"]
    assert "ISO-8601" not in response.text  # the API's wording is not shown to staff


def test_what_staff_type_is_escaped(pages: Pages) -> None:
    response = pages.enrol(name="<script>alert(1)</script> Smith")

    assert response.status_code == 303
    page = pages.client.get("/patients/1")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Smith" in page.text


# The patient page: pause, resume, cancel, edit -----------------------------------------------


def test_patient_page_shows_contact_timeline_replies_and_flags(pages: Pages) -> None:
    session_id = enrol(pages.rt)
    with pages.rt.db.session() as s:
        raise_flag(
            s,
            kind="checkin_concern",
            patient_id=1,
            session_id=session_id,
            text="Still dark after ten weeks",
            now=pages.clock.now(),
        )

    page = text_of(pages.client.get("/patients/1"))

    assert "philippa.quennell@example.org" in page
    assert "Check-in concern" in page
    assert "Still dark after ten weeks" in page
    assert "in the patient's time (Europe/London)" in page
    assert "Mon 2 Mar, 10:30 Welcome, continuous wear and what is normal Email Upcoming" in page
    assert "No replies yet." in page


def test_pause_resume_and_cancel_from_the_patient_page(pages: Pages) -> None:
    session_id = enrol(pages.rt)

    paused = pages.post(f"/sessions/{session_id}/pause")
    assert paused.status_code == 303
    assert paused.headers["location"] == "/patients/1?done=paused"
    assert pages.session(session_id).status == "paused"
    assert "Reminders paused" in text_of(pages.client.get(paused.headers["location"]))

    assert pages.post(f"/sessions/{session_id}/resume").status_code == 303
    assert pages.session(session_id).status == "active"

    confirm = pages.client.get(f"/sessions/{session_id}/cancel")
    assert confirm.status_code == 200
    assert "Yes, cancel the session" in confirm.text
    assert pages.session(session_id).status == "active"  # asking changes nothing

    assert pages.post(f"/sessions/{session_id}/cancel").status_code == 303
    assert pages.session(session_id).status == "cancelled"
    with pages.rt.db.session() as s:
        actions = s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        actors = set(s.scalars(select(AuditEvent.actor_id)).all())
    assert actions == ["pause", "resume", "cancel"]
    assert actors == {pages.nurse_id}


@pytest.mark.parametrize(
    ("first", "then", "says"),
    [
        ("pause", "pause", "is already paused"),
        (None, "resume", "is not paused"),
        ("cancel", "resume", "is cancelled: it cannot be resumed"),
        ("cancel", "cancel", "is cancelled: it cannot be cancelled"),
    ],
)
def test_an_action_that_makes_no_sense_now_is_a_friendly_409(
    pages: Pages, first: str | None, then: str, says: str
) -> None:
    session_id = enrol(pages.rt)
    if first:
        assert pages.post(f"/sessions/{session_id}/{first}").status_code == 303
    before = (pages.counts(), pages.session(session_id).status)

    response = pages.post(f"/sessions/{session_id}/{then}")

    assert response.status_code == 409
    page = text_of(response)
    assert f"Nothing was changed: session {session_id} {says}" in page
    assert "Philippa Quennell" in page  # the patient page, as things stand now
    assert (pages.counts(), pages.session(session_id).status) == before


def test_edit_contact_details_saves_them_and_is_audited(pages: Pages) -> None:
    enrol(pages.rt)

    response = pages.post(
        "/patients/1/edit",
        {
            "name": "Philippa Quennell",
            "phone": "07912 345678",
            "email": "",
            "timezone": "Europe/Paris",
            "channels": ["sms"],
        },
    )

    assert response.status_code == 303
    assert response.headers["location"] == "/patients/1?done=edited"
    with pages.rt.db.session() as s:
        patient = s.get_one(Patient, 1)
        event = s.scalars(select(AuditEvent)).one()
    assert (patient.phone, patient.email, patient.timezone) == (
        "+447912345678",
        None,
        "Europe/Paris",
    )
    assert patient.channel_list == ["sms"]
    assert (event.action, event.actor_id) == ("edit", pages.nurse_id)


def test_bad_contact_details_are_shown_in_the_form_and_nothing_changes(pages: Pages) -> None:
    enrol(pages.rt)
    before = pages.counts()

    response = pages.post(
        "/patients/1/edit",
        {**FORM, "phone": "", "email": "nope", "channels": ["sms", "email"]},
    )

    assert response.status_code == 422
    page = text_of(response)
    assert "Mobile phone is required for SMS" in page
    assert "Email address is not a valid email address" in page
    assert '<details class="edit" open>' in response.text
    assert 'value="nope"' in response.text  # what was typed is kept
    assert pages.counts() == before
    with pages.rt.db.session() as s:
        assert s.get_one(Patient, 1).email == "philippa.quennell@example.org"


@pytest.mark.parametrize(
    "path",
    [
        "/patients/999",
        "/patients/0",
        "/patients/abc",
        "/patients/99999999999",
        "/sessions/999/cancel",
    ],
)
def test_unknown_or_malformed_id_is_a_404_page(pages: Pages, path: str) -> None:
    response = pages.client.get(path)

    assert response.status_code == 404
    assert "Not found" in text_of(response)
    assert response.headers["content-type"].startswith("text/html")


def test_post_to_an_unknown_id_is_a_404_page_and_changes_nothing(pages: Pages) -> None:
    before = pages.counts()
    for path in ("/sessions/999/pause", "/flags/999/resolve", "/patients/999/edit"):
        assert pages.post(path, FORM).status_code == 404, path
    assert pages.counts() == before


# Flags, dashboard, search ---------------------------------------------------------------------


def _flags(pages: Pages) -> tuple[int, int]:
    enrol(pages.rt)
    with pages.rt.db.session() as s:
        failed = raise_flag(
            s, kind="delivery_failed", patient_id=1, text="SMS failed", now=pages.clock.now()
        )
        pages.clock.advance(timedelta(minutes=5))
        urgent = raise_flag(
            s, kind="urgent_reply", patient_id=1, text="calf hurts", now=pages.clock.now()
        )
        return failed.id, urgent.id


def test_flags_page_lists_urgent_flags_first_each_with_a_resolve_form(pages: Pages) -> None:
    failed_id, urgent_id = _flags(pages)

    response = pages.client.get("/flags")

    assert response.status_code == 200
    order = re.findall(r'id="flag-(\d+)"', response.text)
    assert order == [str(urgent_id), str(failed_id)]
    assert f'action="/flags/{urgent_id}/resolve"' in response.text
    assert 'href="/patients/1"' in response.text
    assert "2 open, 1 urgent" in text_of(response)


def test_flags_page_and_dashboard_put_emergencies_first_with_signs_and_what_was_said(
    pages: Pages,
) -> None:
    failed_id, urgent_id = _flags(pages)
    with pages.rt.db.session() as s:
        emergency = raise_flag(
            s,
            kind="urgent_reply",
            patient_id=1,
            severity="emergency",
            signs=["chest pain", "breathlessness"],
            told="Call 999 now.",
            text="tight chest",
            now=pages.clock.now(),
        )

    flags_page = pages.client.get("/flags")
    order = re.findall(r'id="flag-(\d+)"', flags_page.text)
    dashboard = text_of(pages.client.get("/"))

    assert order == [str(emergency.id), str(urgent_id), str(failed_id)]
    page = text_of(flags_page)
    assert "Emergency" in page
    assert "Signs found: chest pain, breathlessness" in page
    assert "We replied: Call 999 now." in page
    assert dashboard.index("tight chest") < dashboard.index("calf hurts")


def test_resolving_a_flag_records_who_and_the_note_and_twice_is_a_friendly_409(
    pages: Pages,
) -> None:
    _, urgent_id = _flags(pages)

    response = pages.post(f"/flags/{urgent_id}/resolve", {"note": "Called back, all fine."})

    assert response.status_code == 303
    assert response.headers["location"] == "/flags?done=resolved"
    with pages.rt.db.session() as s:
        flag = s.get_one(Flag, urgent_id)
        event = s.scalars(select(AuditEvent)).one()
    assert flag.resolved_by_id == pages.nurse_id
    assert flag.resolution_note == "Called back, all fine."
    assert (event.action, event.actor_id) == ("resolve_flag", pages.nurse_id)
    assert f'id="flag-{urgent_id}"' not in pages.client.get("/flags").text

    again = pages.post(f"/flags/{urgent_id}/resolve", {"note": ""})
    assert again.status_code == 409
    assert "already been resolved" in text_of(again)


def test_resolving_from_the_patient_page_returns_there(pages: Pages) -> None:
    failed_id, _ = _flags(pages)

    response = pages.post(f"/flags/{failed_id}/resolve", {"next": "/patients/1"})

    assert response.headers["location"] == "/patients/1?done=resolved"


def test_a_note_with_control_characters_is_refused_and_nothing_changes(pages: Pages) -> None:
    _, urgent_id = _flags(pages)

    response = pages.post(f"/flags/{urgent_id}/resolve", {"note": "bad\x00note"})

    assert response.status_code == 422
    assert "control characters" in text_of(response)
    with pages.rt.db.session() as s:
        assert s.get_one(Flag, urgent_id).resolved_at is None


def test_dashboard_shows_urgent_flags_and_todays_counts(pages: Pages) -> None:
    _flags(pages)

    page = text_of(pages.client.get("/"))

    assert "1 urgent flag to call back" in page
    assert "2 open flags in all" in page
    assert "calf hurts" in page
    assert "Today Monday 2 March 2026" in page
    assert "1 active session" in page


def test_patient_search_finds_by_name_or_phone(pages: Pages) -> None:
    enrol(pages.rt)
    enrol(pages.rt, name="Zoe Other", phone="07911 000111", email="zoe@example.org")

    by_name = text_of(pages.client.get("/patients", params={"q": "quenn"}))
    by_phone = text_of(pages.client.get("/patients", params={"q": "07911 000111"}))

    assert "Philippa Quennell" in by_name
    assert "Zoe Other" not in by_name
    assert "Zoe Other" in by_phone
    assert "Philippa Quennell" not in by_phone


# Audit log ------------------------------------------------------------------------------------


def test_audit_log_is_a_403_page_for_staff(pages: Pages) -> None:
    response = pages.client.get("/audit")

    assert response.status_code == 403
    assert "Admins only" in text_of(response)
    assert 'href="/audit"' not in pages.client.get("/").text  # not offered in the menu


def test_audit_log_shows_admins_who_did_what_to_which_patient(pages: Pages) -> None:
    session_id = session_id_of(pages.enrol(), pages.rt)
    pages.post(f"/sessions/{session_id}/pause")
    admin = pages.new_client()
    log_in(admin, ADMIN)

    response = admin.get("/audit")

    assert response.status_code == 200
    rows = [
        text_of(Response(200, text=row)) for row in re.findall(r"<tr>.*?</tr>", response.text, re.S)
    ]
    assert rows[1].startswith("Mon 2 Mar 2026, 10:30 Nora Nurse Paused a session Philippa Quennell")
    assert "Recorded a session" in rows[2]
    filtered = admin.get("/audit", params={"action": "enrol"}).text
    table = filtered[filtered.index("<table>") :]
    assert "Recorded a session" in table
    assert "Paused a session" not in table


# Page headers ---------------------------------------------------------------------------------


def test_staff_pages_are_not_cached_or_framed(pages: Pages) -> None:
    response = pages.client.get("/")

    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert pages.client.get("/static/staff.css").status_code == 200
