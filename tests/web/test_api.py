"""The JSON API (``/api/v1``) on the real app, SQLite and PostgreSQL: authentication on every
route, enrolment and its 422s, the session timeline, pause/resume/cancel, flags and the audit
log. Patients (edit, erasure) are in ``test_api_patients.py``."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from aftercare.channels.base import Message, SendResult, Transport, TransportError
from aftercare.flags.service import raise_flag
from aftercare.reminders import delivery, states
from aftercare.reminders.dispatch import claim_due
from aftercare.runtime import Runtime
from aftercare.staff.service import hash_password, issue_token, revoke_tokens
from aftercare.storage.models import (
    AuditEvent,
    Patient,
    TreatmentSession,
)
from aftercare.web.app import create_app
from tests.factories import add_inbound
from tests.factories import add_staff as staff_row

# PostgreSQL work in one transaction rolled back after each test (tests/conftest.py).
pytestmark = pytest.mark.rollback

NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
NAME = "Philippa Quennell"
PHONE = "+447911123456"
EMAIL = "philippa.quennell@example.org"
SESSION_BODY: dict[str, Any] = {
    "patient": {
        "name": NAME,
        "phone": "07911 123456",
        "email": EMAIL,
        "timezone": "Europe/London",
        "channels": ["sms", "email"],
    },
    "treated_at": "2026-03-02T10:00:00+00:00",
    "regimen": "micro-sclerotherapy",
    "parameters": {"daily_days": 14, "checkin_week": 10},
    "consent": True,
    "contraindications_checked": True,
}
REMINDER_KEYS = {"step", "channel", "template", "due_utc", "due_local", "state"}
FLAG_KEYS = {"id", "patient_id", "session_id", "kind", "severity", "created_at", "text"}


@lru_cache(maxsize=1)
def _password_hash() -> str:
    return hash_password("a password for the tests")


@dataclass
class Api:
    """The app with a nurse (role staff) and an admin, each with an API token."""

    rt: Runtime
    client: TestClient
    nurse_id: int
    nurse_token: str
    admin_id: int
    admin_token: str

    @property
    def as_admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def enrol(self, **changes: Any) -> dict[str, Any]:
        response = self.client.post("/api/v1/sessions", json=session_body(**changes))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def count(self, model: Any) -> int:
        with self.rt.db.session() as s:
            return s.scalar(select(func.count()).select_from(model)) or 0


def add_staff(rt: Runtime, email: str, role: str) -> tuple[int, str]:
    with rt.db.session() as s:
        user = staff_row(s, now=NOW, email=email, role=role, password_hash=_password_hash())
        return user.id, issue_token(db_session=s, staff_id=user.id, now=NOW)[1]


def make_api(rt: Runtime) -> Iterator[Api]:
    nurse_id, nurse_token = add_staff(rt, "nurse@example.org", "staff")
    admin_id, admin_token = add_staff(rt, "admin@example.org", "admin")
    headers = {"Authorization": f"Bearer {nurse_token}"}
    with TestClient(create_app(rt), headers=headers) as client:
        yield Api(rt, client, nurse_id, nurse_token, admin_id, admin_token)


@pytest.fixture
def api(runtime: Runtime) -> Iterator[Api]:
    yield from make_api(runtime)


def session_body(**changes: Any) -> dict[str, Any]:
    """The valid enrolment body with ``changes`` (``patient__phone=...`` for patient fields;
    the value ``...`` removes the field)."""
    body = copy.deepcopy(SESSION_BODY)
    for key, value in changes.items():
        target, name = (body["patient"], key[9:]) if key.startswith("patient__") else (body, key)
        if value is ...:
            target.pop(name, None)
        else:
            target[name] = value
    return body


def deliver_due(rt: Runtime, transports: dict[str, Transport] | None = None) -> list[str]:
    with rt.db.session() as s:
        ids = claim_due(s, now=rt.clock.now(), limit=1000)
    deps = rt.delivery_deps()
    deps.transports.update(transports or {})
    return [delivery.deliver(deps=deps, reminder_id=i) for i in ids]


class RefusingSms:
    """The network edge: a provider that refuses the number, quoting it, as Twilio does."""

    name = "twilio"
    channel = "sms"

    def send(self, message: Message) -> SendResult:
        raise TransportError(
            f"The 'To' number {PHONE} is not a valid phone number.", permanent=True, code="21211"
        )

    def lookup(self, message: Message, *, since: datetime) -> SendResult | None:
        return None


def error_shape(response: Any) -> list[tuple[list[Any], str]]:
    body = response.json()
    assert set(body) == {"detail"}
    assert all(set(item) == {"loc", "msg"} for item in body["detail"])
    return [(item["loc"], item["msg"]) for item in body["detail"]]


# Authentication --------------------------------------------------------------------------------


def api_routes() -> list[tuple[str, str]]:
    """Every operation under /api/v1, as the app's own OpenAPI schema lists them."""
    paths = create_app().openapi()["paths"]  # builds nothing until a request comes
    return sorted(
        (method.upper(), path.replace("{id}", "1"))
        for path, operations in paths.items()
        if path.startswith("/api/v1")
        for method in operations
    )


