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
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import select

from aftercare.reminders import delivery
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
ARTIFACTS = REPO / "test-artifacts" / "screenshots"
DOCS = REPO / "docs" / "screenshots"
ADMIN_EMAIL = "sam.nurse@riverside.example"
ADMIN_PASSWORD = "a long password for the browser tests"


@dataclass
class LiveApp:
    base_url: str
    rt: Runtime

    def url(self, path: str) -> str:
        return self.base_url + path


def _seed_history(rt: Runtime) -> None:
    """A patient treated three days ago whose messages went out through the real pipeline
    (outbox transports), with delivery reports: most delivered, one SMS undelivered."""
    now = rt.clock.now()
    treated = now - timedelta(hours=73)
    enrol(
        rt,
        now=treated,
        name="Margaret Oduya",
        phone="07912 345678",
        email="m.oduya@example.org",
        treated_at=treated.isoformat(),
    )
    deps = rt.delivery_deps()
    with rt.db.session() as s:
        ids = claim_due(s, now=now, limit=100)
    for reminder_id in ids:
        delivery.deliver(deps=deps, reminder_id=reminder_id)
    with rt.db.session() as s:
        provider_ids = s.scalars(
            select(DeliveryAttempt.provider_id)
            .join(Reminder, Reminder.id == DeliveryAttempt.reminder_id)
            .where(DeliveryAttempt.provider_id.is_not(None))
            .order_by(Reminder.due_at, Reminder.id)
        ).all()
        for index, provider_id in enumerate(provider_ids):
            failed = index == 3
            apply_status(
                db_session=s,
                provider_id=str(provider_id),
                status="undelivered" if failed else "delivered",
                error_code="30003" if failed else None,
                now=now,
            )


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """The real app (system clock, SQLite in a temporary folder) served by uvicorn."""
    tmp = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{tmp / 'aftercare.sqlite3'}"
    upgrade(url)
    rt = Runtime(make_settings(tmp, database_url=url))
    with rt.db.session() as s:
        create_staff(
            db_session=s,
            email=ADMIN_EMAIL,
            password=ADMIN_PASSWORD,
            now=rt.clock.now(),
            role="admin",
            name="Sam Okafor",
        )
    _seed_history(rt)
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
    context = browser.new_context(viewport=VIEWPORT, java_script_enabled=False)
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def js_page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
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
