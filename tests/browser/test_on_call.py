"""What issues 14 and 16 added to the staff pages, in a real browser (Chromium, no JavaScript):
the admin's on-call rota, an urgent reply waiting for a call back and "I'm calling", the record
form's discreet choice with its preview, and the dashboard's warning about an SMS sender
patients cannot reply to. Screenshots as in conftest (``docs=True`` ones feed docs/staff.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from aftercare.clock import FixedClock
from aftercare.staff.service import create_staff
from aftercare.storage.models import Flag
from aftercare.storage.models import Page as OnCallPage
from tests.browser.conftest import NOW, LiveApp, log_in, screenshot

AUTH_TOKEN = "browser-twilio-auth-token-0123456789abcdef"
NURSE = ("ana.lima@riverside.example", "Ana Lima")
HCA = ("joe.briggs@riverside.example", "Joe Briggs")
URGENT_TEXT = "My leg is swollen and hot and I feel breathless"


@pytest.fixture(scope="module")
def staff(live_app: LiveApp) -> None:
    rt = live_app.rt
    with rt.db.session() as s:
        for email, name in (NURSE, HCA):
            create_staff(
                db_session=s,
                email=email,
                password="another long password for the browser",
                now=rt.clock.now(),
                role="staff",
                name=name,
            )


@pytest.fixture
def webhooks(live_app: LiveApp) -> Iterator[None]:
    """Twilio's auth token and the live address as the public one, so a signed webhook posted
    to the live server is Twilio's."""
    rt = live_app.rt
    configured = rt.settings
    rt.settings = configured.model_copy(
        update={"twilio_auth_token": AUTH_TOKEN, "public_base_url": live_app.base_url}
    )
    try:
        yield
    finally:
        rt.settings = configured


def post_sms(app: LiveApp, body: str, sender: str, sid: str) -> httpx.Response:
    path = "/webhooks/twilio/inbound"
    params = {
        "MessageSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": sender,
        "To": "+447700900000",
        "Body": body,
        "NumMedia": "0",
    }
    signature = RequestValidator(AUTH_TOKEN).compute_signature(app.base_url + path, params)
    return httpx.post(app.url(path), data=params, headers={"X-Twilio-Signature": signature})