ROUTES = api_routes()


def test_every_api_route_is_covered_by_the_auth_tests() -> None:
    assert len(ROUTES) >= 11
    assert ("POST", "/api/v1/sessions") in ROUTES
    assert ("DELETE", "/api/v1/patients/1") in ROUTES


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_api_route_without_a_live_token_is_401_and_changes_nothing(
    api: Api, method: str, path: str
) -> None:
    session_id = api.enrol()["id"]
    before = (api.count(TreatmentSession), api.count(AuditEvent))
    revoked = api.nurse_token
    with api.rt.db.session() as s:
        revoke_tokens(db_session=s, prefix=revoked[:12], now=NOW)
    client = TestClient(api.client.app)
    credentials = {
        "none": {},
        "bad": {"Authorization": "Bearer act_not-a-real-token"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
        "basic": {"Authorization": "Basic bnVyc2U6cGFzc3dvcmQ="},
    }

    for credential, headers in credentials.items():
        response = client.request(
            method,
            path.replace("/1", f"/{session_id}"),
            headers=headers,
            json=SESSION_BODY if method in {"POST", "PATCH"} else None,
        )

        assert response.status_code == 401, credential
        assert isinstance(response.json()["detail"], str)
        assert response.headers["www-authenticate"] == "Bearer"
    assert (api.count(TreatmentSession), api.count(AuditEvent)) == before


def test_audit_log_is_for_admins_only(api: Api) -> None:
    response = api.client.get("/api/v1/audit")
    assert response.status_code == 403
    assert response.json() == {"detail": "this needs an admin account"}
    assert api.client.get("/api/v1/audit", headers=api.as_admin).status_code == 200


# Enrolment -------------------------------------------------------------------------------------


def test_enrol_answers_201_with_the_planned_timeline_in_the_patients_zone(api: Api) -> None:
    body = api.enrol(patient__timezone="America/New_York")

    assert set(body) == {"id", "patient_id", "matched_existing", "reminders"}
    assert body["matched_existing"] is False
    assert all(set(r) == REMINDER_KEYS for r in body["reminders"])
    first_wear = next(r for r in body["reminders"] if r["step"] == "daily-wear")
    assert first_wear["due_local"].endswith("-05:00")
    assert first_wear["due_local"][11:16] == "08:00"
    assert first_wear["due_utc"].endswith("+00:00")
    assert datetime.fromisoformat(first_wear["due_local"]) == datetime.fromisoformat(
        first_wear["due_utc"]
    )
    assert {r["state"] for r in body["reminders"]} == {"scheduled"}
    dues = [datetime.fromisoformat(r["due_utc"]) for r in body["reminders"]]
    assert dues == sorted(dues)
    with api.rt.db.session() as s:
        session = s.get_one(TreatmentSession, body["id"])
        assert (session.patient_id, session.created_by_id) == (body["patient_id"], api.nurse_id)
        event = s.scalars(select(AuditEvent)).one()
        assert (event.action, event.actor_id, event.session_id) == (
            "enrol",
            api.nurse_id,
            body["id"],
        )


def test_enrol_answers_the_timeline_exactly_as_stored_when_the_session_is_recorded_late(
    api: Api,
) -> None:
    late = (NOW - timedelta(days=5)).isoformat()
    body = api.enrol(treated_at=late, patient__timezone="Australia/Sydney")

    stored = api.client.get(f"/api/v1/sessions/{body['id']}").json()["reminders"]
    fields = ("step", "channel", "template", "due_utc", "due_local", "state")
    assert [{f: r[f] for f in fields} for r in body["reminders"]] == [
        {f: r[f] for f in fields} for r in stored
    ]
    assert {"scheduled", "skipped"} <= {r["state"] for r in body["reminders"]}


def test_enrol_by_email_only_needs_no_phone_and_defaults_regimen_and_parameters(api: Api) -> None:
    body = api.enrol(patient__phone=..., patient__channels=["email"], regimen=..., parameters=...)

    assert {r["channel"] for r in body["reminders"]} == {"email"}
    daily = [r for r in body["reminders"] if r["step"] == "daily-wear"]
    assert len(daily) == 14


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"patient__phone": "12345"}, ["body", "patient", "phone"]),
        ({"patient__phone": ...}, ["body", "patient", "phone"]),
        ({"patient__email": "nobody-at-example"}, ["body", "patient", "email"]),
        ({"patient__timezone": "Europe/Atlantis"}, ["body", "patient", "timezone"]),
        ({"patient__channels": ["sms", "fax"]}, ["body", "patient", "channels", 1]),
        ({"patient__name": ...}, ["body", "patient", "name"]),
        ({"consent": ...}, ["body", "consent"]),
        ({"consent": False}, ["body", "consent"]),
        ({"contraindications_checked": False}, ["body", "contraindications_checked"]),
        ({"regimen": "laser-tattoo-removal"}, ["body", "regimen"]),
        ({"parameters": {"checkin_week": 20}}, ["body", "parameters", "checkin_week"]),
        ({"parameters": {"daily_days": 10}}, ["body", "parameters", "daily_days"]),
        ({"parameters": {"colour": "red"}}, ["body", "parameters", "colour"]),
        ({"treated_at": "2026-03-02T10:00:00"}, ["body", "treated_at"]),
        ({"treated_at": "yesterday"}, ["body", "treated_at"]),
        ({"treated_at": "2026-03-05T10:00:00+00:00"}, ["body", "treated_at"]),
        ({"treated_at": "2025-01-02T10:00:00+00:00"}, ["body", "treated_at"]),
        ({"treated_at": ...}, ["body", "treated_at"]),
        ({"nickname": "Pip"}, ["body", "nickname"]),
    ],
    ids=lambda v: "-".join(str(p) for p in v[1:]) if isinstance(v, list) else None,
)
def test_bad_enrolment_is_422_naming_the_field_and_stores_nothing(
    api: Api, changes: dict[str, Any], loc: list[Any]
) -> None:
    response = api.client.post("/api/v1/sessions", json=session_body(**changes))

    assert response.status_code == 422
    errors = error_shape(response)
    assert loc in [where for where, _ in errors]
    assert all(msg for _, msg in errors)
    assert (api.count(Patient), api.count(TreatmentSession), api.count(AuditEvent)) == (0, 0, 0)


