"""The "Record a session" form: its raw values, where each error belongs, and the check of the
fields that decide the timeline (pure: nothing is stored)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Final, TypeVar
from zoneinfo import ZoneInfo

from starlette.datastructures import FormData

from aftercare.planning.planner import PlannedReminder, plan
from aftercare.regimens.model import ParameterError, Regimen
from aftercare.runtime import Runtime
from aftercare.sessions.service import MAX_FUTURE, SessionRequest
from aftercare.validation import (
    FieldError,
    Loc,
    ValidationFailed,
    clean_channels,
    clean_timezone,
)
from aftercare.web.pages.auth import field as text_field
from aftercare.web.pages.regimen import typed_zone

CONTRAINDICATIONS: Final = (
    ("no-dvt", "No history of deep vein thrombosis (DVT) or pulmonary embolism"),
    ("not-pregnant", "Not pregnant or breastfeeding"),
    ("no-travel", "No flight or long period of immobility planned within the next 2 weeks"),
    ("no-deep-disease", "No untreated varicose veins from deeper venous disease"),
)
LABELS: Final = {
    "name": "Patient name",
    "phone": "Mobile phone",
    "email": "Email address",
    "timezone": "Time zone",
    "channel-sms": "Send by",
    "treated_date": "Treatment date and time",
    "regimen": "Treatment",
    "consent": "Consent",
    "contra-no-dvt": "Contraindication checklist",
    "patient_choice": "Existing patient",
}
# The service's wording is for API clients; staff get an instruction.
INSTEAD: Final = {
    "consent": "Confirm that the patient agrees to receive aftercare messages",
    "contra-no-dvt": "Confirm all four contraindication checks with the patient",
    "patient_choice": (
        "This may be a patient you already know: choose them below, or choose a new patient"
    ),
}
_T = TypeVar("_T")

# A row id as a form sends it (at most 2**31 - 1).
_ID: Final = re.compile(r"[1-9][0-9]{0,8}")
# The form's fields top to bottom ("param-" stands for each regimen parameter): the error
# summary lists errors in this order, as a reader meets the fields.
FORM_ORDER: Final = (
    "name",
    "phone",
    "email",
    "timezone",
    "channel-sms",
    "patient_choice",
    "regimen",
    "treated_date",
    "param-",
    "contra-no-dvt",
    "consent",
)


def form_position(fid: str) -> int:
    """Where field ``fid`` sits on the form (unknown ids last)."""
    key = "param-" if fid.startswith("param-") else fid
    return FORM_ORDER.index(key) if key in FORM_ORDER else len(FORM_ORDER)


# Fields that decide the timeline: their errors are shown by "Preview" too.
TIMING: Final = frozenset({"timezone", "channel-sms", "treated_date", "regimen"})


@dataclass
class EnrolForm:
    """The raw values of the form, kept as typed so the page can show them again."""

    name: str = ""
    phone: str = ""
    email: str = ""
    timezone: str = ""
    channels: list[str] = field(default_factory=lambda: ["sms", "email"])
    treated_date: str = ""
    treated_time: str = ""
    regimen: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    consent: bool = False
    contra: list[str] = field(default_factory=list)
    # A course of treatment: "" (not chosen yet), "new", or a known patient's id.
    patient_choice: str = ""
    # The booking_request flag this session answers, if any (its id).
    flag: str = ""
    # Discreet messages: "" (the clinic's default), "yes" or "no".
    discreet: str = ""

    @property
    def chosen_patient_id(self) -> int | None:
        return int(self.patient_choice) if _ID.fullmatch(self.patient_choice) else None

    @property
    def flag_id(self) -> int | None:
        return int(self.flag) if _ID.fullmatch(self.flag) else None

    @classmethod
    def parse(cls, form: FormData) -> EnrolForm:
        return cls(
            name=text_field(form, "name", limit=300),
            phone=text_field(form, "phone", limit=60),
            email=text_field(form, "email", limit=300),
            timezone=typed_zone(text_field(form, "timezone", limit=100).strip()),
            channels=[c for c in form.getlist("channels") if isinstance(c, str)][:4],
            treated_date=text_field(form, "treated_date", limit=40).strip(),
            treated_time=text_field(form, "treated_time", limit=40).strip(),
            regimen=text_field(form, "regimen", limit=100),
            parameters={
                key.removeprefix("param-"): value[:100]
                for key, value in form.multi_items()
                if key.startswith("param-") and isinstance(value, str) and value
            },
            consent=text_field(form, "consent") == "yes",
            contra=[c for c in form.getlist("contra") if isinstance(c, str)][:10],
            patient_choice=text_field(form, "patient_choice", limit=12).strip(),
            flag=text_field(form, "flag", limit=12).strip(),
            discreet=text_field(form, "discreet", limit=12).strip(),
        )

    @property
    def discreet_choice(self) -> object:
        """The discreet field for SessionRequest: True, False, None, or the text (refused)."""
        return {"": None, "yes": True, "no": False}.get(self.discreet, self.discreet)


def field_id(loc: Loc) -> str:
    """The form element that an error's ``loc`` points at."""
    head = str(loc[0]) if loc else ""
    if head == "patient" and len(loc) > 1:
        name = str(loc[1])
        return "channel-sms" if name == "channels" else name
    if head == "treated_at":
        return "treated_date"
    if head == "parameters":
        return f"param-{loc[1]}" if len(loc) > 1 else "regimen"
    if head == "contraindications_checked":
        return "contra-" + CONTRAINDICATIONS[0][0]
    return head


