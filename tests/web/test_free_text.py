"""Free text that staff read (a patient's reply, a flag's text, a resolution note) carries no
bidi embedding, override or isolate control: U+202E would make a reply read backwards, so that
"llac em" shows as "me call". They are dropped when the text is stored, and a staff page never
shows one, even from a row stored before."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from aftercare.freetext import without_bidi_controls
from aftercare.runtime import Runtime
from aftercare.storage.models import Flag, InboundMessage
from aftercare.web.app import create_app
from tests.factories import add_flag, enrol
from tests.inbound.test_inbound import AUTH_TOKEN, PUBLIC, FakeTwilio
from tests.web.test_pages import ADMIN, NURSE, Pages, add_staff, log_in

RLO, PDF, RLI, PDI = "\u202e", "\u202c", "\u2067", "\u2069"
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@pytest.fixture
def pages(runtime: Runtime) -> Iterator[Pages]:
    """The staff pages, logged in as a nurse (as in test_pages)."""
    nurse_id = add_staff(runtime, NURSE, "staff", "Nora Nurse")
    admin_id = add_staff(runtime, ADMIN, "admin", "Ada Admin")
    with TestClient(create_app(runtime), follow_redirects=False) as client:
        assert log_in(client).status_code == 303
        yield Pages(runtime, client, nurse_id, admin_id)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"Jane {RLO}eoD", "Jane eoD"),
        (f"{RLI}abc{PDI} and {PDF}", "abc and "),
        ("שלום \u200f(3)", "שלום \u200f(3)"),  # a right-to-left mark only orders neutrals: kept
        ("مرحبا \u061c3", "مرحبا \u061c3"),  # so is the Arabic letter mark
        ("plain text", "plain text"),
    ],
)
def test_bidi_controls_are_dropped_and_marks_kept(text: str, kept: str) -> None:
    assert without_bidi_controls(text) == kept


def test_a_reply_with_bidi_controls_is_stored_and_flagged_without_them(pages: Pages) -> None:
    pages.rt.settings = pages.rt.settings.model_copy(
        update={"twilio_auth_token": AUTH_TOKEN, "public_base_url": PUBLIC}
    )
    enrol(pages.rt)
    reply = f"my leg is still swollen {RLO}ti dnes{PDF} please"
    response = FakeTwilio(pages.client).sms(reply)
    assert response.status_code == 200, response.text
    with pages.rt.db.session() as s:
        [message] = s.scalars(select(InboundMessage)).all()
        texts = [message.body, *s.scalars(select(Flag.text))]
    assert message.body == "my leg is still swollen ti dnes please"
    assert len(texts) > 1  # the reply was flagged for staff
    assert not any(c in text for text in texts for c in BIDI_CONTROLS)
    for path in ("/patients/1", "/flags"):
        page = pages.client.get(path)
        assert "ti dnes" in page.text
        assert not any(c in page.text for c in BIDI_CONTROLS), path


def test_a_resolution_note_is_stored_without_bidi_controls(pages: Pages) -> None:
    session_id = enrol(pages.rt)
    with pages.rt.db.session() as s:
        flag_id = add_flag(
            s,
            kind="checkin_concern",
            urgent=True,
            patient_id=1,
            session_id=session_id,
            text="Still dark",
            now=pages.clock.now(),
        ).id
    response = pages.post(f"/flags/{flag_id}/resolve", {"note": f"Called {RLO}kcab{PDF} fine"})
    assert response.status_code == 303, response.text
    with pages.rt.db.session() as s:
        assert s.get_one(Flag, flag_id).resolution_note == "Called kcab fine"


def test_a_staff_page_never_shows_a_bidi_control_stored_before(pages: Pages) -> None:
    session_id = enrol(pages.rt)
    with pages.rt.db.session() as s:
        add_flag(  # a row written before controls were dropped on the way in
            s,
            kind="unrecognised_reply",
            urgent=False,
            patient_id=1,
            session_id=session_id,
            text=f"Reply: “{RLO}llac em”",
            now=pages.clock.now(),
        )
    for path in ("/flags", "/patients/1"):
        page = pages.client.get(path)
        assert page.status_code == 200
        assert "llac em" in page.text
        assert RLO not in page.text, path


# The staff form refuses what every other face refuses -----------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("name", "Jane\r\nDoe", "contains control or invisible characters"),
        ("name", "Jane \u3164Doe", "contains control or invisible characters"),
        ("name", "Jane\u2800Doe", "contains control or invisible characters"),
        ("timezone", "localtime", "is not an IANA time zone"),
        ("timezone", "right/UTC", "is not an IANA time zone"),
    ],
)
def test_the_staff_form_refuses_invisible_names_and_zones_that_are_no_place(
    pages: Pages, field: str, value: str, reason: str
) -> None:
    before = pages.counts()
    response = pages.enrol(**{field: value})
    assert response.status_code == 422, response.text[:300]
    assert reason in response.text
    assert pages.counts() == before