def test_422_does_not_echo_what_was_sent(api: Api) -> None:
    response = api.client.post(
        "/api/v1/sessions", json=session_body(patient__phone="Philippa's mobile: 0791")
    )
    assert response.status_code == 422
    assert "Philippa" not in response.text


def test_malformed_json_is_422_in_the_same_shape(api: Api) -> None:
    response = api.client.post(
        "/api/v1/sessions", content=b'{"patient": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert error_shape(response)[0][0][0] == "body"


@pytest.mark.parametrize("treated_at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_instant_with_no_utc_equivalent_is_422(api: Api, treated_at: str) -> None:
    response = api.client.post("/api/v1/sessions", json=session_body(treated_at=treated_at))
    assert response.status_code == 422
    assert error_shape(response) == [(["body", "treated_at"], "is out of range")]


def test_body_that_is_not_utf8_is_422_in_the_same_shape(api: Api) -> None:
    response = api.client.post(
        "/api/v1/sessions", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert error_shape(response)[0][0] == ["body"]


# The timeline, pause, resume, cancel -------------------------------------------------------------


@pytest.mark.commits  # delivers: record_sent writes on its own connection
def test_session_timeline_shows_states_attempts_without_provider_text_and_replies(
    api: Api,
) -> None:
    created = api.enrol()
    deliver_due(api.rt, {"sms": RefusingSms()})
    with api.rt.db.session() as s:
        add_inbound(
            s,
            provider_sid="SM" + "0" * 32,
            from_number=PHONE,
            patient_id=created["patient_id"],
            session_id=created["id"],
            body="Legs are fine, thanks",
            received_at=NOW + timedelta(minutes=5),
            kind="unrecognised",
        )

    response = api.client.get(f"/api/v1/sessions/{created['id']}")

    assert response.status_code == 200
    timeline = response.json()
    assert (timeline["id"], timeline["patient_id"], timeline["status"]) == (
        created["id"],
        created["patient_id"],
        "active",
    )
    by_key = {(r["step"], r["occurrence"], r["channel"]): r for r in timeline["reminders"]}
    sms = by_key[("welcome", 0, "sms")]
    assert sms["state"] == states.FAILED
    [attempt] = sms["attempts"]
    assert (attempt["outcome"], attempt["error_code"], attempt["transport"]) == (
        "permanent",
        "21211",
        "twilio",
    )
    assert "error_detail" not in attempt
    assert PHONE not in response.text
    assert by_key[("welcome", 0, "email")]["state"] == states.SENT
    assert by_key[("continuous-end", 0, "sms")]["state"] == states.SCHEDULED
    assert [r["body"] for r in timeline["replies"]] == ["Legs are fine, thanks"]


def test_pause_then_resume_round_trip(api: Api) -> None:
    session_id = api.enrol()["id"]

    paused = api.client.post(f"/api/v1/sessions/{session_id}/pause")

    assert paused.status_code == 200
    assert paused.json()["status"] == "paused"
    assert {r["state"] for r in paused.json()["reminders"]} == {states.PAUSED}
    assert deliver_due(api.rt) == []

    resumed = api.client.post(f"/api/v1/sessions/{session_id}/resume")

    assert resumed.status_code == 200
    assert resumed.json()["status"] == "active"
    assert {r["state"] for r in resumed.json()["reminders"]} == {states.SCHEDULED}
    assert set(deliver_due(api.rt)) == {states.SENT}
    with api.rt.db.session() as s:
        actions = s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["enrol", "pause", "resume"]


@pytest.mark.commits  # delivers: record_sent writes on its own connection
def test_cancel_cancels_what_is_pending(api: Api) -> None:
    session_id = api.enrol()["id"]
    deliver_due(api.rt)

    response = api.client.post(f"/api/v1/sessions/{session_id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert {r["state"] for r in response.json()["reminders"]} == {
        states.SENT,
        states.CANCELLED,
    }


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("cancel", "resume"),
        (None, "resume"),
        ("cancel", "pause"),
        ("cancel", "cancel"),
        ("pause", "pause"),
    ],
)
def test_change_that_makes_no_sense_is_409(api: Api, first: str | None, then: str) -> None:
    session_id = api.enrol()["id"]
    if first:
        assert api.client.post(f"/api/v1/sessions/{session_id}/{first}").status_code == 200
    events = api.count(AuditEvent)

    response = api.client.post(f"/api/v1/sessions/{session_id}/{then}")

    assert response.status_code == 409
    assert isinstance(response.json()["detail"], str)
    assert api.count(AuditEvent) == events


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/sessions/999"),
        ("POST", "/api/v1/sessions/999/pause"),
        ("POST", "/api/v1/sessions/999/resume"),
        ("POST", "/api/v1/sessions/999/cancel"),
        ("GET", "/api/v1/patients/999"),
        ("PATCH", "/api/v1/patients/999"),
        ("DELETE", "/api/v1/patients/999"),
        ("POST", "/api/v1/flags/999/resolve"),
    ],
)
def test_unknown_id_is_404(api: Api, method: str, path: str) -> None:
    response = api.client.request(method, path, json={} if method == "PATCH" else None)
    assert response.status_code == 404
    assert "999" in response.json()["detail"]


