"""Bad input at every edge: the corpus in ``corpus.py`` thrown at the JSON API, the CSV import,
the CLI, Twilio's webhooks (validly signed: only the payload is wrong), the regimen loader and
the template renderer. Each case must get a clear error that names the field and the reason, and
must change nothing: every table's rows are compared before and after (SQLite and PostgreSQL).
Names that look like code (template or SQL injection) are accepted, stored as typed and rendered
as plain text.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import select
from twilio.request_validator import RequestValidator
from typer.testing import CliRunner

from aftercare.channels.base import SmsMessage
from aftercare.cli.main import cli
from aftercare.clock import FixedClock
from aftercare.messages.context import sms_first_name
from aftercare.messages.render import MessageRenderer, TemplateError
from aftercare.regimens.loader import RegimenError, parse_regimen
from aftercare.reminders.compose import compose, unsubscribe_url
from aftercare.runtime import Runtime, set_runtime
from aftercare.storage.migrate import upgrade
from aftercare.storage.models import InboundMessage, Patient
from aftercare.web.app import create_app
from tests.conftest import _truncate, make_settings
from tests.faults import corpus
from tests.faults.corpus import MB, Case, RawJson, table_snapshot
from tests.web.test_api import add_staff

NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
AUTH_TOKEN = "test-twilio-auth-token-0123456789abcdef"
PUBLIC = "https://clinic.example"
GOOD_BODY: dict[str, Any] = {
    "patient": {
        "name": "Philippa Quennell",
        "phone": "07911 123456",
        "email": "philippa.quennell@example.org",
        "timezone": "Europe/London",
        "channels": ["sms", "email"],
    },
    "treated_at": "2026-03-02T10:00:00+00:00",
    "regimen": "micro-sclerotherapy",
    "parameters": {"daily_days": 14, "checkin_week": 10},
    "consent": True,
    "contraindications_checked": True,
}


@dataclass
class World:
    """One database (SQLite or PostgreSQL) with a nurse, one enrolled patient, the app and its
    settings (a Twilio auth token, a public URL), shared by the module's tests. A test of a
    refusal takes ``unchanged``, which compares every table before and after it; the few tests
    that store something (names that look like code) enrol patients of their own."""

    rt: Runtime
    client: TestClient
    patient_id: int

    def unchanged(self) -> Iterator[None]:
        before = table_snapshot(self.rt.db)
        yield
        after = table_snapshot(self.rt.db)
        changed = sorted(name for name in before if before[name] != after[name])
        assert not changed, f"bad input changed these tables: {changed}"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'aftercare.sqlite3'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("pg_url")
    rt = Runtime(
        make_settings(
            folder,
            database_url=url,
            twilio_auth_token=AUTH_TOKEN,
            public_base_url=PUBLIC,
        )
    )
    rt.clock = FixedClock(NOW)
    if rt.db.is_postgres:
        _truncate(rt.db)
    _, token = add_staff(rt, "nurse@example.org", "staff")
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(rt), headers=headers) as client:
        body = json.loads(json.dumps(GOOD_BODY))
        body["patient"].update(
            name="Existing Patient", phone="07912 345678", email="existing@example.org"
        )
        created = client.post("/api/v1/sessions", json=body)
        assert created.status_code == 201, created.text
        yield World(rt, client, created.json()["patient_id"])
    if rt.db.is_postgres:
        _truncate(rt.db)
    rt.db.dispose()


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    """Fails the test if any row of any table changed during it."""
    yield from world.unchanged()


def assert_names_field(response: Any, loc: tuple[str | int, ...], reason: str) -> None:
    """A 422 in the API's one shape, with an error at ``loc`` whose message says ``reason``,
    short, and never echoing a huge input."""
    assert response.status_code == 422, response.text[:500]
    assert len(response.content) < 4096, "the error echoes the input"
    detail = response.json()["detail"]
    assert all(set(item) == {"loc", "msg"} and item["msg"].strip() for item in detail)
    matching = [item for item in detail if tuple(item["loc"][: len(loc)]) == loc]
    assert matching, f"no error at {list(loc)}: {detail}"
    assert any(reason in item["msg"] for item in matching), f"{reason!r} not in {matching}"


def _with_changes(changes: dict[str, Any]) -> str:
    """The good enrolment body with ``changes`` (``patient.X`` keys, ``...`` removes), as JSON
    text: a RawJson value is spliced in as written."""
    body = json.loads(json.dumps(GOOD_BODY))
    raw: dict[str, str] = {}
    for key, value in changes.items():
        target, name = (body["patient"], key[8:]) if key.startswith("patient.") else (body, key)
        if value is ...:
            target.pop(name, None)
        elif isinstance(value, RawJson):
            marker = f"@@raw{len(raw)}@@"
            raw[json.dumps(marker)] = value.text
            target[name] = marker
        else:
            target[name] = value
    text = json.dumps(body)
    for marker, value in raw.items():
        text = text.replace(marker, value)
    return text


def _send_json(client: TestClient, method: str, url: str, body: Any) -> Any:
    if isinstance(body, bytes):
        content = body
    elif isinstance(body, dict) and any(isinstance(v, RawJson) for v in body.values()):
        content = json.dumps(
            {k: "@@raw@@" if isinstance(v, RawJson) else v for k, v in body.items()}
        ).encode()
        for v in body.values():
            if isinstance(v, RawJson):
                content = content.replace(b'"@@raw@@"', v.text.encode())
    else:
        content = json.dumps(body).encode()
    return client.request(
        method, url, content=content, headers={"content-type": "application/json"}
    )


# The JSON API ----------------------------------------------------------------------------------

ENROLMENT = corpus.enrolment_cases()


@pytest.mark.parametrize("case", ENROLMENT, ids=[c.id for c in ENROLMENT])
def test_enrolment_with_a_bad_body_is_422_naming_the_field_and_stores_nothing(
    world: World, unchanged: None, case: Case
) -> None:
    body = case.body if isinstance(case.body, bytes) else _with_changes(case.body).encode()
    response = world.client.post(
        "/api/v1/sessions", content=body, headers={"content-type": "application/json"}
    )
    assert_names_field(response, case.loc, case.reason)


PATCHES = corpus.patch_cases()


@pytest.mark.parametrize("case", PATCHES, ids=[c.id for c in PATCHES])
def test_patient_edit_with_a_bad_body_is_422_naming_the_field_and_changes_nothing(
    world: World, unchanged: None, case: Case
) -> None:
    response = _send_json(world.client, "PATCH", f"/api/v1/patients/{world.patient_id}", case.body)
    assert_names_field(response, case.loc, case.reason)


@pytest.mark.parametrize(
    ("path_id", "status"),
    [("abc", 422), ("0", 422), ("-1", 422), (str(2**31), 422), ("1e3", 422), ("999999", 404)],
)
def test_patient_edit_of_a_bad_or_unknown_id_is_refused_and_changes_nothing(
    world: World, unchanged: None, path_id: str, status: int
) -> None:
    response = world.client.patch(f"/api/v1/patients/{path_id}", json={"name": "New Name"})
    assert response.status_code == status, response.text
    if status == 422:
        assert_names_field(response, ("path", "id"), "")


# Names that look like code are text ------------------------------------------------------------


@pytest.mark.parametrize("name", corpus.INJECTION_NAMES)
def test_a_name_that_looks_like_code_is_stored_as_typed_and_rendered_as_plain_text(
    world: World, name: str
) -> None:
    patient_id = _enrol(
        world, name, email=f"injection{corpus.INJECTION_NAMES.index(name)}@example.org"
    )
    with world.rt.db.session() as s:
        stored = s.scalars(select(Patient.name).where(Patient.id == patient_id)).one()
    assert stored == name
    assert world.client.get(f"/api/v1/patients/{patient_id}").json()["name"] == name

    # Composed for sending, the name is text: the message is the one a plain name gets, with
    # the first word as typed (HTML-escaped in HTML), never "49", never a tag.
    plain_id = _enrol(world, "Plain Name", email="plain@example.org")
    first = name.split(maxsplit=1)[0]
    injected, plain = _welcome(world, patient_id), _welcome(world, plain_id)
    greeting = sms_first_name(first)  # a first word too long for SMS is "there"
    assert injected[0].replace(greeting, "Plain") == plain[0]
    assert injected[1].replace(first, "Plain") == plain[1]
    assert injected[2].replace(str(escape(first)), "Plain") == plain[2]
    assert "<script>" not in injected[2]


def test_a_first_name_too_long_for_sms_is_greeted_as_there_and_every_sms_still_fits(
    world: World,
) -> None:
    """Found by the corpus: a first word longer than the one the templates are checked with
    pushed SMS past two segments, so every SMS of that patient failed (the critical 72-hour
    one too)."""
    patient_id = _enrol(world, "Bartholomew-Maximilian-Fitzgerald Smith", email="long@example.org")
    deps = world.rt.delivery_deps()
    with world.rt.db.session() as s:
        patient = s.get(Patient, patient_id)
        assert patient is not None
        (session,) = patient.sessions
        texts = [
            compose(
                reminder=r,
                session=session,
                patient=patient,
                registry=deps.registry,
                renderer=deps.renderer,
                quiet=deps.quiet,
                clinic=deps.clinic,
            )
            for r in session.reminders
            if r.channel == "sms"
        ]
    assert len(texts) > 20
    bodies = [t.body for t in texts if isinstance(t, SmsMessage)]
    assert len(bodies) == len(texts)
    assert not any("Bartholomew" in body for body in bodies)
    assert any("Hi there" in body for body in bodies)


def _enrol(world: World, name: str, *, email: str) -> int:
    body = json.loads(_with_changes({"patient.name": name}))
    body["patient"]["email"] = email
    created = world.client.post("/api/v1/sessions", json=body)
    assert created.status_code == 201, created.text
    patient_id: int = created.json()["patient_id"]
    return patient_id


def _welcome(world: World, patient_id: int) -> tuple[str, str, str]:
    """The welcome SMS, and the welcome email's text and HTML (its unsubscribe link blanked), as
    they would be sent to the patient."""
    deps = world.rt.delivery_deps()
    out: dict[str, Any] = {}
    with world.rt.db.session() as s:
        patient = s.get(Patient, patient_id)
        assert patient is not None
        # The latest session: "Plain Name" is enrolled again for each case, and the same person
        # is one patient across sessions.
        session = max(patient.sessions, key=lambda s: s.id)
        for reminder in session.reminders:
            if reminder.step == "welcome":
                out[reminder.channel] = compose(
                    reminder=reminder,
                    session=session,
                    patient=patient,
                    registry=deps.registry,
                    renderer=deps.renderer,
                    quiet=deps.quiet,
                    clinic=deps.clinic,
                )
        link = unsubscribe_url(deps.clinic, patient)
    sms, email = out["sms"], out["email"]
    return sms.body, email.text.replace(link, "LINK"), email.html.replace(link, "LINK")


# The CSV import and the CLI --------------------------------------------------------------------


def _invoke(world: World, *args: str) -> Any:
    set_runtime(world.rt)
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        set_runtime(None)


def _report(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as report:
        return list(csv.reader(report))[1:]


ROWS = corpus.csv_row_cases()


@pytest.mark.parametrize(
    ("column", "cell", "reason"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_import_of_a_bad_row_reports_row_field_and_reason_and_stores_nothing(
    world: World, unchanged: None, tmp_path: Path, column: str, cell: str, reason: str
) -> None:
    row = {**corpus.GOOD_ROW, column: cell}
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(row))
    writer.writerow(list(row.values()))
    path = tmp_path / "patients.csv"
    path.write_text(out.getvalue(), encoding="utf-8")

    result = _invoke(world, "import", str(path))

    assert result.exit_code == 1, result.output
    report = _report(tmp_path / "patients.errors.csv")
    assert [r for r in report if r[0] == "2" and r[1] == column and reason in r[2]], report
    assert all(not cell.startswith(("=", "+", "-", "@")) for r in report for cell in r)
    assert "imported 0 sessions" in result.output


@pytest.mark.parametrize(
    ("data", "reason"), [f[1:] for f in corpus.CSV_FILES], ids=[f[0] for f in corpus.CSV_FILES]
)
def test_import_of_a_file_that_cannot_be_read_exits_2_with_one_line_and_stores_nothing(
    world: World, unchanged: None, tmp_path: Path, data: bytes, reason: str
) -> None:
    path = tmp_path / "patients.csv"
    path.write_bytes(data)

    result = _invoke(world, "import", str(path))

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert reason in lines[0]
    assert len(lines[0]) < 400


CLI_ENROL = [
    ("treated-at", "0001-01-01T00:00:00+14:00", "treated-at: is out of range"),
    ("treated-at", "9999-12-31T23:59:59-14:00", "treated-at: is out of range"),
    ("treated-at", "0001-01-01T00:00:00+00:00", "treated-at: is out of range"),
    (
        "treated-at",
        "2026-02-30T10:00:00+00:00",
        "treated-at: '2026-02-30T10:00:00+00:00' is not a date",
    ),
    ("phone", "07911 ABC456", "phone: is not a phone number (only digits"),
    ("phone", "09067 123456", "phone: is not a mobile number"),
    ("timezone", "../../etc/passwd", "timezone: '../../etc/passwd' is not an IANA time zone"),
    ("name", "Jane \u202eeoD", "name: contains control or invisible characters"),
    ("email", "jane@example.org\r\nBcc: x@example.org", "email: is not a valid email address"),
    ("daily-days", "10", "daily-days: must be one of 7, 14"),
    ("channels", "sms,fax", "channels: must be 'sms' or 'email'"),
]


def _flags(values: dict[str, str]) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", value)]


@pytest.mark.parametrize(
    ("flag", "value", "line"), CLI_ENROL, ids=[f"{c[0]}-{c[1]!r}" for c in CLI_ENROL]
)
def test_cli_enrol_and_preview_with_a_bad_flag_exit_2_with_one_line_and_store_nothing(
    world: World, unchanged: None, flag: str, value: str, line: str
) -> None:
    session = {"treated-at": "2026-03-02T10:00:00+00:00", flag: value}
    contact = {"name": "Philippa Quennell", "phone": "07911 123456", "email": "p@example.org"}
    runs = [("enrol", {**contact, **session})]
    if flag not in contact:  # preview takes the session's flags only
        runs.append(("preview", session))
    for command, values in runs:
        confirmations = ["--consent", "--contraindications-checked"] if command == "enrol" else []
        result = _invoke(world, command, *_flags({**values, flag: value}), *confirmations)
        assert result.exit_code == 2, (command, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, (command, result.output)
        assert lines[0].startswith(f"error: {line}"), (command, result.output)


# Twilio's webhooks, validly signed -----------------------------------------------------------


def _sign(url: str, params: dict[str, str]) -> str:
    return str(RequestValidator(AUTH_TOKEN).compute_signature(url, params))


def _inbound_params(**changes: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "MessageSid": "SM" + "a" * 32,
        "AccountSid": "AC" + "0" * 32,
        "From": "+447912345678",
        "To": "+447700900000",
        "Body": "2",
        "NumMedia": "0",
    }
    params.update(changes)
    return {k: v for k, v in params.items() if v is not None}


@dataclass(frozen=True)
class Hook:
    """One webhook request: path, raw body, content type, the parameters it is signed over."""

    id: str
    path: str
    body: bytes | None
    content_type: str | None
    signed_params: dict[str, str]
    status: int
    reason: str


def _form(path: str, params: dict[str, str], status: int, reason: str, id: str) -> Hook:
    return Hook(
        id,
        path,
        urlencode(params).encode(),
        "application/x-www-form-urlencoded",
        params,
        status,
        reason,
    )


def _parsed(raw: bytes) -> dict[str, str]:
    """What the app's form parser makes of ``raw`` (bad bytes become U+FFFD): what a sender
    holding the auth token would have signed to get past the signature check."""
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


INBOUND, STATUS = "/webhooks/twilio/inbound", "/webhooks/twilio/status"
_NOT_UTF8 = urlencode(_inbound_params(Body="")).encode() + b"%FF%FEstop"
_RAW_LATIN1 = urlencode(_inbound_params(Body="")).encode() + b"\xe9t\xe9"
_JSON = json.dumps(_inbound_params()).encode()
_MULTIPART_BOUNDARY = "aftercare-boundary"
_MULTIPART = (
    "".join(
        f'--{_MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in _inbound_params().items()
    ).encode()
    + f"--{_MULTIPART_BOUNDARY}--\r\n".encode()
)
HOOKS = [
    _form(INBOUND, _inbound_params(MessageSid=None), 400, "MessageSid", "inbound-missing-sid"),
    _form(STATUS, {"MessageStatus": "delivered"}, 400, "MessageSid", "status-missing-sid"),
    _form(
        INBOUND,
        _inbound_params(MessageSid="SM<script>alert(1)</script>"),
        400,
        "MessageSid",
        "sid-markup",
    ),
    _form(INBOUND, _inbound_params(MessageSid="SM1' OR '1'='1"), 400, "MessageSid", "sid-sql"),
    _form(INBOUND, _inbound_params(MessageSid="SM" + "a" * 63), 400, "MessageSid", "sid-too-long"),
    _form(INBOUND, _inbound_params(MessageSid="SM\x00"), 400, "MessageSid", "sid-nul"),
    _form(INBOUND, _inbound_params(Body="x" * MB), 413, "Content Too Large", "body-one-megabyte"),
    _form(
        INBOUND, _inbound_params(Body="x" * 70_000), 413, "Content Too Large", "body-70-kilobytes"
    ),
    _form(
        INBOUND,
        {f"f{i}": "1" for i in range(1001)} | _inbound_params(),
        400,
        "fields",
        "1001-fields",
    ),
    Hook(
        "body-not-utf8",
        INBOUND,
        _NOT_UTF8,
        "application/x-www-form-urlencoded",
        _parsed(_NOT_UTF8),
        400,
        "not UTF-8",
    ),
    Hook(
        "body-raw-latin1",
        INBOUND,
        _RAW_LATIN1,
        "application/x-www-form-urlencoded",
        _parsed(_RAW_LATIN1),
        400,
        "not UTF-8",
    ),
    Hook("json-body", INBOUND, _JSON, "application/json", {}, 415, "x-www-form-urlencoded"),
    Hook("text-body", INBOUND, b"STOP", "text/plain", {}, 415, "x-www-form-urlencoded"),
    Hook(
        "no-content-type",
        INBOUND,
        urlencode(_inbound_params()).encode(),
        None,
        {},
        415,
        "x-www-form-urlencoded",
    ),
    Hook(
        "multipart-body",
        INBOUND,
        _MULTIPART,
        f"multipart/form-data; boundary={_MULTIPART_BOUNDARY}",
        _inbound_params(),
        415,
        "x-www-form-urlencoded",
    ),
    Hook(
        "no-content-length",
        INBOUND,
        None,
        "application/x-www-form-urlencoded",
        _inbound_params(),
        411,
        "Content-Length",
    ),
]


@pytest.mark.parametrize("hook", HOOKS, ids=[h.id for h in HOOKS])
def test_a_signed_webhook_with_a_bad_payload_is_refused_and_changes_nothing(
    world: World, unchanged: None, hook: Hook
) -> None:
    headers = {"X-Twilio-Signature": _sign(PUBLIC + hook.path, hook.signed_params)}
    if hook.content_type:
        headers["content-type"] = hook.content_type
    if hook.body is None:  # streamed: chunked, with no Content-Length
        content: Any = iter([urlencode(hook.signed_params).encode()])
    else:
        content = hook.body
    response = world.client.post(hook.path, content=content, headers=headers)
    assert response.status_code == hook.status, response.text[:300]
    # The app-wide body limit answers 413 before the route reads anything, in plain text.
    assert hook.reason in response.text


def test_a_signed_inbound_sms_with_a_nul_is_kept_without_it(world: World) -> None:
    """Not refused: a patient's reply is never dropped. Stored without the NUL (PostgreSQL text
    cannot hold one), and acted on."""
    params = _inbound_params(MessageSid="SM" + "c" * 32, Body="STOP\x00")
    headers = {"X-Twilio-Signature": _sign(PUBLIC + INBOUND, params)}
    response = world.client.post(INBOUND, data=params, headers=headers)
    assert response.status_code == 200, response.text
    with world.rt.db.session() as s:
        stored = s.scalars(
            select(InboundMessage).where(InboundMessage.provider_sid == params["MessageSid"])
        ).one()
    assert (stored.body, stored.kind) == ("STOP", "opt_out")


# Regimen files and templates (pure: no database) -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "reason"), [r[1:] for r in corpus.REGIMENS], ids=[r[0] for r in corpus.REGIMENS]
)
def test_a_bad_regimen_file_is_refused_naming_file_key_and_reason(
    text: str, key: str, reason: str
) -> None:
    started = time.monotonic()
    with pytest.raises(RegimenError) as caught:
        parse_regimen(text, file="bad.yaml")
    assert time.monotonic() - started < 5, "the loader expanded or looped"
    error = caught.value
    assert (error.file, error.key or "<root>") == ("bad.yaml", key)
    assert reason in error.reason
    assert str(error).startswith("bad.yaml")


@pytest.mark.parametrize(
    ("template", "reason"), [t[1:] for t in corpus.TEMPLATES], ids=[t[0] for t in corpus.TEMPLATES]
)
def test_a_bad_template_is_refused_with_file_and_reason_quickly(
    tmp_path: Path, template: str, reason: str
) -> None:
    (tmp_path / "sms").mkdir()
    (tmp_path / "sms" / "bad.txt").write_text(template, encoding="utf-8")
    renderer = MessageRenderer(tmp_path)
    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        renderer.render_sms("bad", {"first_name": "Jane", "clinic_name": "Clinic"})
    assert time.monotonic() - started < 5, "the sandbox let the template run away"
    assert caught.value.file.endswith("bad.txt")
    assert reason in caught.value.reason
    assert len(str(caught.value)) < 1000
