"""What patients are told (issue 16): every template rendered for every occurrence and every
audience (discreet or not, SMS only or both channels, with or without a reply mailbox) within 2
GSM-7 segments; every message that names 999 lists the four emergency signs; the safety recap
days of an SMS-only patient; optional advice switched off; Reply-To; the sender warning;
discreet mode chosen at enrolment."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from aftercare.messages.context import build_context, sample_context
from aftercare.messages.render import MessageRenderer
from aftercare.messages.variants import template_variants
from aftercare.planning.planner import plan, step_instants
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import RegimenRegistry, load_regimen
from aftercare.reminders.compose import Clinic, compose
from aftercare.settings import Settings
from aftercare.storage.db import Database
from aftercare.storage.models import Patient, Reminder, TreatmentSession
from tests.cli.test_cli import Aftercare, aftercare, enrol_args, succeeded  # noqa: F401
from tests.web.test_api import Api, api, session_body  # noqa: F401
from tests.web.test_pages import Pages, pages, text_of  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
REGIMEN = load_regimen(ROOT / "schedules" / "micro-sclerotherapy.yaml")
QUIET = QuietHours.parse("21:00-08:00")

# The longest realistic values (as in test_messages): clinic name, first name, phone, dates.
LONG_VALUES: dict[str, object] = {
    "first_name": "Alexandrina-Kay",
    "clinic_name": "Riverside Vein and Skin Clinic",
    "clinic_phone": "+44 (0)20 7946 0958",
    "continuous_end": "Wednesday 30 September at 11:30pm",
    "daily_start": "Wednesday 30 September",
    "daily_until": "Wednesday 30 September",
    "checkin_date": "Wednesday 30 September",
    "checkin_week": 13,
}
ALL_OMITTED = {
    "walking_advice": "omit",
    "washing_advice": "omit",
    "pain_relief_advice": "omit",
    "lumpy_veins_advice": "omit",
}
# The four signs every message that names 999 must list (SMS and email wordings).
EMERGENCY_SIGNS = {
    "chest pain": re.compile(r"chest pain", re.I),
    "breathless": re.compile(r"breathless|short of breath", re.I),
    "coughing blood": re.compile(r"cough(ing|s)? (up )?blood", re.I),
    "lips, face or throat": re.compile(r"(lips|face)\W+(\w+\W+){0,3}throat", re.I),
}
# What a lock screen must not show of a discreet patient's message.
REVEALING = re.compile(
    r"stocking|leg|vein|treat|bruis|999|111|pain|swell|sun|day \d|72|toe|marks", re.I
)


@pytest.fixture(scope="module")
def renderer() -> MessageRenderer:
    return MessageRenderer(TEMPLATES)


def audience(context: dict[str, object]) -> str:
    return ",".join(k for k in ("discreet", "sms_only", "email_reply") if context[k]) or "plain"


def every_context(parameters: dict[str, object] | None = None) -> list[tuple[str, dict]]:
    """(template, context) for every step, occurrence and audience, at the longest values."""
    out = []
    for step in REGIMEN.steps:
        for context in template_variants(REGIMEN, step.id, parameters=parameters):
            out.append((step.template, {**context, **LONG_VALUES}))
    return out


EVERY = every_context()
REPLY_TEMPLATES = [
    ("help", {"resubscribed": False}),
    ("help", {"resubscribed": True}),
    ("checkin-thanks", {}),
]


# --- Every template, every occurrence, every audience ------------------------------------------


@pytest.mark.parametrize("parameters", [None, ALL_OMITTED], ids=["advice-on", "advice-off"])
def test_every_sms_when_rendered_for_every_audience_then_gsm7_within_two_segments(
    renderer: MessageRenderer, parameters: dict[str, object] | None
) -> None:
    rendered = 0
    for template, context in every_context(parameters):
        sms = renderer.render_sms(template, context)  # refuses UCS-2 or 3 segments itself
        assert sms.encoding == "GSM-7", (template, audience(context))
        assert sms.segments <= 2, (template, audience(context), sms.body)
        assert sms.body.startswith(f"{LONG_VALUES['clinic_name']}: ")
        # Every regimen text asks the patient to do something: each gives the clinic's number.
        assert str(LONG_VALUES["clinic_phone"]) in sms.body, (template, sms.body)
        rendered += 1
    assert rendered >= 8 * len(REGIMEN.steps)


@pytest.mark.parametrize("parameters", [None, ALL_OMITTED], ids=["advice-on", "advice-off"])
def test_every_email_when_rendered_for_every_audience_then_complete(
    renderer: MessageRenderer, parameters: dict[str, object] | None
) -> None:
    for template, context in every_context(parameters):
        email = renderer.render_email(template, context)
        assert email.subject, template
        assert len(email.subject) <= 60, email.subject
        assert str(context["unsubscribe_url"]) in email.text
        assert '<html lang="en">' in email.html
        if context["discreet"]:
            assert email.subject == f"A message from {LONG_VALUES['clinic_name']}"
            assert "<h1" in email.html
            assert "A message from us</h1>" in email.html
        else:
            assert not email.subject.startswith("A message from")
        invites_reply = re.search(r"reply to this email|replying to this email", email.text)
        assert bool(invites_reply) == (template == "checkin" and bool(context["email_reply"]))


@pytest.mark.parametrize(("template", "extra"), REPLY_TEMPLATES)
def test_reply_sms_when_rendered_then_gsm7_within_two_segments(
    renderer: MessageRenderer, template: str, extra: dict[str, object]
) -> None:
    context = {"clinic_name": LONG_VALUES["clinic_name"], "clinic_phone": "+44 (0)20 7946 0958"}
    sms = renderer.render_sms(template, {**context, **extra})
    assert (sms.encoding, sms.segments <= 2) == ("GSM-7", True)


def test_discreet_sms_when_rendered_then_the_first_line_says_only_that_there_is_a_message(
    renderer: MessageRenderer,
) -> None:
    clinic = str(LONG_VALUES["clinic_name"])
    for template, context in EVERY:
        body = renderer.render_sms(template, context).body
        first, _, rest = body.partition("\n")
        if context["discreet"]:
            assert first == f"{clinic}: A message from us.", (template, body)
            assert not REVEALING.search(first.removeprefix(clinic)), first
            assert rest  # the message itself follows
        else:
            assert first.startswith(f"{clinic}: Hi {LONG_VALUES['first_name']}")


# --- Safety content ------------------------------------------------------------------------


def _messages_naming_999(renderer: MessageRenderer) -> list[tuple[str, str, str, str, str]]:
    """(channel, template, occurrence, audience, text) of every message that names 999."""
    found = []
    for template, context in EVERY:
        where = (template, f"{context['day_number']}/{context['day_count']}", audience(context))
        sms = renderer.render_sms(template, context).body
        email = renderer.render_email(template, context)
        for channel, text in (("sms", sms), ("email", email.text), ("html", email.html)):
            if "999" in text:
                found.append((channel, *where, text))
    for template, extra in REPLY_TEMPLATES:
        context = {**LONG_VALUES, **extra}
        text = renderer.render_sms(template, context).body
        if "999" in text:
            found.append(("sms", template, "-", "reply", text))
    return found


def test_every_message_naming_999_lists_the_four_emergency_signs(
    renderer: MessageRenderer,
) -> None:
    found = _messages_naming_999(renderer)
    table: dict[tuple[str, str], dict[str, set[str]]] = {}
    for channel, template, occurrence, who, text in found:
        missing = [sign for sign, pattern in EMERGENCY_SIGNS.items() if not pattern.search(text)]
        assert not missing, (channel, template, occurrence, who, missing, text)
        row = table.setdefault((channel, template), {"occurrences": set(), "audiences": set()})
        row["occurrences"].add(occurrence)
        row["audiences"].add(who)
    # Printed with -s, for the record: every message naming 999, and what it lists.
    signs = " | ".join(EMERGENCY_SIGNS)
    print(f"\nchannel | template | occurrences | audiences | {signs}")
    for (channel, template), row in sorted(table.items()):
        occurrences = ",".join(sorted(row["occurrences"], key=lambda o: (len(o), o)))
        who = row["audiences"]
        if len(who) == 8:
            shown = "every audience"
        elif all("sms_only" in w for w in who) and len(who) == 4:
            shown = "SMS-only patients"
        else:
            shown = ";".join(sorted(who))
        print(
            f"{channel} | {template} | {occurrences} | {shown} | "
            + " | ".join("yes" for _ in EMERGENCY_SIGNS)
        )
    named = {template for _, template in table}
    # The first texts, the recap texts and the HELP answer name 999; so does every help box.
    assert {"welcome", "warning-signs", "daily-wear", "completion", "help"} <= named
    assert {("sms", "welcome"), ("sms", "warning-signs"), ("email", "keep-moving")} <= set(table)


def _sms_bodies(channels: tuple[str, ...], daily_days: int) -> list[tuple[str, int, str]]:
    """(local date, step, body) of every SMS planned for a patient treated on Thursday 26 March
    2026 at 14:30 UTC, rendered as compose would (SMS only: no email channel)."""
    treated = datetime(2026, 3, 26, 14, 30, tzinfo=UTC)
    zone = ZoneInfo("Europe/London")
    parameters = REGIMEN.resolve_parameters({"daily_days": daily_days})
    planned = plan(
        regimen=REGIMEN,
        treated_at=treated,
        timezone="Europe/London",
        parameters=parameters,
        channels=channels,  # type: ignore[arg-type]
        quiet=QUIET,
        recorded_at=treated,
    )
    instants = step_instants(
        regimen=REGIMEN, treated_at=treated, zone=zone, parameters=parameters, quiet=QUIET
    )
    renderer = MessageRenderer(TEMPLATES)
    out = []
    for item in sorted(planned, key=lambda p: p.due_utc):
        if item.channel != "sms" or item.state == "skipped":
            continue
        context = build_context(
            regimen=REGIMEN,
            patient_name="Ann Lee",
            clinic_name="Riverside Vein Clinic",
            clinic_phone="020 7946 0958",
            timezone="Europe/London",
            parameters=parameters,
            instants=instants,
            step=item.step,
            occurrence=item.occurrence,
            unsubscribe_url=None,
            sms_only="email" not in channels,
        )
        body = renderer.render_sms(item.template, context).body
        local = item.due_utc.astimezone(zone)
        out.append((local.date().isoformat(), item.step, body))
    return out


RECAP = re.compile(r"one leg", re.I)


@pytest.mark.parametrize(
    ("daily_days", "expected"),
    [
        (
            14,
            [
                ("2026-03-29", "continuous-end"),  # the 72 hours end at 15:30 BST on Sunday
                ("2026-04-05", "daily-wear"),  # day 7 of 14
                ("2026-04-13", "completion"),
            ],
        ),
        (
            7,
            [
                ("2026-03-29", "continuous-end"),
                ("2026-04-02", "daily-wear"),  # day 4 of 7
                ("2026-04-06", "completion"),
            ],
        ),
    ],
)
def test_sms_only_patient_gets_the_safety_recap_at_72_hours_mid_phase_and_completion(
    daily_days: int, expected: list[tuple[str, str]]
) -> None:
    bodies = _sms_bodies(("sms",), daily_days)
    treated_day = bodies[0][0]
    recaps = [(day, step) for day, step, body in bodies if day > treated_day and RECAP.search(body)]
    print(f"\nSMS-only recap days ({daily_days}-day phase): {recaps}")
    assert recaps == expected
    # The mid-phase and completion recaps name 999 with the four signs; the 72-hour one gives
    # the clot signs and the clinic's number (the 999 line does not fit there within 2 parts).
    for day, step, body in bodies:
        if (day, step) in expected[1:]:
            assert all(p.search(body) for p in EMERGENCY_SIGNS.values()), body
    # Day 0 (welcome and warning signs) names 999 with the four signs too.
    day0 = [body for day, _, body in bodies if day == treated_day]
    assert any("999" in body for body in day0)


def test_patient_with_email_too_gets_no_recap_in_later_texts() -> None:
    bodies = _sms_bodies(("sms", "email"), 14)
    treated_day = bodies[0][0]
    assert [s for day, s, body in bodies if day > treated_day and RECAP.search(body)] == []


def test_stocking_too_tight_advice_is_in_the_welcome_and_at_72_hours(
    renderer: MessageRenderer,
) -> None:
    for template, context in EVERY:
        if template not in ("welcome", "continuous-end"):
            continue
        sms = renderer.render_sms(template, context).body
        email = renderer.render_email(template, context).text
        for text in (sms, email):
            assert re.search(r"numb, cold or blue", text, re.I), text
            assert re.search(r"take (them|it|stockings|the stocking) off", text, re.I), text


def test_72_hour_message_reads_right_whenever_it_arrives(renderer: MessageRenderer) -> None:
    context = {**sample_context(regimen=REGIMEN, step="continuous-end"), **LONG_VALUES}
    sms = renderer.render_sms("continuous-end", context).body
    email = renderer.render_email("continuous-end", context)
    for text in (sms, email.text):
        assert "72 hours are up" in text
        assert f"up to and including {LONG_VALUES['daily_until']}" in text
        assert " end on " not in text  # not spoken of as still to come
    assert f"ended on {LONG_VALUES['continuous_end']}" in email.text


def test_facts_the_review_found_missing_are_there(renderer: MessageRenderer) -> None:
    warning = renderer.render_email("warning-signs", sample_context(regimen=REGIMEN, step="sun"))
    assert "1 patient in 10,000" in warning.text
    assert "brown or black skin" in warning.text
    last_sun = sample_context(regimen=REGIMEN, step="sun")
    assert "new ones can appear" in renderer.render_sms("sun", last_sun).body
    assert "will not come back" in renderer.render_email("sun", last_sun).text
    welcome = sample_context(regimen=REGIMEN, step="welcome")
    assert "sun" in renderer.render_sms("welcome", welcome).body
    assert "SUN" in renderer.render_email("welcome", welcome).text
    # The help box does not call itchy lumps an allergy next to "itching is normal".
    help_box = renderer.render_email("daily-wear", welcome).text.split("WHEN TO GET HELP")[1]
    assert "itchy lumps" not in help_box


def test_each_sun_message_says_something_new(renderer: MessageRenderer) -> None:
    for channel in ("sms", "email"):
        texts = []
        for occurrence in range(3):
            context = sample_context(regimen=REGIMEN, step="sun", occurrence=occurrence)
            if channel == "sms":
                texts.append(renderer.render_sms("sun", context).body)
            else:
                texts.append(renderer.render_email("sun", context).text)
        bodies = [set(t.split(". ")[1:-1]) for t in texts]  # sentences after the greeting
        for a in range(3):
            for b in range(a + 1, 3):
                assert not bodies[a] & bodies[b], (channel, bodies[a] & bodies[b])


@pytest.mark.parametrize(
    ("parameter", "phrase"),
    [
        ("walking_advice", "20-30 minutes"),
        ("walking_advice", "20 to 30 minutes"),
        ("washing_advice", "warm, not hot"),
        ("pain_relief_advice", "paracetamol"),
        ("lumpy_veins_advice", "lumpy and hard"),
    ],
)
def test_optional_advice_is_on_by_default_and_off_when_the_clinic_omits_it(
    renderer: MessageRenderer, parameter: str, phrase: str
) -> None:
    def texts(parameters: dict[str, object] | None) -> str:
        out = []
        for template, context in every_context(parameters):
            if context["discreet"] or context["email_reply"]:
                continue
            out.append(renderer.render_sms(template, context).body)
            out.append(renderer.render_email(template, context).text)
        return "\n".join(out)

    assert phrase in texts(None)
    assert phrase not in texts({parameter: "omit"})


# --- Delivery: Reply-To and the discreet choice ----------------------------------------------


def _compose(*, reply_to: str, discreet: bool | None, default: bool, channel: str) -> object:
    registry = RegimenRegistry.load(ROOT / "schedules")
    treated = datetime(2026, 3, 26, 14, 30, tzinfo=UTC)
    patient = Patient(
        id=1,
        public_id="p" * 32,
        name="Ann Lee",
        phone="+447700900123",
        email="ann@example.org",
        timezone="Europe/London",
        channels="sms,email",
        discreet=discreet,
        email_opted_out_at=None,
    )
    session = TreatmentSession(
        id=1,
        regimen_id=REGIMEN.id,
        treated_at=treated,
        recorded_at=treated,
        timezone="Europe/London",
        parameters={"daily_days": 14, "checkin_week": 10, "garment": "lower-leg"},  # older row
        channels="sms,email",
    )
    reminder = Reminder(id=7, step="checkin", occurrence=0, channel=channel, template="checkin")
    clinic = Clinic(
        name="Riverside Vein Clinic",
        phone="020 7946 0958",
        public_base_url="https://aftercare.example.org",
        email_from="aftercare@clinic.example",
        secret_key="k" * 40,
        email_reply_to=reply_to,
        discreet_default=default,
    )
    return compose(
        reminder=reminder,
        session=session,
        patient=patient,
        registry=registry,
        renderer=MessageRenderer(TEMPLATES),
        quiet=QUIET,
        clinic=clinic,
    )


def test_email_when_a_reply_mailbox_is_set_then_reply_to_and_an_invitation_to_reply() -> None:
    message = _compose(
        reply_to="nurses@clinic.example", discreet=None, default=False, channel="email"
    )
    assert message.headers["Reply-To"] == "nurses@clinic.example"  # type: ignore[attr-defined]
    assert "replying to this email" in message.text  # type: ignore[attr-defined]


def test_email_when_no_reply_mailbox_then_no_reply_to_and_no_invitation() -> None:
    message = _compose(reply_to="", discreet=None, default=False, channel="email")
    assert "Reply-To" not in message.headers  # type: ignore[attr-defined]
    assert "reply" not in message.text.lower().replace("reply 1", "")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("discreet", "default", "expected"),
    [(None, False, False), (None, True, True), (True, False, True), (False, True, False)],
)
def test_discreet_when_patient_choice_or_clinic_default_then_followed(
    discreet: bool | None, default: bool, expected: bool
) -> None:
    sms = _compose(reply_to="", discreet=discreet, default=default, channel="sms")
    email = _compose(reply_to="", discreet=discreet, default=default, channel="email")
    first_line = sms.body.split("\n")[0]  # type: ignore[attr-defined]
    assert (first_line == "Riverside Vein Clinic: A message from us.") is expected
    subject = email.subject  # type: ignore[attr-defined]
    assert (subject == "A message from Riverside Vein Clinic") is expected


def test_email_reply_to_setting_when_not_an_address_then_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="email_reply_to"):
        Settings(email_reply_to="nurses at clinic")
    assert Settings(email_reply_to=" nurses@clinic.example ").email_reply_to == (
        "nurses@clinic.example"
    )


@pytest.mark.parametrize(
    ("transport", "sender", "warns"),
    [
        ("twilio", "RiversideVC", True),
        ("twilio", "+447700900123", False),
        ("twilio", "+447700900123,+447700900124", False),
        ("twilio", "", False),
        ("console", "RiversideVC", False),
    ],
)
def test_sender_warning_when_alphanumeric_sender_then_patients_cannot_reply(
    transport: str, sender: str, warns: bool
) -> None:
    settings = Settings(sms_transport=transport, twilio_from=sender)  # type: ignore[arg-type]
    warning = settings.sender_warning()
    assert bool(warning) is warns
    if warning:
        assert "RiversideVC" in warning
        assert "reply" in warning


def test_check_when_sender_is_alphanumeric_then_it_warns_and_still_passes(
    aftercare: Aftercare,  # noqa: F811
) -> None:
    result = succeeded(
        aftercare(
            "check",
            AFTERCARE_SMS_TRANSPORT="twilio",
            AFTERCARE_TWILIO_FROM="RiversideVC",
            AFTERCARE_TWILIO_ACCOUNT_SID="AC" + "0" * 32,
            AFTERCARE_TWILIO_AUTH_TOKEN="t" * 32,
        )
    )
    assert "sms sender: WARNING AFTERCARE_TWILIO_FROM is the name 'RiversideVC'" in result.stdout
    plain = succeeded(aftercare("check"))
    assert "sms sender" not in plain.stdout


@pytest.mark.parametrize(
    ("flag", "stored"), [(None, None), ("--discreet", True), ("--no-discreet", False)]
)
def test_enrol_when_discreet_flag_given_then_stored_on_the_patient(
    aftercare: Aftercare,  # noqa: F811
    flag: str | None,
    stored: bool | None,
) -> None:
    succeeded(aftercare("migrate"))
    succeeded(aftercare(*enrol_args(), *([flag] if flag else [])))
    db = Database(aftercare.database_url)
    try:
        with db.session() as db_session:
            assert list(db_session.scalars(select(Patient.discreet))) == [stored]
    finally:
        db.dispose()


@pytest.mark.parametrize("choice", [True, False, None])
def test_api_enrol_when_patient_discreet_given_then_stored(
    api: Api,  # noqa: F811
    choice: bool | None,
) -> None:
    body = api.enrol(patient__discreet=choice)
    with api.rt.db.session() as s:
        assert s.get(Patient, body["patient_id"]).discreet is choice  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["yes", 1, "true"])
def test_api_enrol_when_discreet_is_not_a_boolean_then_422_naming_it_and_nothing_stored(
    api: Api,  # noqa: F811
    bad: object,
) -> None:
    response = api.client.post("/api/v1/sessions", json=session_body(patient__discreet=bad))
    assert response.status_code == 422, response.text
    assert ["body", "patient", "discreet"] in [e["loc"] for e in response.json()["detail"]]
    assert api.count(Patient) == 0


# --- Staff pages: the record form's choice, the dashboard's sender warning --------------------


@pytest.mark.parametrize(("value", "stored"), [("", None), ("yes", True), ("no", False)])
def test_record_form_when_discreet_chosen_then_stored_on_the_patient(
    pages: Pages,  # noqa: F811
    value: str,
    stored: bool | None,
) -> None:
    form = pages.client.get("/sessions/new").text
    assert '<select id="discreet" name="discreet"' in form
    assert "Clinic default (not discreet)" in form
    response = pages.enrol(discreet=value)
    assert response.status_code == 303, text_of(response)
    with pages.rt.db.session() as s:
        assert list(s.scalars(select(Patient.discreet))) == [stored]


def test_record_form_when_discreet_is_not_a_choice_then_refused_naming_it(
    pages: Pages,  # noqa: F811
) -> None:
    response = pages.enrol(discreet="maybe")
    assert response.status_code == 422
    assert "Discreet" in text_of(response)
    assert pages.count(Patient) == 0


def test_dashboard_when_sender_is_alphanumeric_then_warns_that_patients_cannot_reply(
    pages: Pages,  # noqa: F811
) -> None:
    assert "sender-warning" not in pages.client.get("/").text
    pages.rt.settings = pages.rt.settings.model_copy(
        update={"sms_transport": "twilio", "twilio_from": "RiversideVC"}
    )
    page = text_of(pages.client.get("/"))
    assert "Patients cannot reply to the SMS sender" in page
    assert "RiversideVC" in page
