"""``/sessions/new``: record a treatment session, with a preview of its timeline.

One form, two buttons. "Preview" plans the timeline from the timing fields (zone, channels,
treatment time, regimen parameters) and stores nothing; "Save" enrols through
:func:`aftercare.sessions.actions.enrol`. Both re-render the form with every value kept and each
error next to its field. The optional script (``/static/preview.js``) only asks for the same
"Preview" in the background as fields change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, available_timezones

from fastapi import APIRouter, Response, status
from fastapi.responses import HTMLResponse
from starlette.datastructures import FormData

from aftercare.planning.planner import PlannedReminder, plan
from aftercare.regimens.model import Parameter, ParameterError, Regimen
from aftercare.runtime import Runtime
from aftercare.sessions import actions
from aftercare.sessions.service import MAX_FUTURE, SessionRequest, validate_request
from aftercare.sessions.validation import (
    FieldError,
    Loc,
    ValidationFailed,
    clean_channels,
    clean_timezone,
)
from aftercare.web.auth import DbSession
from aftercare.web.deps import RuntimeDep
from aftercare.web.pages_common import PageRoute, error_text, redirect, render
from aftercare.web.web_auth import CheckedForm, PageStaff, StaffSession
from aftercare.web.web_auth import field as text_field

router = APIRouter(route_class=PageRoute, include_in_schema=False)

# PROTOCOL.md's contraindications: staff confirm each one; all four must be ticked.
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
}
# The service's wording is for API clients; staff get an instruction.
INSTEAD: Final = {
    "consent": "Confirm that the patient agrees to receive aftercare messages",
    "contra-no-dvt": "Confirm all four contraindication checks with the patient",
}
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

    @classmethod
    def parse(cls, form: FormData) -> EnrolForm:
        return cls(
            name=text_field(form, "name", limit=300),
            phone=text_field(form, "phone", limit=60),
            email=text_field(form, "email", limit=300),
            timezone=text_field(form, "timezone", limit=100).strip(),
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
        )


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
    try:
        return time.fromisoformat(text) if text else None
    except ValueError:
        return None


@dataclass
class Checked:
    """What the form's values mean: the treatment instant, the regimen and each error."""

    errors: list[FieldError]
    treated_at: datetime | None = None
    regimen: Regimen | None = None


def _timing(values: EnrolForm, rt: Runtime, now: datetime) -> tuple[Checked, list[PlannedReminder]]:
    """Check the fields that decide the timeline and plan it (pure: nothing is stored)."""
    errors: list[FieldError] = []
    checked = Checked(errors)
    zone = channels = None
    try:
        zone = clean_timezone(values.timezone, ("patient", "timezone"))
    except ValidationFailed as exc:
        errors.extend(exc.errors)
    try:
        channels = clean_channels(values.channels, ("patient", "channels"))
    except ValidationFailed as exc:
        errors.extend(exc.errors)
    day, at = _parse_date(values.treated_date), _parse_time(values.treated_time)
    if day is None or at is None:
        errors.append(FieldError(("treated_at",), "needs a date and a time, e.g. 02/03/2026 10:30"))
    elif zone is not None:
        # The wall time in the patient's zone; a time in a DST gap moves forward, as clocks do.
        checked.treated_at = datetime.combine(day, at, tzinfo=ZoneInfo(zone))
        if checked.treated_at > now + MAX_FUTURE:
            errors.append(FieldError(("treated_at",), "is more than a day in the future"))
    try:
        checked.regimen = rt.registry.get(values.regimen)
    except KeyError:
        errors.append(FieldError(("regimen",), "choose a treatment"))
    parameters: dict[str, int | str] = {}
    if checked.regimen is not None:
        try:
            parameters = checked.regimen.resolve_parameters(dict(values.parameters))
        except ParameterError as exc:
            errors.append(FieldError(("parameters", exc.name), exc.reason))
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


def _request(values: EnrolForm, checked: Checked) -> SessionRequest:
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
    )


@dataclass(frozen=True)
class PreviewRow:
    due: datetime
    title: str
    channels: list[str]
    skipped: bool


