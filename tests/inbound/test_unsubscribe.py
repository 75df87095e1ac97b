"""The unsubscribe link: GET confirms and changes nothing; POST (one-click) stops email only."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import timedelta
from email import message_from_bytes, policy
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from aftercare.clock import FixedClock
from aftercare.reminders import delivery, dispatch, states
from aftercare.runtime import Runtime
from aftercare.security import sign
from aftercare.storage.models import AuditEvent, Patient, Reminder, TreatmentSession
from aftercare.web.app import create_app
from tests.conftest import TEST_SECRET
from tests.factories import enrol

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime)) as test_client:
        yield test_client


def patient_of(rt: Runtime, session_id: int) -> Patient:
    with rt.db.session() as s:
        session = s.get_one(TreatmentSession, session_id)
        patient = s.get_one(Patient, session.patient_id)
        s.expunge(patient)
        return patient


def link_for(rt: Runtime, session_id: int) -> str:
    return f"/unsubscribe/{sign(patient_of(rt, session_id).public_id, secret=TEST_SECRET)}"


def audit_events(rt: Runtime) -> list[AuditEvent]:
    with rt.db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "email_unsubscribe")))
        s.expunge_all()
        return events


def deliver_due(rt: Runtime) -> dict[str, str]:
    """Deliver everything due; channel -> outcome."""
    published: list[int] = []

    def publish(ids: Sequence[int]) -> None:
        published.extend(ids)

    dispatch.dispatch_due(db=rt.db, clock=rt.clock, publish=publish)
    deps = rt.delivery_deps()
    with rt.db.session() as s:
        channels = {i: s.get_one(Reminder, i).channel for i in published}
    return {channels[i]: delivery.deliver(deps=deps, reminder_id=i) for i in published}


def test_get_when_token_valid_then_confirm_page_with_a_form_and_nothing_changes(
    runtime: Runtime, client: TestClient
) -> None:
    session_id = enrol(runtime)
    response = client.get(link_for(runtime, session_id))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<form method="post">' in page
    assert '<button type="submit">Stop aftercare emails</button>' in page
    assert "<script" not in page
    assert "Riverside Vein Clinic" in page
    # The page names nobody: a forwarded link shows no patient data.
    assert "Philippa" not in page
    assert "example.org" not in page
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert patient_of(runtime, session_id).email_opted_out_at is None
    assert audit_events(runtime) == []


def test_post_one_click_then_email_stops_and_is_audited_and_next_email_cancelled(
    runtime: Runtime, client: TestClient, clock: FixedClock
) -> None:
    session_id = enrol(runtime)
    response = client.post(link_for(runtime, session_id), data=ONE_CLICK)
    assert response.status_code == 200
    assert "You will not get any more aftercare emails" in response.text
    patient = patient_of(runtime, session_id)
    assert patient.email_opted_out_at == clock.now()
    [event] = audit_events(runtime)
    assert (event.patient_id, event.actor_id, event.detail) == (
        patient.id,
        None,
        {"source": "link"},
    )
    # The welcome is due now: the SMS goes, the email is cancelled by delivery.
    assert deliver_due(runtime) == {"sms": states.SENT, "email": states.CANCELLED}
    outbox = runtime.settings.outbox_dir / "email" / "sent.log"
    assert not outbox.exists()


def test_post_with_empty_body_or_multipart_then_unsubscribes(
    runtime: Runtime, client: TestClient
) -> None:
    first, second = enrol(runtime), enrol(runtime, email="someone.else@example.org")
    assert client.post(link_for(runtime, first)).status_code == 200
    multipart = client.post(
        link_for(runtime, second), files={"List-Unsubscribe": (None, "One-Click")}
    )
    assert multipart.status_code == 200
    assert patient_of(runtime, first).email_opted_out_at is not None
    assert patient_of(runtime, second).email_opted_out_at is not None


def test_post_twice_then_still_fine_and_recorded_once(
    runtime: Runtime, client: TestClient, clock: FixedClock
) -> None:
    session_id = enrol(runtime)
    link = link_for(runtime, session_id)
    first_at = clock.now()
    assert client.post(link, data=ONE_CLICK).status_code == 200
    clock.advance(timedelta(hours=1))
    again = client.post(link, data=ONE_CLICK)
    assert again.status_code == 200
    assert "You will not get any more aftercare emails" in again.text
    assert patient_of(runtime, session_id).email_opted_out_at == first_at
    assert len(audit_events(runtime)) == 1
    # Coming back to the link later shows the outcome, not a new question.
    assert "You will not get any more aftercare emails" in client.get(link).text


def test_post_needs_no_cookie_or_csrf_token(runtime: Runtime, client: TestClient) -> None:
    session_id = enrol(runtime)
    client.cookies.clear()
    response = client.post(
        link_for(runtime, session_id),
        content=b"List-Unsubscribe=One-Click",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": "https://mail.example",
        },
    )
    assert response.status_code == 200
    assert patient_of(runtime, session_id).email_opted_out_at is not None


def _bad_tokens(public_id: str) -> dict[str, str]:
    good = sign(public_id, secret=TEST_SECRET)
    return {
        "forged mac": f"{public_id}.{'A' * 24}",
        "other secret": sign(public_id, secret="another-deployment-secret-0123456789"),
        "other purpose": sign(public_id, secret=TEST_SECRET, purpose="calendar"),
        "truncated": good[:-3],
        "no mac": public_id,
        "unknown patient": sign("0" * 32, secret=TEST_SECRET),
    }


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_token_then_404_that_reveals_nothing_and_nothing_changes(
    runtime: Runtime, client: TestClient, method: str
) -> None:
    session_id = enrol(runtime)
    bodies = set()
    for name, token in _bad_tokens(patient_of(runtime, session_id).public_id).items():
        response = client.request(
            method, f"/unsubscribe/{token}", data=ONE_CLICK if method == "POST" else None
        )
        assert response.status_code == 404, name
        bodies.add(response.text)
    assert len(bodies) == 1
    assert "This link does not work" in bodies.pop()
    assert patient_of(runtime, session_id).email_opted_out_at is None
    assert audit_events(runtime) == []


def test_token_of_erased_patient_then_same_404(
    runtime: Runtime, client: TestClient, clock: FixedClock
) -> None:
    session_id = enrol(runtime)
    link = link_for(runtime, session_id)
    forged = client.get(f"/unsubscribe/{'A' * 16}.{'A' * 24}").text
    with runtime.db.session() as s:
        s.execute(update(Patient).values(erased_at=clock.now()))
    for method in ("GET", "POST"):
        response = client.request(method, link)
        assert (response.status_code, response.text) == (404, forged)
    assert patient_of(runtime, session_id).email_opted_out_at is None


def test_link_in_a_delivered_email_header_then_one_click_post_unsubscribes(
    runtime: Runtime, client: TestClient
) -> None:
    session_id = enrol(runtime, channels=("email",), phone=None)
    assert set(deliver_due(runtime).values()) == {states.SENT}
    [eml] = (runtime.settings.outbox_dir / "email").glob("*.eml")
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    https, mailto = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    assert mailto.startswith("mailto:")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # What a mail provider does (RFC 8058): POST the one-click body to the HTTPS link.
    response = client.post(urlsplit(https).path, data=ONE_CLICK)
    assert response.status_code == 200
    assert patient_of(runtime, session_id).email_opted_out_at is not None
