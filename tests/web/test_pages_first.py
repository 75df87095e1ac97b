"""The staff pages in a clinic's first hour: field attributes escaped once, a city accepted as a
time zone, the preview showing each message's text, numbers and dates as the clinic writes them,
and the dashboard naming placeholder clinic details and why "delivered" stays 0."""

from __future__ import annotations

import re

from aftercare.messages.context import build_context, sms_first_name
from aftercare.planning.planner import step_instants
from aftercare.storage.models import Patient
from tests.factories import enrol
from tests.web.test_pages import FORM, Pages, pages, session_id_of, text_of  # noqa: F401

# ruff: noqa: F811 - the ``pages`` fixture is imported and taken by name

PLACEHOLDERS = {"clinic_name": "Your clinic", "clinic_phone": "your clinic"}


def input_tag(html: str, fid: str) -> str:
    found = re.search(rf'<input id="{fid}"[^>]*>', html)
    assert found is not None, fid
    return found.group(0)


def test_field_attributes_are_escaped_once_on_the_record_and_edit_forms(pages: Pages) -> None:
    enrol(pages.rt)
    for path in ("/sessions/new", "/patients/1"):
        html = pages.client.get(path).text
        zone = input_tag(html, "timezone")
        assert ' list="zones"' in zone
        assert ' spellcheck="false"' in zone
        assert ' autocapitalize="none"' in zone
        email = input_tag(html, "email")
        assert ' spellcheck="false" autocapitalize="none"' in email
        assert "&quot;" not in zone + email
        assert '<datalist id="zones">' in html
        assert '<option value="Europe/London">' in html


def test_a_value_with_quotes_is_escaped_inside_its_attribute(pages: Pages) -> None:
    response = pages.post("/sessions/new", {**FORM, "name": 'Jo "JJ" <b>', "action": "preview"})
    assert 'value="Jo &#34;JJ&#34; &lt;b&gt;"' in input_tag(response.text, "name")


def test_a_city_is_accepted_as_its_time_zone_on_the_record_form(pages: Pages) -> None:
    preview = pages.post("/sessions/new", {**FORM, "timezone": "london", "action": "preview"})
    assert 'value="Europe/London"' in input_tag(preview.text, "timezone")
    assert "in the patient's time (Europe/London)" in text_of(preview)

    response = pages.enrol(timezone="New York")
    session = pages.session(session_id_of(response, pages.rt))
    assert session.timezone == "America/New_York"


def test_a_city_is_accepted_as_its_time_zone_on_the_edit_form(pages: Pages) -> None:
    enrol(pages.rt)
    response = pages.post(
        "/patients/1/edit",
        {
            "name": FORM["name"],
            "phone": FORM["phone"],
            "email": FORM["email"],
            "timezone": "Paris",
            "channels": ["sms", "email"],
        },
    )
    assert response.status_code == 303, text_of(response)
    with pages.rt.db.session() as s:
        assert s.get_one(Patient, 1).timezone == "Europe/Paris"


def test_preview_shows_each_message_as_the_patient_will_read_it(pages: Pages) -> None:
    response = pages.post("/sessions/new", {**FORM, "action": "preview"})
    page = text_of(response)

    rt = pages.rt
    regimen = rt.registry.get("micro-sclerotherapy")
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("Europe/London")
    parameters = regimen.resolve_parameters({"daily_days": "14", "checkin_week": "10"})
    treated = datetime(2026, 3, 2, 10, 0, tzinfo=zone)
    instants = step_instants(
        regimen=regimen, treated_at=treated, zone=zone, parameters=parameters, quiet=rt.quiet
    )
    context = build_context(
        regimen=regimen,
        patient_name="Philippa Quennell",
        clinic_name=rt.settings.clinic_name,
        clinic_phone=rt.settings.clinic_phone,
        timezone="Europe/London",
        parameters=parameters,
        instants=instants,
        step="continuous-end",
        occurrence=0,
        unsubscribe_url=None,
    )
    sms = rt.renderer.render_sms(
        "continuous-end", {**context, "first_name": sms_first_name("Philippa")}
    )
    email = rt.renderer.render_email(
        "continuous-end", {**context, "unsubscribe_url": "http://x/unsubscribe/…"}
    )
    assert " ".join(sms.body.split()) in page
    assert f"Email: {email.subject}" in page
    first_paragraph = email.text.strip().split("\n\n")[0]
    assert " ".join(first_paragraph.split()) in page
    assert "Read the message" in page
    assert pages.counts() == (0, 0, 0, 0, 0)


def test_phone_numbers_are_shown_as_the_clinic_writes_them(pages: Pages) -> None:
    enrol(pages.rt)
    page = pages.client.get("/patients/1").text
    assert '<a href="tel:+447911123456">07911 123456</a>' in page
    assert "07911 123456" in text_of(pages.client.get("/patients?q=Quennell"))


def test_paused_session_says_its_messages_are_held_not_upcoming(pages: Pages) -> None:
    enrol(pages.rt)
    assert "more upcoming messages" in text_of(pages.client.get("/patients/1"))

    assert pages.post("/sessions/1/pause").status_code == 303
    page = text_of(pages.client.get("/patients/1"))
    assert "more upcoming messages" not in page
    assert re.search(r"Show \d+ more messages held while paused", page)


def test_dashboard_names_placeholder_clinic_details(pages: Pages) -> None:
    assert "clinic-warning" not in pages.client.get("/").text

    pages.rt.settings = pages.rt.settings.model_copy(update=PLACEHOLDERS)
    page = text_of(pages.client.get("/"))

    assert "The clinic's name and phone are not set" in page
    assert "AFTERCARE_CLINIC_NAME and AFTERCARE_CLINIC_PHONE are not set" in page
    assert "'Your clinic: Hi ...'" in page


def test_dashboard_explains_why_delivered_stays_0_without_delivery_receipts(
    pages: Pages,
) -> None:
    assert pages.rt.settings.sms_transport == "outbox"
    assert "console and outbox have no delivery receipts" in text_of(pages.client.get("/"))

    pages.rt.settings = pages.rt.settings.model_copy(update={"sms_transport": "twilio"})
    assert "delivery receipts" not in text_of(pages.client.get("/"))
