"""The values a message template may use, built from a session's facts and its planned instants.

Pure: no database and no clock. Dates and times are written in the patient's own time zone, in
British style ("Sunday 29 March at 3:30pm"), without relying on the process locale.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from aftercare.messages.gsm import sms_encoding, survives_gsm7, to_gsm7
from aftercare.planning.planner import occurrences_of, step_instants
from aftercare.planning.quiet import QuietHours
from aftercare.regimens.model import Regimen

# The variables every message has; a regimen adds its parameters (by name, as their ``says``
# words) and its ``dates``.
BASE_KEYS = (
    "first_name",
    "clinic_name",
    "clinic_phone",
    "day_number",
    "day_count",
    "unsubscribe_url",
    "discreet",
    "sms_only",
    "email_reply",
)

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

# Long but realistic values, so that a template check with them is a worst case, not a best one.
SAMPLE_PATIENT_NAME = "Alexandrina-Kay Worthington"
SAMPLE_CLINIC_NAME = "Riverside Vein and Skin Clinic"
SAMPLE_CLINIC_PHONE = "+44 20 7946 0958"
SAMPLE_UNSUBSCRIBE_URL = "https://aftercare.example.org/unsubscribe/k3Jx9QvT2mWc8LpR4sYb6NdF"
# A Thursday afternoon, three days before the clocks go forward in the UK.
SAMPLE_TREATED_AT = datetime(2026, 3, 26, 14, 30, tzinfo=UTC)
# SMS templates are checked with the sample's first name as the longest one; a longer first
# name (in GSM-7 units) could push a reminder past its segment limit and so fail it.
MAX_SMS_FIRST_NAME = len(SAMPLE_PATIENT_NAME.split(maxsplit=1)[0])


def human_date(value: date) -> str:
    """A date as "Monday 30 March"."""
    return f"{_DAYS[value.weekday()]} {value.day} {_MONTHS[value.month - 1]}"


def human_datetime(value: datetime) -> str:
    """A local date and time as "Sunday 29 March at 11:30pm" (00:00 is the previous midnight)."""
    if value.hour == 0 and value.minute == 0:
        # "Monday at midnight" is read as the end of Monday, so name the day that is ending.
        return f"{human_date(value.date() - timedelta(days=1))} at midnight"
    if value.hour == 12 and value.minute == 0:
        return f"{human_date(value.date())} at midday"
    hour = value.hour % 12 or 12
    suffix = "am" if value.hour < 12 else "pm"
    clock = f"{hour}{suffix}" if value.minute == 0 else f"{hour}:{value.minute:02d}{suffix}"
    return f"{human_date(value.date())} at {clock}"


# What a link looks like once in GSM-7 (where a fullwidth full stop or a one-dot leader is a
# plain dot): a dot between letters or digits or before a top-level domain ("bit.ly", "x.co.uk",
# "-.com"), a slash, an at sign, a scheme's colon, or "www".
_LINK_SHAPED = re.compile(r"[^\W_]\.[^\W_]|\.[^\W\d_]{2}|[/\\@:]|www", re.IGNORECASE)


def is_link_shaped(text: str) -> bool:
    """Whether ``text``, as an SMS would carry it, could be read (or made clickable) as a link."""
    return bool(_LINK_SHAPED.search(to_gsm7(text)))


def sms_first_name(first_name: str) -> str:
    """The first name as an SMS greets the patient, or "there" ("Hi there") when it cannot be
    sent whole: letters GSM-7 has no form for would be dropped ("李" became "Hi ."), it looks
    like a link (an SMS from the clinic must never carry one the clinic did not write), or it is
    longer than the templates were checked with (it could stop a reminder going out)."""
    if not survives_gsm7(first_name) or is_link_shaped(first_name):
        return "there"
    if sms_encoding(to_gsm7(first_name)).units > MAX_SMS_FIRST_NAME:
        return "there"
    return first_name


def context_keys(regimen: Regimen) -> tuple[str, ...]:
    """Every variable a template of ``regimen`` may use."""
    return (*BASE_KEYS, *regimen.parameters, *regimen.dates)


def regimen_words(
    *,
    regimen: Regimen,
    parameters: Mapping[str, int | str],
    instants: Mapping[str, list[datetime]],
    zone: ZoneInfo,
) -> dict[str, object]:
    """The regimen's own variables: each parameter by name (as the words its ``says`` gives a
    choice), and each of its ``dates`` written out in the patient's zone."""
    words: dict[str, object] = {}
    for name, parameter in regimen.parameters.items():
        value = parameters.get(name, parameter.default)
        words[name] = parameter.words(value)
    for name, ref in regimen.dates.items():
        series = occurrences_of(instants, ref.step)
        local = series[0 if ref.which == "first" else -1].astimezone(zone)
        words[name] = human_datetime(local) if ref.show == "date_time" else human_date(local.date())
    return words


