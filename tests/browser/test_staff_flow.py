"""A nurse's day in a real browser (Chromium, no JavaScript): log in, record a session and
preview it, save, see the timeline, pause it, resolve a flag, look at the audit log, log out.
A screenshot of each page is saved (see conftest)."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, Page, expect

from aftercare.flags.service import raise_flag
from tests.browser.conftest import LiveApp, log_in, screenshot

PATIENT = "Philippa Quennell"


def test_a_nurse_records_a_session_pauses_it_and_resolves_a_flag(
    page: Page, live_app: LiveApp
) -> None:
    page.goto(live_app.url("/flags"))
    expect(page).to_have_url(re.compile(r"/login\?next=/flags$"))
    screenshot(page, "01-login", docs=True)
    page.get_by_label("Email").fill("sam.nurse@riverside.example")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong email or password")

    log_in(page, live_app)
    expect(page.locator("a.stat.alert")).to_contain_text("urgent flag to call back")
    screenshot(page, "02-dashboard", docs=True)

    page.get_by_role("link", name="Margaret Oduya").first.click()
    timeline = page.locator("table.timeline").first
    expect(timeline).to_contain_text("Delivered")
    expect(timeline).to_contain_text("Failed")
    expect(timeline).to_contain_text("error 30003")
    session_anchor = page.locator("section.session").first.get_attribute("id")
    page.goto(f"{page.url.split('#')[0]}#{session_anchor}")
    screenshot(page, "03-timeline", docs=True)

    page.get_by_role("link", name="Record a session").first.click()
    expect(page.get_by_role("heading", name="Record a session")).to_be_visible()
    page.get_by_label("Patient name").fill(PATIENT)
    page.get_by_label("Mobile phone").fill("07911 123456")
    page.get_by_label("Email address").fill("philippa.quennell@example.org")
    expect(page.get_by_label("Time zone")).to_have_value("Europe/London")
    expect(page.get_by_label("SMS")).to_be_checked()
    page.get_by_label("7 days (1 week)").check()
    page.get_by_label("Week of the bruising check-in").select_option("12")

    page.get_by_role("button", name="Save and start reminders").click()
    summary = page.get_by_role("alert").filter(has_text="Please check")
    expect(summary).to_contain_text("Confirm all four contraindication checks")
    expect(summary).to_contain_text("Confirm that the patient agrees")
    screenshot(page, "04-record-errors")

    for check in (
        "No history of deep vein thrombosis",
        "Not pregnant or breastfeeding",
        "No flight or long period of immobility",
        "No untreated varicose veins",
    ):
        page.get_by_label(check).check()
    page.get_by_label("The patient agrees to receive aftercare messages").check()
    page.get_by_role("button", name="Preview timeline").click()
    preview = page.locator("#preview")
    expect(preview.get_by_role("table")).to_be_visible()
    expect(preview).to_contain_text("End of continuous wear (72 hours)")
    expect(preview).to_contain_text("Put your stockings on for the day (7 of 7)")
    expect(page.get_by_label("Patient name")).to_have_value(PATIENT)
    screenshot(page, "05-record-preview", docs=True)

    page.get_by_role("button", name="Save and start reminders").click()
    expect(page.get_by_role("heading", name=PATIENT)).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Session recorded")
    expect(page.get_by_role("table").first).to_contain_text("Welcome, continuous wear")
    screenshot(page, "06-patient", docs=True)
    patient_id = int(page.url.split("/patients/")[1].split("?")[0])

    page.get_by_role("button", name="Pause reminders").click()
    expect(page.get_by_role("status")).to_contain_text("Reminders paused")
    expect(page.locator(".session-head .badge")).to_have_text("Paused")
    expect(page.get_by_role("button", name="Resume reminders")).to_be_visible()
    screenshot(page, "07-patient-paused")

    with live_app.rt.db.session() as s:
        raise_flag(
            s,
            kind="urgent_reply",
            patient_id=patient_id,
            text="My calf is swollen and sore since this morning",
            now=live_app.rt.clock.now(),
        )
    page.get_by_role("link", name=re.compile(r"^Flags")).click()
    card = page.locator("li.card").filter(has_text=PATIENT)
    expect(card).to_contain_text("Urgent reply")
    cards = page.locator("li.card")
    expect(cards).to_have_count(3)
    expect(cards.nth(0)).to_contain_text("Urgent reply")  # urgent first, then the oldest
    expect(cards.nth(1)).to_contain_text("Urgent reply")
    expect(cards.nth(2)).to_contain_text("Delivery failed")
    screenshot(page, "08-flags", docs=True)
    card.get_by_label("Note (optional)").fill("Called back; advised NHS 111 and a scan today.")
    card.get_by_role("button", name=re.compile("^Resolve")).click()
    expect(page.get_by_role("status")).to_contain_text("Flag resolved")
    expect(page.locator("li.card").filter(has_text=PATIENT)).to_have_count(0)

    page.get_by_role("link", name="Audit log").click()
    table = page.get_by_role("table")
    expect(table).to_contain_text("Resolved a flag")
    expect(table).to_contain_text("Paused a session")
    expect(table).to_contain_text("Recorded a session")
    expect(table).to_contain_text("Sam Okafor")
    screenshot(page, "09-audit", docs=True)

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("status")).to_contain_text("You have logged out")
    page.goto(live_app.url("/"))
    expect(page).to_have_url(re.compile(r"/login$"))


def test_the_preview_refreshes_by_itself_when_javascript_is_on(
    js_page: Page, live_app: LiveApp
) -> None:
    log_in(js_page, live_app)
    js_page.goto(live_app.url("/sessions/new"))
    preview = js_page.locator("#preview")
    expect(preview.get_by_role("table")).to_be_visible()
    expect(preview).to_contain_text("(14 of 14)")
    js_page.get_by_label("7 days (1 week)").check()
    expect(preview).to_contain_text("(7 of 7)")
    expect(preview).not_to_contain_text("(14 of 14)")
    js_page.get_by_label("Time zone").fill("Not/AZone")
    js_page.get_by_label("Time zone").dispatch_event("change")
    expect(preview).to_contain_text("is not an IANA time zone")
    screenshot(js_page, "10-live-preview")


def test_pages_fit_a_tablet_held_upright(browser: Browser, live_app: LiveApp) -> None:
    context = browser.new_context(
        viewport={"width": 768, "height": 1024}, locale="en-GB", java_script_enabled=False
    )
    page = context.new_page()
    try:
        log_in(page, live_app)
        for path, name in (
            ("/sessions/new", "11-tablet-record"),
            ("/patients/1", "12-tablet-patient"),
            ("/flags", "13-tablet-flags"),
        ):
            page.goto(live_app.url(path))
            # Nothing wider than the screen: no sideways scrolling of the page itself.
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 768, f"{path} is {width}px wide"
            screenshot(page, name)
    finally:
        context.close()


def test_keyboard_alone_logs_in_and_reaches_the_main_content(page: Page, live_app: LiveApp) -> None:
    page.goto(live_app.url("/login"))
    page.keyboard.press("Tab")  # the skip link comes first
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name=re.compile("Riverside Vein Clinic"))).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Email")).to_be_focused()
    page.keyboard.type("sam.nurse@riverside.example")
    page.keyboard.press("Tab")
    page.keyboard.type("a long password for the browser tests")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Today", level=1)).to_be_visible()

    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # skip the menu
    expect(page).to_have_url(re.compile(r"#main$"))
    page.keyboard.press("Tab")
    focused = page.get_by_role("link", name="Record a session").last
    expect(focused).to_be_focused()
    screenshot(page, "14-keyboard-focus")
