"""The real app under uvicorn on a loopback port, and Debian's Chromium driven by Playwright.

Chromium must be at /usr/bin/chromium (``.ci/run`` installs it). If it is missing or cannot
start, these tests FAIL: a browser suite that skips itself proves nothing.

Screenshots go to ``test-artifacts/screenshots/`` (git-ignored). With
``AFTERCARE_UPDATE_SCREENSHOTS=1`` the ones the docs use are also copied to
``docs/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import func, select

from aftercare.clock import FixedClock
from aftercare.inbound.replies import Replies
from aftercare.inbound.service import receive_sms
from aftercare.reminders import delivery, states
from aftercare.reminders.dispatch import claim_due
from aftercare.reminders.status import apply_status
from aftercare.runtime import Runtime
from aftercare.staff.service import create_staff
from aftercare.storage.migrate import upgrade
from aftercare.storage.models import DeliveryAttempt, Reminder
from aftercare.web.app import create_app
from tests.conftest import REPO, make_settings
from tests.factories import enrol

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
VIEWPORT = {"width": 1024, "height": 768}
# A clinic in the UK: dates and times in the browser's own controls read as they would there.
CONTEXT = {"viewport": VIEWPORT, "locale": "en-GB", "timezone_id": "Europe/London"}
ARTIFACTS = REPO / "test-artifacts" / "screenshots"
DOCS = REPO / "docs" / "screenshots"
ADMIN_EMAIL = "sam.nurse@riverside.example"
ADMIN_PASSWORD = "a long password for the browser tests"
# The app's clock: a weekday morning, so screenshots are the same on every run and no message
# is held by quiet hours while the test looks at it.
NOW = datetime(2026, 3, 10, 10, 15, tzinfo=UTC)


@dataclass
class LiveApp:
    base_url: str
    rt: Runtime

    def url(self, path: str) -> str:
        return self.base_url + path


def _seed_history(rt: Runtime, clock: FixedClock) -> None:
    """A patient treated three days before NOW whose messages went out through the real
    pipeline (outbox transports) as their times came, with delivery reports (the warning-signs
    SMS undelivered), and who has just replied with a warning sign."""
    clock.set(NOW - timedelta(days=3, hours=1))
    enrol(
        rt,
        name="Margaret Oduya",
        phone="07912 345678",
        email="m.oduya@example.org",
        treated_at=clock.now().isoformat(),
    )
    deps = rt.delivery_deps()
    while True:
        with rt.db.session() as s:
            due = s.scalar(
                select(func.min(Reminder.due_at)).where(Reminder.state == states.SCHEDULED)
            )
        if due is None or due > NOW:
            break
        clock.set(due)
        with rt.db.session() as s:
            ids = claim_due(s, now=due, limit=100)
        for reminder_id in ids:
            delivery.deliver(deps=deps, reminder_id=reminder_id)
        with rt.db.session() as s:
            for attempt, reminder in s.execute(
                select(DeliveryAttempt, Reminder)
                .join(Reminder, Reminder.id == DeliveryAttempt.reminder_id)
                .where(Reminder.id.in_(ids), DeliveryAttempt.provider_id.is_not(None))
            ).all():
                failed = (reminder.step, reminder.channel) == ("warning-signs", "sms")
                apply_status(
                    db_session=s,
                    provider_id=str(attempt.provider_id),
                    status="undelivered" if failed else "delivered",
                    error_code="30003" if failed else None,
                    now=due + timedelta(minutes=1),
                )
    clock.set(NOW - timedelta(minutes=40))
    replies = Replies(
        renderer=rt.renderer,
        clinic_name=rt.settings.clinic_name,
        clinic_phone=rt.settings.clinic_phone,
    )
    with rt.db.session() as s:
        receive_sms(
            db_session=s,
            sid="SM" + "0" * 32,
            from_number="+447912345678",
            body="My calf has been painful and warm since last night, is that normal?",
            now=clock.now(),
            replies=replies,
        )
    clock.set(NOW)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """The real app (a fixed clock, SQLite in a temporary folder) served by uvicorn."""
    tmp = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{tmp / 'aftercare.sqlite3'}"
    upgrade(url)
    rt = Runtime(make_settings(tmp, database_url=url))
    clock = FixedClock(NOW)
    rt.clock = clock
    with rt.db.session() as s:
        create_staff(
            db_session=s,
            email=ADMIN_EMAIL,
            password=ADMIN_PASSWORD,
            now=rt.clock.now(),
            role="admin",
            name="Sam Okafor",
        )
    _seed_history(rt, clock)
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(rt), log_level="warning", lifespan="off", ws="none", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the app did not start under uvicorn")
        time.sleep(0.05)
    yield LiveApp(f"http://127.0.0.1:{port}", rt)
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()
    rt.db.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page without JavaScript: every staff page must work like this."""
    context = browser.new_context(**CONTEXT, java_script_enabled=False)
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def js_page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(**CONTEXT)
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def screenshot(page: Page, name: str, *, docs: bool = False, full_page: bool = False) -> Path:
    """Save a PNG of the page; with AFTERCARE_UPDATE_SCREENSHOTS=1, ``docs`` ones are also
    copied to docs/screenshots/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 1000
    if docs and os.environ.get("AFTERCARE_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / path.name)
    return path


def log_in(page: Page, app: LiveApp) -> None:
    page.goto(app.url("/login"))
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Today", level=1).wait_for()