def build_context(
    *,
    regimen: Regimen,
    patient_name: str,
    clinic_name: str,
    clinic_phone: str,
    timezone: str,
    parameters: Mapping[str, int | str],
    instants: Mapping[str, list[datetime]],
    step: str,
    occurrence: int,
    unsubscribe_url: str | None,
    discreet: bool = False,
    sms_only: bool = False,
    email_reply: bool = False,
) -> dict[str, object]:
    """The template context for one occurrence of one step (``instants`` from step_instants).

    ``discreet``: the first line says only that there is a message (a lock screen shows it);
    ``sms_only``: the patient gets no emails, so some SMS repeat the safety advice;
    ``email_reply``: emails may invite a reply (a read Reply-To mailbox is set). Every other
    regimen parameter is there under its own name (optional advice the clinic switches off).
    """
    zone = ZoneInfo(timezone)
    count = len(occurrences_of(instants, step))
    if not 0 <= occurrence < count:
        raise ValueError(f"occurrence {occurrence} of step {step!r} is outside 0..{count - 1}")
    words = patient_name.split()
    context: dict[str, object] = {
        "first_name": words[0] if words else "there",
        "clinic_name": clinic_name,
        "clinic_phone": clinic_phone,
        **regimen_words(regimen=regimen, parameters=parameters, instants=instants, zone=zone),
        "day_number": occurrence + 1,
        "day_count": count,
        "unsubscribe_url": unsubscribe_url or "",
        "discreet": discreet,
        "sms_only": sms_only,
        "email_reply": email_reply,
    }
    context.update({k: v for k, v in parameters.items() if k not in context})
    return context


def sample_context(
    *,
    regimen: Regimen,
    timezone: str = "Europe/London",
    step: str | None = None,
    occurrence: int | None = None,
    patient_name: str = SAMPLE_PATIENT_NAME,
    clinic_name: str = SAMPLE_CLINIC_NAME,
    clinic_phone: str = SAMPLE_CLINIC_PHONE,
    parameters: Mapping[str, object] | None = None,
    discreet: bool = False,
    sms_only: bool = False,
    email_reply: bool = False,
) -> dict[str, object]:
    """A realistic context for checking templates: the regimen's defaults, long names, and by
    default the last occurrence of ``step`` (two-digit day numbers cost the most); without a
    step, the step with the longest series."""
    resolved = regimen.resolve_parameters(dict(parameters or {}))
    instants = step_instants(
        regimen=regimen,
        treated_at=SAMPLE_TREATED_AT,
        zone=ZoneInfo(timezone),
        parameters=resolved,
        quiet=QuietHours.parse("21:00-08:00"),
    )
    if step is None:
        step = max(regimen.steps, key=lambda s: len(instants[s.id])).id
    last = len(occurrences_of(instants, step)) - 1
    return build_context(
        regimen=regimen,
        patient_name=patient_name,
        clinic_name=clinic_name,
        clinic_phone=clinic_phone,
        timezone=timezone,
        parameters=resolved,
        instants=instants,
        step=step,
        occurrence=last if occurrence is None else occurrence,
        unsubscribe_url=SAMPLE_UNSUBSCRIBE_URL,
        discreet=discreet,
        sms_only=sms_only,
        email_reply=email_reply,
    )
