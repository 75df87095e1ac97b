"""A clinic's first hour in a real browser: the zone field suggests and takes a city, the preview
shows each message's text and comes before Save on a phone, dates follow the clinic and not the
browser, numbers read as the clinic writes them, and the dashboard names placeholder clinic
details and why "delivered" stays 0. Screenshots as in conftest (``docs=True`` ones feed
docs/staff.md)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from playwright.sync_api import Browser, Page, expect

from aftercare.clock import FixedClock
from aftercare.sessions import actions
from tests.browser.conftest import CONTEXT, LiveApp, log_in, screenshot
from tests.factories import enrol


@pytest.fixture
def us_page(browser: Browser) -> Iterator[Page]:
    """A browser set to US English in New York: its own date controls would read 03/10/2026."""
    context = browser.new_context(
        viewport={"width": 1024, "height": 768}, locale="en-US", timezone_id="America/New_York"
    )
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def test_the_zone_field_suggests_zones_and_takes_a_city(js_page: Page, live_app: LiveApp) -> None:
    log_in(js_page, live_app)
    js_page.goto(live_app.url("/sessions/new"))
    zone = js_page.get_by_label("Time zone")

    # The browser links the field to the list (a double-escaped list="..." linked nothing).
    assert zone.evaluate("el => el.list && el.list.id") == "zones"
    suggested = zone.evaluate("el => Array.from(el.list.options, o => o.value)")
    assert "Europe/London" in suggested
    assert "America/New_York" in suggested
    assert "localtime" not in suggested
    zone.fill("")
    zone.press_sequentially("Europe/Lo")
    js_page.wait_for_timeout(300)  # the suggestion popup draws after typing
    screenshot(js_page, "15-zone-suggestions", docs=True)

    zone.fill("London")
    js_page.get_by_role("button", name="Preview timeline").click()
    expect(js_page.get_by_label("Time zone")).to_have_value("Europe/London")
    expect(js_page.locator("#preview")).to_contain_text("in the patient's time (Europe/London)")


def test_the_preview_shows_each_message_as_the_patient_reads_it(
    page: Page, live_app: LiveApp
) -> None:
    log_in(page, live_app)
    page.goto(live_app.url("/sessions/new"))
    page.get_by_label("Patient name").fill("Priya Shah")
    page.get_by_role("button", name="Preview timeline").click()

    preview = page.locator("#preview")
    first = preview.locator("details.message-text").first
    first.locator("summary").click()
    expect(first).to_contain_text("SMS")
    expect(first).to_contain_text(f"{live_app.rt.settings.clinic_name}: Hi Priya")
    expect(first).to_contain_text("Email:")
    first.evaluate("el => el.closest('tr').previousElementSibling.scrollIntoView()")
    screenshot(page, "16-preview-message-text", docs=True)
    wear_end = preview.locator("details.message-text").filter(has_text="End of continuous wear")
    wear_end.locator("summary").click()
    expect(wear_end).to_contain_text("72 hours")


def test_on_a_phone_the_preview_comes_before_save(browser: Browser, live_app: LiveApp) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, locale="en-GB", java_script_enabled=False
    )
    page = context.new_page()
    try:
        log_in(page, live_app)
        page.goto(live_app.url("/sessions/new"))
        page.get_by_role("button", name="Preview timeline").click()
        preview = page.locator("#preview").bounding_box()
        save = page.get_by_role("button", name="Save and start reminders").bounding_box()
        form = page.locator("#enrol-form").bounding_box()
        assert preview is not None
        assert save is not None
        assert form is not None
        assert form["y"] < preview["y"] < save["y"]
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide"
    finally:
        context.close()

    page = browser.new_context(**CONTEXT, java_script_enabled=False).new_page()
    try:
        log_in(page, live_app)
        page.goto(live_app.url("/sessions/new"))
        # Wide: the preview beside the form, Save under the form.
        preview = page.locator("#preview").bounding_box()
        save = page.get_by_role("button", name="Save and start reminders").bounding_box()
        assert preview is not None
        assert save is not None
        assert save["x"] < preview["x"]
    finally:
        page.context.close()


def test_dates_follow_the_clinic_not_the_browser(us_page: Page, live_app: LiveApp) -> None:
    log_in(us_page, live_app)
    us_page.goto(live_app.url("/sessions/new"))

    # 10 March 2026 in London, whatever the browser's language and zone.
    expect(us_page.get_by_label("Date (DD/MM/YYYY)")).to_have_value("10/03/2026")
    expect(us_page.get_by_label("Time (HH:MM)")).to_have_value("10:15")
    us_page.get_by_label("Date (DD/MM/YYYY)").fill("09/03/2026")
    us_page.get_by_label("Time (HH:MM)").fill("14:30")
    us_page.get_by_role("button", name="Preview timeline").click()
    # 72 hours after 14:30 on 9 March: the end of continuous wear.
    expect(us_page.locator("#preview")).to_contain_text("Thu 12 Mar, 14:30")


def test_numbers_read_as_the_clinic_writes_them_and_paused_messages_are_held(
    page: Page, live_app: LiveApp
) -> None:
    rt = live_app.rt
    session_id = enrol(rt, name="Tomas Reyes", phone="07400 123456", email="t.reyes@example.org")
    with rt.db.session() as s:
        patient_id = actions.get_session(db_session=s, session_id=session_id).patient_id
    log_in(page, live_app)
    page.goto(live_app.url(f"/patients/{patient_id}"))
    expect(page.get_by_role("link", name="07400 123456")).to_have_attribute(
        "href", "tel:+447400123456"
    )
    expect(page.locator("details.more summary")).to_contain_text("more upcoming messages")

    page.get_by_role("button", name="Pause reminders").click()
    expect(page.get_by_role("status")).to_contain_text("Reminders paused")
    expect(page.locator("details.more summary")).to_contain_text("more messages held while paused")


def test_the_dashboard_names_placeholder_clinic_details_and_why_delivered_is_0(
    page: Page, live_app: LiveApp
) -> None:
    rt = live_app.rt
    configured = rt.settings
    log_in(page, live_app)
    expect(page.locator("#clinic-warning")).to_have_count(0)
    # Today two reports came in (the seeded history): no hint beside a count that moved.
    expect(page.locator("#delivered-hint")).to_have_count(0)

    rt.settings = configured.model_copy(
        update={"clinic_name": "Your clinic", "clinic_phone": "your clinic"}
    )
    try:
        page.goto(live_app.url("/"))
        warning = page.get_by_role("alert").filter(has_text="not set")
        expect(warning).to_contain_text("The clinic's name and phone are not set")
        expect(warning).to_contain_text("AFTERCARE_CLINIC_NAME and AFTERCARE_CLINIC_PHONE")
        screenshot(page, "17-dashboard-placeholder-warning", docs=True)
    finally:
        rt.settings = configured

    # A day with nothing delivered (before the seeded history began): outbox never reports it.
    assert isinstance(rt.clock, FixedClock)
    today = rt.clock.now()
    rt.clock.set(today - timedelta(days=10))
    try:
        page.goto(live_app.url("/"))
        expect(page.locator("#delivered-hint")).to_contain_text(
            "console and outbox have no delivery receipts"
        )
    finally:
        rt.clock.set(today)


def test_staff_change_their_own_password_from_the_header(page: Page, live_app: LiveApp) -> None:
    """The header's Change password link opens a labelled form; a wrong current password is
    refused with the reason, and the account's password stays as it was."""
    log_in(page, live_app)
    page.get_by_role("link", name="Change password").click()
    expect(page.get_by_role("heading", name="Change your password", level=1)).to_be_visible()
    page.get_by_label("Current password").fill("not the password at all")
    page.get_by_label("New password", exact=True).fill("harbour lantern quietly seventeen")
    page.get_by_label("New password again").fill("harbour lantern quietly seventeen")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_contain_text("The password was not changed")
    screenshot(page, "18-change-password", docs=True)
    # Still the old password: logging in again with it works.
    page.context.clear_cookies()
    log_in(page, live_app)