def preview_rows(planned: Sequence[PlannedReminder], regimen: Regimen) -> list[PreviewRow]:
    """One row per message and time; a message sent by SMS and email at once is one row."""
    counts: dict[str, int] = {}
    for item in planned:
        counts[item.step] = max(counts.get(item.step, 0), item.occurrence + 1)
    order = {step.id: index for index, step in enumerate(regimen.steps)}
    channel_order = {"sms": 0, "email": 1}
    rows: dict[tuple[str, int, datetime, str], PreviewRow] = {}
    for item in sorted(
        planned,
        key=lambda p: (p.due_utc, order.get(p.step, 0), channel_order.get(p.channel, 2)),
    ):
        key = (item.step, item.occurrence, item.due_utc, item.state)
        if key not in rows:
            title = step_title(regimen, item.step, item.occurrence, counts)
            rows[key] = PreviewRow(item.due_utc, title, [], item.state == "skipped")
        rows[key].channels.append(item.channel)
    return list(rows.values())


def step_title(regimen: Regimen | None, step: str, occurrence: int, counts: dict[str, int]) -> str:
    """The step's title, with "(3 of 14)" for a repeated step."""
    try:
        title = regimen.step(step).title if regimen else step
    except KeyError:
        title = step
    total = counts.get(step, 1)
    return f"{title} ({occurrence + 1} of {total})" if total > 1 else title


@dataclass(frozen=True)
class ParamField:
    name: str
    label: str
    widget: str  # radio | select
    options: list[tuple[str, str]]
    value: str


def _option_text(parameter: Parameter, value: int | str) -> str:
    if parameter.name == "daily_days" and isinstance(value, int):
        weeks = value // 7
        return f"{value} days ({weeks} week{'s' if weeks != 1 else ''})"
    if parameter.name == "checkin_week":
        return f"Week {value}"
    return str(value).replace("-", " ").capitalize()


SHORT_LABELS: Final = {
    "daily_days": "Daytime wear",
    "checkin_week": "Check-in",
    "garment": "Garment",
}


def param_summary(regimen: Regimen | None, parameters: dict[str, object]) -> list[str]:
    """``Daytime wear: 7 days (1 week)``, one string per parameter of a stored session."""
    out = []
    for name, value in sorted(parameters.items()):
        p = regimen.parameters.get(name) if regimen else None
        if p is None or not isinstance(value, int | str):
            out.append(f"{name.replace('_', ' ')}: {value}")
        else:
            out.append(f"{SHORT_LABELS.get(name, p.label)}: {_option_text(p, value)}")
    return out


def param_fields(regimen: Regimen | None, values: EnrolForm) -> list[ParamField]:
    if regimen is None:
        return []
    out = []
    for p in regimen.parameters.values():
        choices: Sequence[int | str] = p.choices or (
            range(p.minimum, p.maximum + 1)
            if p.minimum is not None and p.maximum is not None
            else ()
        )
        if not choices:
            continue
        widget = "radio" if len(choices) <= 3 else "select"
        options = [(str(c), _option_text(p, c)) for c in choices]
        out.append(
            ParamField(
                p.name, p.label, widget, options, values.parameters.get(p.name, str(p.default))
            )
        )
    return out


@lru_cache(maxsize=1)
def zone_names() -> list[str]:
    return sorted(z for z in available_timezones() if "/" in z and not z.startswith("Etc/"))