@pytest.mark.parametrize(
    "path", ["/api/v1/sessions/abc", "/api/v1/sessions/0", "/api/v1/sessions/99999999999"]
)
def test_id_that_is_not_a_row_id_is_422_naming_it(api: Api, path: str) -> None:
    response = api.client.get(path)
    assert response.status_code == 422
    assert error_shape(response)[0][0] == ["path", "id"]


# Flags and the audit log -------------------------------------------------------------------------


def test_flags_list_open_flags_urgent_first_then_oldest(api: Api) -> None:
    created = api.enrol()
    patient_id, session_id = created["patient_id"], created["id"]
    with api.rt.db.session() as s:
        ids = {}
        for minutes, kind in [
            (1, "delivery_failed"),
            (2, "urgent_reply"),
            (3, "unrecognised_reply"),
            (4, "checkin_concern"),
            (5, "stale_reminder"),
        ]:
            flag = raise_flag(
                s,
                kind=kind,
                patient_id=patient_id,
                session_id=session_id,
                text=f"{kind} needs a look",
                now=NOW + timedelta(minutes=minutes),
            )
            ids[kind] = flag.id
        raise_flag(
            s, kind="urgent_reply", patient_id=patient_id, text="old", now=NOW
        ).resolved_at = NOW

    response = api.client.get("/api/v1/flags")

    assert response.status_code == 200
    flags = response.json()
    assert [f["kind"] for f in flags] == [
        "urgent_reply",
        "checkin_concern",
        "delivery_failed",
        "unrecognised_reply",
        "stale_reminder",
    ]
    assert all(set(f) == FLAG_KEYS for f in flags)
    assert flags[0] == {
        "id": ids["urgent_reply"],
        "patient_id": patient_id,
        "session_id": session_id,
        "kind": "urgent_reply",
        "severity": "urgent",
        "created_at": (NOW + timedelta(minutes=2)).isoformat(),
        "text": "urgent_reply needs a look",
    }