def _parse_date(text: str) -> date | None:
    for pattern in ("%Y-%m-%d", "%d/%m/%Y", "%d/%m/%y"):
        try:
            return datetime.strptime(text, pattern).date()  # noqa: DTZ007 - a date alone
        except ValueError:
            continue
    return None


def _parse_time(text: str) -> time | None:
    """``14:30``, ``9:30`` or ``09.30`` (24-hour clock); None for anything else."""
    for pattern in ("%H:%M", "%H.%M", "%H:%M:%S"):
        try:
            return datetime.strptime(text, pattern).time()  # noqa: DTZ007 - a time of day alone
        except ValueError:
            continue
    return None


@dataclass
class Checked:
    """What the form's values mean: the treatment instant, the regimen and each error."""

    errors: list[FieldError]
    treated_at: datetime | None = None
    regimen: Regimen | None = None


def check_timing(
    values: EnrolForm, rt: Runtime, now: datetime
) -> tuple[Checked, list[PlannedReminder]]:
    """Check the fields that decide the timeline and plan it (pure: nothing is stored)."""
    errors: list[FieldError] = []
    checked = Checked(errors)
    zone = _collect(errors, lambda: clean_timezone(values.timezone, ("patient", "timezone")))
    channels = _collect(errors, lambda: clean_channels(values.channels, ("patient", "channels")))
    checked.treated_at = _treated_at(values, zone, now, errors)
    checked.regimen, parameters = _regimen(values, rt, errors)
    if errors or checked.regimen is None or checked.treated_at is None or not zone or not channels:
        return checked, []
    planned = plan(
        regimen=checked.regimen,
        treated_at=checked.treated_at,
        timezone=zone,
        parameters=parameters,
        channels=channels,
        quiet=rt.quiet,
        recorded_at=max(now, checked.treated_at),
    )
    # As enrolment refuses it: only the catch-up-always steps (welcome, warnings) would be left.
    always = {s.id for s in checked.regimen.steps if s.catch_up == "always"}
    if all(p.state == "skipped" or p.step in always for p in planned):
        errors.append(
            FieldError(("treated_at",), "is older than the regimen: its aftercare is already over")
        )
        return checked, []
    return checked, planned


def _collect(errors: list[FieldError], clean: Callable[[], _T]) -> _T | None:
    """``clean()``'s value, or None with its errors added to ``errors``."""
    try:
        return clean()
    except ValidationFailed as exc:
        errors.extend(exc.errors)
        return None


def _treated_at(
    values: EnrolForm, zone: str | None, now: datetime, errors: list[FieldError]
) -> datetime | None:
    """The treatment instant typed on the form (None without a date, a time and a zone)."""
    day, at = _parse_date(values.treated_date), _parse_time(values.treated_time)
    if day is None or at is None:
        errors.append(FieldError(("treated_at",), "needs a date and a time, e.g. 02/03/2026 10:30"))
        return None
    if zone is None:
        return None
    # The wall time in the patient's zone; a time in a DST gap moves forward, as clocks do.
    treated_at = datetime.combine(day, at, tzinfo=ZoneInfo(zone))
    if treated_at > now + MAX_FUTURE:
        errors.append(FieldError(("treated_at",), "is more than a day in the future"))
    return treated_at


def _regimen(
    values: EnrolForm, rt: Runtime, errors: list[FieldError]
) -> tuple[Regimen | None, dict[str, int | str]]:
    """The chosen regimen and its parameters (defaults filled in), or the errors why not."""
    try:
        regimen = rt.registry.get(values.regimen)
    except KeyError:
        errors.append(FieldError(("regimen",), "choose a treatment"))
        return None, {}
    try:
        return regimen, regimen.resolve_parameters(dict(values.parameters))
    except ParameterError as exc:
        errors.append(FieldError(("parameters", exc.name), exc.reason))
        return regimen, {}


def session_request(values: EnrolForm, checked: Checked) -> SessionRequest:
    wanted = {key for key, _ in CONTRAINDICATIONS}
    return SessionRequest(
        name=values.name,
        phone=values.phone,
        email=values.email,
        timezone=values.timezone,
        channels=list(values.channels),
        treated_at=checked.treated_at,
        regimen=values.regimen,
        parameters=dict(values.parameters),
        consent=values.consent,
        contraindications_checked=wanted <= set(values.contra),
        discreet=values.discreet_choice,
    )


def param_ids(checked: Checked) -> set[str]:
    return {f"param-{p}" for p in checked.regimen.parameters} if checked.regimen else set()


def merge_errors(checked: Checked, service: Sequence[FieldError]) -> list[FieldError]:
    """The form's own errors first, then the service's for other fields. Without a treatment
    instant (a bad date or zone) the service's "treated_at is required" is noise: dropped."""
    seen = {field_id(e.loc) for e in checked.errors}
    if checked.treated_at is None:
        seen.add("treated_date")
    return [*checked.errors, *(e for e in service if field_id(e.loc) not in seen)]
