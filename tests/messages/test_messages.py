"""The messages layer: SMS encoding, template rendering, the template context, and every
patient-facing template of the micro-sclerotherapy regimen."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aftercare.messages.context import (
    build_context,
    human_datetime,
    sample_context,
    sms_first_name,
)
from aftercare.messages.gsm import SmsEncoding, sms_encoding, to_gsm7
from aftercare.messages.render import (
    MessageRenderer,
    RenderedSms,
    TemplateError,
    check_templates,
)
from aftercare.planning.planner import step_instants
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.loader import load_regimen
from aftercare.regimens.model import Regimen

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
REGIMEN = load_regimen(ROOT / "schedules" / "micro-sclerotherapy.yaml")

# Each step with the occurrences whose wording differs: the first and, for repeats, the last.
STEP_OCCURRENCES = [
    pytest.param(step.id, step.template, occurrence, id=f"{step.id}-{occurrence}")
    for step in REGIMEN.steps
    for occurrence in ((0, None) if step.repeat else (0,))
]

# Worst realistic lengths: a 30-character clinic name, a 15-character first name, the longest
# English day and month names, a phone number written out in full.
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


@pytest.fixture
def renderer() -> MessageRenderer:
    return MessageRenderer(TEMPLATES)


def write_templates(root: Path, files: dict[str, str]) -> MessageRenderer:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return MessageRenderer(root)


def sample(step: str, occurrence: int | None, regimen: Regimen = REGIMEN) -> dict[str, object]:
    return sample_context(regimen=regimen, step=step, occurrence=occurrence)


# --- GSM-7 and UCS-2 -------------------------------------------------------------------------


def test_sms_encoding_when_160_basic_characters_then_one_gsm7_segment() -> None:
    assert sms_encoding("a" * 160) == SmsEncoding("GSM-7", 160, 1)


def test_sms_encoding_when_161_basic_characters_then_two_segments() -> None:
    result = sms_encoding("a" * 161)
    assert (result.encoding, result.units, result.segments) == ("GSM-7", 161, 2)


def test_sms_encoding_when_multipart_then_153_septets_per_segment() -> None:
    assert sms_encoding("a" * 306).segments == 2
    assert sms_encoding("a" * 307).segments == 3
    assert sms_encoding("a" * 459).segments == 3
    assert sms_encoding("a" * 460).segments == 4


@pytest.mark.parametrize("char", list("^{}\\[~]|€\f"))
def test_sms_encoding_when_extension_character_then_it_costs_two_septets(char: str) -> None:
    result = sms_encoding(char * 80)
    assert (result.encoding, result.units, result.segments) == ("GSM-7", 160, 1)
    assert sms_encoding(char * 81).segments == 2


def test_sms_encoding_when_pound_sign_and_accents_then_still_gsm7() -> None:
    result = sms_encoding("£395 a session, café Ñ Ü à")
    assert result.encoding == "GSM-7"
    assert result.units == len("£395 a session, café Ñ Ü à")


def test_sms_encoding_when_extension_pair_meets_a_part_boundary_then_it_moves_whole() -> None:
    # 306 septets would fit two parts, but the euro's escape pair cannot straddle them.
    text = "a" * 152 + "€" + "a" * 152
    result = sms_encoding(text)
    assert (result.units, result.segments) == (306, 3)


def test_sms_encoding_when_a_non_gsm_character_then_ucs2_with_70_in_one_segment() -> None:
    assert sms_encoding("a" * 69 + "’") == SmsEncoding("UCS-2", 70, 1)
    assert sms_encoding("a" * 70 + "’").segments == 2


def test_sms_encoding_when_ucs2_multipart_then_67_units_per_segment() -> None:
    assert sms_encoding("–" * 134).segments == 2
    assert sms_encoding("–" * 135).segments == 3


def test_sms_encoding_when_emoji_then_it_counts_two_utf16_units() -> None:
    result = sms_encoding("ok 👍")
    assert (result.encoding, result.units) == ("UCS-2", 5)


def test_to_gsm7_when_name_has_accents_and_curly_quotes_then_close_gsm_stand_ins() -> None:
    assert to_gsm7("Zoë O’Brien – Łukasz") == "Zoe O'Brien - Lukasz"
    assert to_gsm7("José Müller") == "José Müller"


# --- Context ---------------------------------------------------------------------------------


def test_sample_context_when_uk_clocks_change_then_local_times_follow_them() -> None:
    context = sample("daily-wear", 0)
    # Treated at 14:30 GMT on Thursday 26 March 2026; 72 hours later the UK is on BST.
    assert context["continuous_end"] == "Sunday 29 March at 3:30pm"
    assert context["daily_start"] == "Monday 30 March"
    assert context["daily_until"] == "Sunday 12 April"
    assert context["checkin_date"] == "Thursday 4 June"
    assert (context["day_number"], context["day_count"]) == (1, 14)
    assert (context["daily_days"], context["checkin_week"]) == (14, 10)


def _instants(parameters: dict[str, int | str]) -> dict[str, list[datetime]]:
    return step_instants(
        regimen=REGIMEN,
        treated_at=datetime(2026, 3, 26, 14, 30, tzinfo=UTC),
        zone=ZoneInfo("Europe/London"),
        parameters=parameters,
        quiet=QuietHours.parse("21:00-08:00"),
    )


def test_build_context_when_name_empty_and_no_unsubscribe_then_friendly_defaults() -> None:
    parameters = REGIMEN.resolve_parameters({"garment": "full-leg", "daily_days": 7})
    context = build_context(
        regimen=REGIMEN,
        patient_name="  ",
        clinic_name="Clinic",
        clinic_phone="01234 567890",
        timezone="Europe/London",
        parameters=parameters,
        instants=_instants(parameters),
        step="sun",
        occurrence=2,
        unsubscribe_url=None,
    )
    assert context["first_name"] == "there"
    assert context["unsubscribe_url"] == ""
    assert context["garment"] == "full-length compression stockings"
    assert (context["day_number"], context["day_count"]) == (3, 3)
    assert context["daily_until"] == "Sunday 5 April"


def test_build_context_when_occurrence_out_of_range_then_value_error() -> None:
    parameters = REGIMEN.resolve_parameters(None)
    with pytest.raises(ValueError, match="occurrence 1"):
        build_context(
            regimen=REGIMEN,
            patient_name="Ann Lee",
            clinic_name="Clinic",
            clinic_phone="01234 567890",
            timezone="Europe/London",
            parameters=parameters,
            instants=_instants(parameters),
            step="welcome",
            occurrence=1,
            unsubscribe_url=None,
        )


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (datetime(2026, 3, 29, 23, 30), "Sunday 29 March at 11:30pm"),
        (datetime(2026, 3, 30, 9, 0), "Monday 30 March at 9am"),
        (datetime(2026, 3, 30, 12, 0), "Monday 30 March at midday"),
        (datetime(2026, 3, 30, 0, 0), "Sunday 29 March at midnight"),
        (datetime(2026, 3, 30, 0, 5), "Monday 30 March at 12:05am"),
    ],
)
def test_human_datetime_when_formatted_then_british_twelve_hour_style(
    local: datetime, expected: str
) -> None:
    assert human_datetime(local) == expected


# --- Every regimen template ------------------------------------------------------------------


def test_regimen_when_templates_listed_then_each_has_sms_and_email_files() -> None:
    for step in REGIMEN.steps:
        for name in (
            f"sms/{step.template}.txt",
            f"email/{step.template}.subject.txt",
            f"email/{step.template}.txt",
            f"email/{step.template}.html",
        ):
            assert (TEMPLATES / name).is_file(), name


@pytest.mark.parametrize(("step", "template", "occurrence"), STEP_OCCURRENCES)
def test_template_when_rendered_with_sample_context_then_sms_and_email_are_complete(
    renderer: MessageRenderer, step: str, template: str, occurrence: int | None
) -> None:
    context = sample(step, occurrence)
    sms = renderer.render_sms(template, context)
    email = renderer.render_email(template, context)
    assert sms.body.startswith(f"{context['clinic_name']}: ")
    assert sms.encoding == "GSM-7"
    assert sms.segments <= 2
    assert email.subject
    assert "\n" not in email.subject
    assert len(email.subject) <= 60
    assert email.text.rstrip().endswith(str(context["unsubscribe_url"]))
    assert '<html lang="en">' in email.html
    assert "<h1" in email.html
    assert f'href="{context["unsubscribe_url"]}"' in email.html
    assert str(context["clinic_phone"]) in email.html


@pytest.mark.parametrize(("step", "template", "occurrence"), STEP_OCCURRENCES)
def test_sms_when_names_and_dates_are_as_long_as_realistic_then_within_two_gsm7_segments(
    renderer: MessageRenderer, step: str, template: str, occurrence: int | None
) -> None:
    context = {**sample(step, occurrence), **LONG_VALUES}
    sms = renderer.render_sms(template, context)
    assert sms_encoding(sms.body).encoding == "GSM-7"
    assert sms_encoding(sms.body).units <= 306
    assert sms.segments <= 2


@pytest.mark.parametrize("template", ["welcome", "warning-signs"])
def test_first_messages_when_rendered_then_they_say_when_to_call_999(
    renderer: MessageRenderer, template: str
) -> None:
    context = sample(template, 0)
    assert "999" in renderer.render_sms(template, context).body
    assert "999" in renderer.render_email(template, context).text


@pytest.mark.parametrize("template", ["welcome", "keep-moving", "continuous-end", "daily-wear"])
def test_first_week_emails_when_rendered_then_they_carry_a_when_to_get_help_box(
    renderer: MessageRenderer, template: str
) -> None:
    email = renderer.render_email(template, sample("daily-wear", 0))
    assert "WHEN TO GET HELP" in email.text
    assert "When to get help</h2>" in email.html
    assert "NHS 111" in email.text


def test_daily_sms_when_last_day_then_it_says_so(renderer: MessageRenderer) -> None:
    first, last = sample("daily-wear", 0), sample("daily-wear", None)
    assert "last day" not in renderer.render_sms("daily-wear", first).body
    assert "last day" in renderer.render_sms("daily-wear", last).body
    assert "tomorrow morning" in renderer.render_sms("daily-off", sample("daily-off", 0)).body
    assert "last day" in renderer.render_sms("daily-off", sample("daily-off", None)).body


def test_checkin_sms_when_rendered_then_it_offers_the_three_replies(
    renderer: MessageRenderer,
) -> None:
    body = renderer.render_sms("checkin", sample("checkin", 0)).body
    assert "about 10 weeks" in body
    for answer in ("Reply 1", "2 if", "3 if"):
        assert answer in body


def test_check_templates_when_all_regimen_templates_are_good_then_no_faults(
    renderer: MessageRenderer,
) -> None:
    names = [step.template for step in REGIMEN.steps]
    report = check_templates(renderer, names, sample("daily-wear", None))
    assert report.faults == []
    assert report.ok
    assert set(report.sms) == set(names)
    assert all(isinstance(sms, RenderedSms) and sms.segments <= 2 for sms in report.sms.values())


# --- Escaping --------------------------------------------------------------------------------


def test_email_when_first_name_is_hostile_then_html_escapes_and_text_does_not(
    renderer: MessageRenderer,
) -> None:
    context = {**sample("welcome", 0), "first_name": "<script>alert(1)</script>"}
    email = renderer.render_email("welcome", context)
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert "Hi <script>alert(1)</script>," in email.text
    assert "&lt;" not in email.text


def test_email_subject_when_a_value_holds_a_newline_then_it_stays_one_line(
    tmp_path: Path,
) -> None:
    renderer = write_templates(
        tmp_path,
        {
            "email/x.subject.txt": "Hello {{ first_name }}\n",
            "email/x.txt": "Body\n",
            "email/x.html": "<p>Body</p>\n",
        },
    )
    email = renderer.render_email("x", {"first_name": "Ann\r\nBcc: someone@example.org"})
    assert email.subject == "Hello Ann Bcc: someone@example.org"


def test_sms_when_patient_name_has_accents_then_it_is_sent_as_gsm7(
    renderer: MessageRenderer,
) -> None:
    context = {**sample("keep-moving", 0), "first_name": "Zoë", "clinic_name": "Clínica Łódź"}
    sms = renderer.render_sms("keep-moving", context)
    assert sms.encoding == "GSM-7"
    assert sms.body.startswith("Clinica Lodz: Hi Zoe.")
    assert "Hi Zoë," in renderer.render_email("keep-moving", context).text


def test_sms_when_template_has_paragraphs_then_lines_join_and_paragraphs_stay_apart(
    tmp_path: Path,
) -> None:
    renderer = write_templates(
        tmp_path, {"sms/x.txt": "  Hello\n   {{ first_name }},\tthere.\n\n\n  Bye.  \n"}
    )
    assert renderer.render_sms("x", {"first_name": "Ann"}).body == "Hello Ann, there.\nBye."


# --- Faults become TemplateError -------------------------------------------------------------


def test_sms_when_template_uses_an_undefined_variable_then_template_error_names_file_and_line(
    tmp_path: Path,
) -> None:
    renderer = write_templates(tmp_path, {"sms/x.txt": "Hello\n{{ first_nmae }}\n"})
    with pytest.raises(TemplateError) as caught:
        renderer.render_sms("x", {"first_name": "Ann"})
    assert caught.value.file == str(tmp_path / "sms" / "x.txt")
    assert caught.value.line == 2
    assert "first_nmae" in caught.value.reason
    assert str(caught.value).startswith(f"{tmp_path / 'sms' / 'x.txt'}:2: ")


def test_email_when_the_layout_uses_an_undefined_variable_then_the_layout_is_named(
    tmp_path: Path,
) -> None:
    renderer = write_templates(
        tmp_path,
        {
            "email/_layout.html": "<p>{{ clinic_nmae }}</p>{% block body %}{% endblock %}",
            "email/x.subject.txt": "Hi",
            "email/x.txt": "Hi",
            "email/x.html": '{% extends "email/_layout.html" %}{% block body %}B{% endblock %}',
        },
    )
    with pytest.raises(TemplateError) as caught:
        renderer.render_email("x", {})
    assert caught.value.file == str(tmp_path / "email" / "_layout.html")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ first_name.__class__.__subclasses__() }}",
        "{% set items = [] %}{{ items.append(1) }}",
    ],
)
def test_sms_when_template_attempts_a_sandbox_escape_then_template_error(
    tmp_path: Path, source: str
) -> None:
    renderer = write_templates(tmp_path, {"sms/x.txt": source})
    with pytest.raises(TemplateError) as caught:
        renderer.render_sms("x", {"first_name": "Ann"})
    assert caught.value.file == str(tmp_path / "sms" / "x.txt")
    assert "sandbox" in caught.value.reason


def test_sms_when_template_has_a_syntax_error_then_template_error_names_the_line(
    tmp_path: Path,
) -> None:
    renderer = write_templates(tmp_path, {"sms/x.txt": "Hello\n\n{% if %}\n"})
    with pytest.raises(TemplateError) as caught:
        renderer.render_sms("x", {})
    assert caught.value.file == str(tmp_path / "sms" / "x.txt")
    assert caught.value.line == 3


def test_sms_when_template_is_missing_then_template_error_names_the_file(tmp_path: Path) -> None:
    renderer = MessageRenderer(tmp_path)
    with pytest.raises(TemplateError, match="template not found") as caught:
        renderer.render_sms("nope", {})
    assert caught.value.file == str(tmp_path / "sms" / "nope.txt")


def test_sms_when_template_divides_by_zero_then_template_error(tmp_path: Path) -> None:
    renderer = write_templates(tmp_path, {"sms/x.txt": "{{ 1 / 0 }}"})
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        renderer.render_sms("x", {})


def test_sms_when_template_text_is_not_gsm7_then_template_error_names_encoding(
    tmp_path: Path,
) -> None:
    renderer = write_templates(tmp_path, {"sms/x.txt": "It’s fine – really"})
    with pytest.raises(TemplateError) as caught:
        renderer.render_sms("x", {})
    assert "UCS-2" in caught.value.reason
    assert "U+2019" in caught.value.reason
    assert "U+2013" in caught.value.reason


def test_sms_when_body_needs_three_segments_then_template_error_names_the_count(
    tmp_path: Path,
) -> None:
    renderer = write_templates(tmp_path, {"sms/x.txt": "a" * 307})
    with pytest.raises(TemplateError, match="GSM-7, 307 units in 3 segment"):
        renderer.render_sms("x", {})
    assert MessageRenderer(tmp_path, max_sms_segments=3).render_sms("x", {}).segments == 3


def test_check_templates_when_some_templates_are_broken_then_every_fault_is_listed(
    tmp_path: Path,
) -> None:
    renderer = write_templates(
        tmp_path,
        {
            "sms/good.txt": "Hi {{ first_name }}",
            "email/good.subject.txt": "Hi",
            "email/good.txt": "Hi {{ first_name }}",
            "email/good.html": "<p>Hi {{ first_name }}</p>",
            "sms/bad.txt": "Hi {{ last_name }}",
        },
    )
    report = check_templates(renderer, ["good", "bad", "good"], {"first_name": "Ann"})
    assert not report.ok
    assert report.sms == {"good": RenderedSms(body="Hi Ann", encoding="GSM-7", segments=1)}
    assert len(report.faults) == 2
    assert any("sms/bad.txt" in fault and "last_name" in fault for fault in report.faults)
    assert any("bad.subject.txt" in fault for fault in report.faults)


# --- Names in SMS: greeted only when the name survives GSM-7 whole and is not a link ---------

GREETINGS = [
    ("李 Wang", "there"),  # 李 has no GSM-7 form: it was dropped ("Hi .")
    ("ЈОНN Smith", "there"),  # Cyrillic look-alikes were dropped ("Hi N.")
    ("Ανna Smith", "there"),  # a Greek capital alpha
    ("bit.ly/x9z Smith", "there"),
    ("evil.com", "there"),
    ("example.co.uk", "there"),
    ("x@example", "there"),
    ("wwwexample", "there"),
    ("https:x", "there"),
    ("tel:07700900123", "there"),
    ("a/b", "there"),
    ("bit\uff0ely", "there"),  # a fullwidth full stop is a dot in GSM-7
    ("bit\u3002ly", "there"),  # an ideographic full stop has no GSM-7 form
    ("J.R. Smith", "there"),
    ("😀 Smith", "there"),
    ("Zoë Smith", "Zoe"),
    ("José Müller", "José"),
    ("Anne-Marie O'Brien", "Anne-Marie"),
    ("Ørsted", "Ørsted"),
    ("Łukasz", "Lukasz"),
    ("Ｓａｍ", "Sam"),  # fullwidth letters have plain forms
    ("O’Neill", "O'Neill"),
]


@pytest.mark.parametrize(("name", "greeted"), GREETINGS, ids=[g[0] for g in GREETINGS])
def test_sms_greets_by_name_only_when_the_name_survives_gsm7_and_is_not_link_shaped(
    renderer: MessageRenderer, name: str, greeted: str
) -> None:
    first = str(sample_context(regimen=REGIMEN, step="welcome", patient_name=name)["first_name"])
    context = {**sample("welcome", 0), "first_name": sms_first_name(first)}
    sms = renderer.render_sms("welcome", context)
    assert sms.body.startswith(f"Riverside Vein and Skin Clinic: Hi {greeted}. Wear")


@pytest.mark.parametrize("name", ["李", "bit.ly/x9z"])
@pytest.mark.parametrize(("step", "template", "occurrence"), STEP_OCCURRENCES)
def test_every_sms_without_the_name_still_greets_and_reads_well(
    renderer: MessageRenderer, name: str, step: str, template: str, occurrence: int | None
) -> None:
    context = {**sample(step, occurrence), "first_name": sms_first_name(name)}
    body = renderer.render_sms(template, context).body
    assert name not in body
    assert not re.search(r": (Hi|Good morning|Well done) ?[.,]", body), body
    assert not re.search(r": (Good morning|Well done) there", body), body  # "Hi there" reads
    assert "  " not in body


_LINK_PIECES = st.sampled_from(
    ["bit.ly", "/", "@", "www", "http:", "https://", ".com", ".io", "\uff0e", "\u2024", "x.y"]
)
_NAME_TEXT = st.text(
    alphabet=st.characters(categories=("L", "M", "N", "P", "S", "Zs"), exclude_characters="\r\n"),
    min_size=1,
    max_size=16,
)
_NAMES = st.one_of(
    _NAME_TEXT,
    st.builds(lambda a, link, b: a + link + b, _NAME_TEXT, _LINK_PIECES, _NAME_TEXT),
    st.sampled_from([g[0] for g in GREETINGS]),
)
_LINK_SHAPE = re.compile(r"[/@:\\]|www|[^\W_]\.[^\W_]|\.[^\W\d_]{2}", re.IGNORECASE)


@given(name=_NAMES)
@settings(max_examples=400, deadline=None)
def test_sms_greeting_is_the_whole_name_or_none_and_never_a_link(name: str) -> None:
    words = name.split()
    if not words:
        return
    first = words[0]
    greeting = sms_first_name(first)
    body = (
        MessageRenderer(TEMPLATES)
        .render_sms("welcome", {**sample("welcome", 0), "first_name": greeting})
        .body
    )
    assert body.startswith(f"Riverside Vein and Skin Clinic: Hi {to_gsm7(greeting)}. Wear")
    if greeting == "there":
        return
    assert greeting == first
    # Every character of the name is still there in GSM-7 (as itself or a close stand-in) ...
    assert all(to_gsm7(c) for c in unicodedata.normalize("NFC", first))
    # ... and what the patient reads is not a link.
    assert not _LINK_SHAPE.search(to_gsm7(first))