def test_an_admin_puts_two_staff_on_call_moves_one_up_and_takes_one_off(
    page: Page, live_app: LiveApp, staff: None
) -> None:
    log_in(page, live_app)
    page.get_by_role("link", name="On call").click()
    expect(page.get_by_role("heading", name="On call", level=1)).to_be_visible()
    for (email, _name), phone in ((NURSE, "07911 000111"), (HCA, "07911 000222")):
        page.get_by_label("Staff email").fill(email)
        page.get_by_label("Mobile number").fill(phone)
        page.get_by_role("button", name="Put on call").click()
        expect(page.get_by_role("status")).to_contain_text(f"{email} is now on call")
    screenshot(page, "25-on-call-rota-added")
    page.get_by_role("button", name=re.compile(f"^Up\\W+move {HCA[1]} earlier$")).click()
    rota = page.locator("ol.rota li")
    expect(rota.nth(0)).to_contain_text(HCA[1])
    expect(rota.nth(1)).to_contain_text(NURSE[1])
    page.get_by_label("Staff email").fill("sam.nurse@riverside.example")
    page.get_by_label("Mobile number").fill("12")
    page.get_by_role("button", name="Put on call").click()
    expect(page.get_by_role("alert")).to_contain_text("phone: is not a valid phone number")
    # Beside its field too, and the field says so to a screen reader.
    expect(page.get_by_label("Mobile number")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#oncall-phone-error")).to_contain_text("is not a valid phone number")
    expect(page.get_by_label("Staff email")).not_to_have_attribute("aria-invalid", "true")
    screenshot(page, "26-on-call-rota-error")
    page.goto(live_app.url("/staff/on-call"))
    page.get_by_role("button", name=re.compile(f"^Take off call\\W+{NURSE[1]}$")).click()
    expect(rota).to_have_count(1)
    screenshot(page, "19-on-call-rota", docs=True)


def test_an_urgent_reply_waits_for_a_call_back_until_someone_says_im_calling(
    page: Page, live_app: LiveApp, webhooks: None
) -> None:
    rt = live_app.rt
    said = post_sms(live_app, URGENT_TEXT, "+447912345678", "SM" + "1" * 32)
    assert said.status_code == 200, said.text
    with rt.db.session() as s:
        flag = s.scalars(select(Flag).where(Flag.text.contains(URGENT_TEXT))).one()
        flag_id = flag.id
        # A page is stored with the flag, for the first person on the rota.
        assert s.scalars(select(OnCallPage.flag_id)).all().count(flag_id) >= 1
    assert isinstance(rt.clock, FixedClock)
    rt.clock.advance(timedelta(minutes=6))
    try:
        log_in(page, live_app)
        tile = page.locator("#waiting-tile")
        # The seeded warning-sign reply (46 minutes old) and this one, 6 minutes old.
        expect(tile.locator(".number")).to_have_text("2")
        expect(tile).to_contain_text("Waiting for a call back")
        expect(tile.get_by_role("link", name=re.compile(r"waiting 6 min"))).to_have_attribute(
            "href", f"/flags/{flag_id}"
        )
        tile.scroll_into_view_if_needed()
        screenshot(page, "20-dashboard-waiting", docs=True)

        # The page's link: the one flag, with "I'm calling".
        tile.get_by_role("link", name=re.compile(r"waiting 6 min")).click()
        expect(page.get_by_role("heading", name="Flag", level=1)).to_be_visible()
        card = page.locator(f"#flag-{flag_id}")
        expect(card).to_contain_text(URGENT_TEXT)
        expect(card.get_by_role("link", name="07912 345678")).to_be_visible()
        calling = card.get_by_role("button", name=re.compile("^I.m calling"))
        expect(calling).to_be_visible()
        screenshot(page, "21-flag-im-calling", docs=True)
        calling.click()
        expect(page.get_by_role("status")).to_contain_text("you are calling back")
        expect(card).to_contain_text("Calling back: Sam Okafor, since")
        expect(card.get_by_role("button", name=re.compile("^I.m calling"))).to_have_count(0)
        screenshot(page, "22-flag-calling-back", docs=True)

        # The other one from the queue; then nothing is waiting.
        page.get_by_role("link", name="All open flags").click()
        other = page.locator("li.card").filter(has_text="My calf has been painful")
        other.get_by_role("button", name=re.compile("^I.m calling")).click()
        expect(page.get_by_role("status")).to_contain_text("you are calling back")
        page.get_by_role("link", name="Dashboard").click()
        expect(tile.locator(".number")).to_have_text("0")
        expect(tile).not_to_have_class(re.compile(r"\balert\b"))
        expect(tile.get_by_role("link")).to_have_count(0)
        screenshot(page, "27-dashboard-nobody-waiting")
    finally:
        rt.clock.set(NOW)


def test_the_record_form_offers_discreet_messages_and_the_preview_shows_them(
    page: Page, live_app: LiveApp
) -> None:
    log_in(page, live_app)
    page.goto(live_app.url("/sessions/new"))
    choice = page.get_by_label("Discreet messages")
    expect(choice).to_have_value("")  # the clinic's default
    expect(choice.locator("option").first).to_have_text("Clinic default (not discreet)")
    # Regimen choices read as words, not as their ids.
    expect(page.get_by_label("First and last")).to_be_checked()
    page.get_by_label("Patient name").fill("Priya Shah")
    choice.select_option("yes")
    page.get_by_role("button", name="Preview timeline").click()
    expect(page.get_by_label("Discreet messages")).to_have_value("yes")
    first = page.locator("#preview details.message-text").first
    first.locator("summary").click()
    sms = first.locator(".said").filter(has_text="SMS")
    email = first.locator(".said").filter(has_text="Email:")
    # The first line of the text and the email's subject say only who it is from.
    expect(sms.locator(".said-text")).to_contain_text(
        f"{live_app.rt.settings.clinic_name}: A message from us."
    )
    expect(email.locator(".said-by")).to_have_text(
        f"Email: A message from {live_app.rt.settings.clinic_name}"
    )
    first.evaluate("el => el.closest('tr').previousElementSibling.scrollIntoView()")
    screenshot(page, "23-record-discreet", docs=True)


def test_the_dashboard_warns_when_patients_cannot_reply_to_the_sms_sender(
    page: Page, live_app: LiveApp
) -> None:
    rt = live_app.rt
    configured = rt.settings
    log_in(page, live_app)
    expect(page.locator("#sender-warning")).to_have_count(0)
    rt.settings = configured.model_copy(
        update={"sms_transport": "twilio", "twilio_from": "RiversideVC"}
    )
    try:
        page.reload()
        warning = page.get_by_role("alert").filter(has_text="cannot reply")
        expect(warning).to_contain_text("Patients cannot reply to the SMS sender")
        expect(warning).to_contain_text("AFTERCARE_TWILIO_FROM is the name 'RiversideVC'")
        screenshot(page, "24-dashboard-sender-warning", docs=True)
    finally:
        rt.settings = configured


def test_on_a_phone_the_flag_page_names_the_patient_and_their_number(
    browser: Browser, live_app: LiveApp
) -> None:
    """A page's link opens on the on-call person's own phone: who to call must be on it."""
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, locale="en-GB", java_script_enabled=False
    )
    page = context.new_page()
    try:
        log_in(page, live_app)
        page.goto(live_app.url("/flags"))
        card = page.locator("li.card").first
        expect(card.get_by_role("link", name="Margaret Oduya")).to_be_visible()
        expect(card.get_by_role("link", name="07912 345678")).to_be_visible()
        # The header's account name gives way on a phone; the patient does not.
        expect(page.locator(".top .who")).to_be_hidden()
        screenshot(page, "28-phone-flags")
    finally:
        context.close()