def _page(
    rt: Runtime,
    staff: StaffSession,
    db_session: DbSession,
    values: EnrolForm,
    *,
    errors: Sequence[FieldError] = (),
    planned: Sequence[PlannedReminder] = (),
    regimen: Regimen | None = None,
    previewed: bool = False,
    status_code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    if regimen is None and values.regimen in rt.registry.ids():
        regimen = rt.registry.get(values.regimen)
    labels = dict(LABELS)
    if regimen is not None:
        labels.update({f"param-{p.name}": p.label for p in regimen.parameters.values()})
    by_field: dict[str, str] = {}
    summary: list[tuple[str, str]] = []
    for error in errors:
        fid = field_id(error.loc)
        label = labels.get(fid, fid.replace("-", " ").capitalize())
        text = INSTEAD.get(fid) or error_text(label, error.msg)
        if fid not in by_field:
            by_field[fid] = text
            summary.append((fid, text))
    return render(
        rt,
        "enrol.html",
        staff=staff,
        db_session=db_session,
        status_code=status_code,
        values=values,
        regimens=[rt.registry.get(i) for i in rt.registry.ids()],
        params=param_fields(regimen, values),
        contraindications=CONTRAINDICATIONS,
        zones=zone_names(),
        errors=by_field,
        summary=summary,
        rows=preview_rows(planned, regimen) if planned and regimen else [],
        zone=values.timezone if planned else "",
        previewed=previewed,
    )


def _defaults(rt: Runtime) -> EnrolForm:
    zone = rt.settings.default_timezone
    local = rt.clock.now().astimezone(ZoneInfo(zone))
    ids = rt.registry.ids()
    return EnrolForm(
        timezone=zone,
        treated_date=local.date().isoformat(),
        treated_time=f"{local:%H:%M}",
        regimen="micro-sclerotherapy" if "micro-sclerotherapy" in ids else (ids[0] if ids else ""),
    )


@router.get("/sessions/new", response_class=HTMLResponse)
def enrol_form(rt: RuntimeDep, staff: PageStaff, db_session: DbSession) -> Response:
    return _page(rt, staff, db_session, _defaults(rt))


@router.post("/sessions/new", response_class=HTMLResponse)
def enrol(rt: RuntimeDep, staff: PageStaff, db_session: DbSession, form: CheckedForm) -> Response:
    values = EnrolForm.parse(form)
    now = rt.clock.now()
    checked, planned = _timing(values, rt, now)
    if text_field(form, "action") != "save":
        timing_errors = [
            e for e in checked.errors if field_id(e.loc) in TIMING | _param_ids(checked)
        ]
        return _page(
            rt,
            staff,
            db_session,
            values,
            errors=timing_errors,
            planned=planned,
            regimen=checked.regimen,
            previewed=True,
        )
    request = _request(values, checked)
    if checked.errors:
        errors = _all_errors(checked, request, rt, now)
        return _invalid(
            rt, staff, db_session, values, errors=errors, planned=planned, checked=checked
        )
    try:
        with db_session.begin_nested():
            session = actions.enrol(
                db_session=db_session,
                request=request,
                registry=rt.registry,
                quiet=rt.quiet,
                now=now,
                actor_id=staff.user.id,
            )
    except ValidationFailed as exc:
        return _invalid(
            rt, staff, db_session, values, errors=exc.errors, planned=planned, checked=checked
        )
    return redirect(f"/patients/{session.patient_id}?done=enrolled")


def _invalid(
    rt: Runtime,
    staff: StaffSession,
    db_session: DbSession,
    values: EnrolForm,
    *,
    errors: Sequence[FieldError],
    planned: Sequence[PlannedReminder],
    checked: Checked,
) -> HTMLResponse:
    return _page(
        rt,
        staff,
        db_session,
        values,
        errors=errors,
        planned=planned,
        regimen=checked.regimen,
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


def _all_errors(
    checked: Checked, request: SessionRequest, rt: Runtime, now: datetime
) -> list[FieldError]:
    """The form's own errors and the service's, so every field is reported at once."""
    try:
        validate_request(request, registry=rt.registry, quiet=rt.quiet, now=now)
    except ValidationFailed as exc:
        return _merge(checked, exc.errors)
    return list(checked.errors)


def _param_ids(checked: Checked) -> set[str]:
    return {f"param-{p}" for p in checked.regimen.parameters} if checked.regimen else set()


def _merge(checked: Checked, service: Sequence[FieldError]) -> list[FieldError]:
    """The form's own errors first, then the service's for other fields. Without a treatment
    instant (a bad date or zone) the service's "treated_at is required" is noise: dropped."""
    seen = {field_id(e.loc) for e in checked.errors}
    if checked.treated_at is None:
        seen.add("treated_date")
    return [*checked.errors, *(e for e in service if field_id(e.loc) not in seen)]