def test_flags_list_emergency_then_urgent_then_concern_then_info_each_oldest_first(
    api: Api,
) -> None:
    patient_id = api.enrol()["patient_id"]
    with api.rt.db.session() as s:
        for minutes, kind, severity in [
            (1, "opt_out", "info"),
            (2, "booking_request", "concern"),
            (3, "urgent_reply", "urgent"),
            (4, "unrecognised_reply", "urgent"),
            (5, "urgent_reply", "emergency"),
            (6, "checkin_concern", "concern"),
        ]:
            raise_flag(
                s,
                kind=kind,
                patient_id=patient_id,
                severity=severity,  # type: ignore[arg-type]
                text=kind,
                now=NOW + timedelta(minutes=minutes),
            )

    flags = api.client.get("/api/v1/flags").json()

    assert [(f["severity"], f["kind"]) for f in flags] == [
        ("emergency", "urgent_reply"),
        ("urgent", "urgent_reply"),
        ("urgent", "unrecognised_reply"),
        ("concern", "booking_request"),
        ("concern", "checkin_concern"),
        ("info", "opt_out"),
    ]


def test_resolving_a_flag_removes_it_from_the_list_and_twice_is_409(api: Api) -> None:
    created = api.enrol()
    with api.rt.db.session() as s:
        flag_id = raise_flag(
            s, kind="urgent_reply", patient_id=created["patient_id"], text="pain", now=NOW
        ).id

    response = api.client.post(f"/api/v1/flags/{flag_id}/resolve", json={"note": "called back"})

    assert response.status_code == 200
    assert (response.json()["resolved_by_id"], response.json()["resolved_at"]) == (
        api.nurse_id,
        NOW.isoformat(),
    )
    assert api.client.get("/api/v1/flags").json() == []
    assert api.client.post(f"/api/v1/flags/{flag_id}/resolve").status_code == 409
    with api.rt.db.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "resolve_flag")).one()
    assert (event.actor_id, event.patient_id, event.detail) == (
        api.nurse_id,
        created["patient_id"],
        {"flag_id": flag_id, "kind": "urgent_reply"},
    )


def test_control_characters_in_a_flag_note_or_an_audit_filter_are_422(api: Api) -> None:
    created = api.enrol()
    with api.rt.db.session() as s:
        flag_id = raise_flag(
            s, kind="urgent_reply", patient_id=created["patient_id"], text="pain", now=NOW
        ).id

    note = api.client.post(f"/api/v1/flags/{flag_id}/resolve", json={"note": "called\x00back"})
    action = api.client.get("/api/v1/audit", params={"action": "en\x00rol"}, headers=api.as_admin)

    assert error_shape(note) == [(["body", "note"], "contains characters that are not allowed")]
    assert error_shape(action)[0][0] == ["query", "action"]
    assert len(api.client.get("/api/v1/flags").json()) == 1


def test_audit_log_shows_who_did_what_newest_first_with_ids_only(api: Api) -> None:
    created = api.enrol()
    api.client.post(f"/api/v1/sessions/{created['id']}/pause")
    other = api.enrol(patient__name="Someone Else")

    everything = api.client.get("/api/v1/audit", headers=api.as_admin).json()
    theirs = api.client.get(
        "/api/v1/audit", params={"patient_id": created["patient_id"]}, headers=api.as_admin
    ).json()

    assert [(e["action"], e["patient_id"]) for e in everything] == [
        ("enrol", other["patient_id"]),
        ("pause", created["patient_id"]),
        ("enrol", created["patient_id"]),
    ]
    assert {e["actor_id"] for e in everything} == {api.nurse_id}
    assert [e["action"] for e in theirs] == ["pause", "enrol"]
    assert NAME not in str(everything)
    page = api.client.get(
        "/api/v1/audit", params={"before_id": everything[0]["id"], "limit": 1}, headers=api.as_admin
    ).json()
    assert [e["id"] for e in page] == [everything[1]["id"]]
