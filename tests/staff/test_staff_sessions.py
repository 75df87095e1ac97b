"""A staff member's browser sessions end when their password changes (from the CLI or their own
page) or their account is disabled; the page to change one's own password."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from aftercare.cli.main import cli
from aftercare.runtime import Runtime
from aftercare.staff import service, throttle
from aftercare.storage.models import LoginThrottle, StaffUser, WebSession
from aftercare.web.app import create_app
from tests.web.test_pages import ADMIN, CSRF, NURSE, PASSWORD, add_staff, log_in, text_of

NEW_PASSWORD = "a brand new password for the nurse"


@dataclass
class Browsers:
    """The nurse logged in on two browsers (a laptop and a phone), and the admin on a third."""

    rt: Runtime
    laptop: TestClient
    phone: TestClient
    admin: TestClient
    nurse_id: int

    def new(self) -> TestClient:
        return TestClient(self.laptop.app, follow_redirects=False)

    def logged_in(self, client: TestClient) -> bool:
        return client.get("/").status_code == 200

    def sessions(self, staff_id: int) -> int:
        with self.rt.db.session() as s:
            query = select(func.count()).where(WebSession.staff_id == staff_id)
            return s.scalar(query) or 0

    def password_hash(self) -> str:
        with self.rt.db.session() as s:
            return s.get_one(StaffUser, self.nurse_id).password_hash

    def change(self, client: TestClient, **fields: str) -> tuple[int, str]:
        page = client.get("/account/password")
        token = CSRF.search(page.text)
        assert token is not None, page.text
        form = {
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "repeat_password": NEW_PASSWORD,
            "csrf_token": token.group(1),
            **fields,
        }
        response = client.post("/account/password", data=form)
        return response.status_code, text_of(response)


@pytest.fixture
def browsers(runtime: Runtime) -> Browsers:
    nurse_id = add_staff(runtime, NURSE, "staff", "Nora Nurse")
    add_staff(runtime, ADMIN, "admin", "Ada Admin")
    app = create_app(runtime)
    clients = [TestClient(app, follow_redirects=False) for _ in range(3)]
    for client, email in zip(clients, [NURSE, NURSE, ADMIN], strict=True):
        assert log_in(client, email).status_code == 303
    return Browsers(runtime, *clients, nurse_id=nurse_id)


def _cli(*args: str, stdin: str | None = None) -> int:
    return CliRunner().invoke(cli, ["staff", *args], input=stdin).exit_code


@pytest.mark.parametrize(
    "command",
    [
        ("password", NURSE, "--generate"),
        ("password", NURSE),
        ("disable", NURSE),
    ],
    ids=["generated-password", "new-password", "disable"],
)
def test_a_password_set_or_an_account_disabled_from_the_cli_ends_every_session(
    browsers: Browsers, command: tuple[str, ...]
) -> None:
    assert _cli(*command, stdin=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n") == 0

    assert not browsers.logged_in(browsers.laptop)
    assert not browsers.logged_in(browsers.phone)
    assert browsers.sessions(browsers.nurse_id) == 0
    assert browsers.logged_in(browsers.admin)  # nobody else's


def test_an_old_session_cookie_replayed_after_a_password_change_is_refused(
    browsers: Browsers,
) -> None:
    stolen = browsers.phone.cookies["aftercare_session"]
    with browsers.rt.db.session() as s:
        service.set_password(db_session=s, staff_id=browsers.nurse_id, password=NEW_PASSWORD)

    replay = TestClient(browsers.laptop.app, cookies={"aftercare_session": stolen})
    assert replay.get("/", follow_redirects=False).status_code == 303


# Changing one's own password ------------------------------------------------------------------


def test_changing_ones_own_password_ends_the_other_sessions_and_keeps_this_one(
    browsers: Browsers,
) -> None:
    old_cookie = browsers.laptop.cookies["aftercare_session"]

    status, _ = browsers.change(browsers.laptop)

    assert status == 303
    assert browsers.laptop.cookies["aftercare_session"] != old_cookie  # re-issued
    page = browsers.laptop.get("/account/password?done=password_changed")
    assert page.status_code == 200
    assert "Password changed" in text_of(page)
    assert not browsers.logged_in(browsers.phone)
    assert browsers.sessions(browsers.nurse_id) == 1
    assert log_in(browsers.new(), NURSE, PASSWORD).status_code == 401
    assert log_in(browsers.new(), NURSE, NEW_PASSWORD).status_code == 303
    assert browsers.logged_in(browsers.admin)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"current_password": "not my password at all"}, "the current password is not right"),
        ({"current_password": ""}, "the current password is not right"),
        ({"repeat_password": NEW_PASSWORD + "!"}, "differ"),
        ({"new_password": "too short", "repeat_password": "too short"}, "at least 12"),
        ({"new_password": PASSWORD, "repeat_password": PASSWORD}, "must differ"),
        ({"new_password": " " * 20, "repeat_password": " " * 20}, "blank"),
    ],
    ids=["wrong-current", "no-current", "mismatch", "short", "same", "blank"],
)
def test_a_refused_change_says_why_and_changes_nothing(
    browsers: Browsers, fields: dict[str, str], reason: str
) -> None:
    before = browsers.password_hash()

    status, text = browsers.change(browsers.laptop, **fields)

    assert status == 422
    assert "The password was not changed" in text
    assert reason in text
    assert browsers.password_hash() == before
    assert browsers.logged_in(browsers.laptop)
    assert browsers.logged_in(browsers.phone)


def test_wrong_current_passwords_count_against_the_login_limit(browsers: Browsers) -> None:
    statuses = [
        browsers.change(browsers.laptop, current_password=f"guess number {n}")[0]
        for n in range(throttle.PAIR_LIMIT + 1)
    ]

    assert statuses == [422] * throttle.PAIR_LIMIT + [429]
    status, text = browsers.change(browsers.laptop)
    assert status == 429
    assert "Too many failed attempts" in text


def test_a_mismatch_is_not_counted_as_a_guess(browsers: Browsers) -> None:
    for _ in range(throttle.PAIR_LIMIT + 1):
        browsers.change(browsers.laptop, repeat_password="something else entirely")

    with browsers.rt.db.session() as s:
        assert set(s.scalars(select(LoginThrottle.failures))) == {0}
    assert browsers.change(browsers.laptop)[0] == 303


def test_the_change_needs_this_sessions_csrf_token(browsers: Browsers) -> None:
    before = browsers.password_hash()

    response = browsers.laptop.post(
        "/account/password",
        data={
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "repeat_password": NEW_PASSWORD,
            "csrf_token": "forged",
        },
    )

    assert response.status_code == 403
    assert browsers.password_hash() == before
    assert browsers.logged_in(browsers.phone)


def test_the_page_is_for_logged_in_staff_only(browsers: Browsers) -> None:
    anonymous = browsers.new()

    assert anonymous.get("/account/password").headers["location"] == (
        "/login?next=/account/password"
    )
    assert anonymous.post("/account/password", data={}).headers["location"] == "/login"


def test_the_form_is_labelled_works_without_script_and_is_linked_from_every_page_header(
    browsers: Browsers,
) -> None:
    page = browsers.laptop.get("/account/password").text

    form = re.search(
        r'<form method="post" action="/account/password"[^>]*>(.*?)</form>', page, re.S
    )
    assert form is not None
    for name, label, autocomplete in [
        ("current_password", "Current password", "current-password"),
        ("new_password", "New password", "new-password"),
        ("repeat_password", "New password again", "new-password"),
    ]:
        assert f'<label for="{name}">{label}</label>' in form.group(1)
        assert re.search(
            rf'<input id="{name}" name="{name}" type="password" autocomplete="{autocomplete}"',
            form.group(1),
        )
    assert 'name="csrf_token"' in form.group(1)
    assert '<button type="submit"' in form.group(1)
    assert "<script" not in page.split("</header>", 1)[1].split("</main>", 1)[0]
    for path in ["/", "/patients", "/flags"]:
        assert 'href="/account/password"' in browsers.laptop.get(path).text
