"""``aftercare preview`` and ``aftercare enrol``: a session's timeline, shown or stored."""

from __future__ import annotations

import json
from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from aftercare.cli.common import (
    ChannelsOpt,
    CheckinOpt,
    DailyOpt,
    RegimenOpt,
    TreatedOpt,
    ZoneOpt,
    chosen_zone,
    ensure_schema,
    fail,
    fail_validation,
    instant,
    load_registry,
    load_runtime,
    read_back,
    regimen_parameters,
)
from aftercare.cli.typed import read_channels
from aftercare.planning.planner import PlannedReminder, plan
from aftercare.regimens.model import ParameterError
from aftercare.validation import ValidationFailed, clean_channels


def timeline_rows(planned: list[PlannedReminder], zone: ZoneInfo) -> list[dict[str, str]]:
    """The reminders to send, as ``--json`` prints them."""
    return [
        {
            "step": r.step,
            "channel": r.channel,
            "template": r.template,
            "due_utc": r.due_utc.isoformat(),
            "due_local": r.due_utc.astimezone(zone).isoformat(),
        }
        for r in planned
        if r.state == "scheduled"
    ]


def print_table(planned: list[PlannedReminder], zone: ZoneInfo) -> None:
    """The whole plan, skipped steps included, one line per reminder."""
    header = f"{'due (local)':<22} {'due (UTC)':<17} {'step':<16} {'#':>2} {'channel':<7} state"
    typer.echo(header)
    typer.echo("-" * len(header))
    for r in planned:
        local = r.due_utc.astimezone(zone).strftime("%a %d %b %Y %H:%M")
        utc = r.due_utc.strftime("%Y-%m-%d %H:%M")
        typer.echo(
            f"{local:<22} {utc:<17} {r.step:<16} {r.occurrence + 1:>2} {r.channel:<7} {r.state}"
        )


def preview(
    regimen: RegimenOpt = "micro-sclerotherapy",
    treated_at: TreatedOpt = None,
    timezone: ZoneOpt = None,
    daily_days: DailyOpt = None,
    checkin_week: CheckinOpt = None,
    channels: ChannelsOpt = "sms,email",
    now: Annotated[
        str | None,
        typer.Option(
            "--now", metavar="TIME", help="Plan as if recorded at this moment (catch-up)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Show a session's planned timeline without storing anything."""
    rt = load_runtime()
    registry = load_registry(rt)
    zone_name = chosen_zone(timezone, rt)
    treated = instant(treated_at, zone=zone_name, rt=rt) if treated_at else rt.clock.now()
    recorded = instant(now, zone=zone_name, rt=rt, flag="now") if now else treated
    try:
        chosen = clean_channels(read_channels(channels), ("channels",))
        the_regimen = registry.get(regimen)
        params = the_regimen.resolve_parameters(regimen_parameters(daily_days, checkin_week))
    except ValidationFailed as exc:
        fail_validation(exc)
    except ParameterError as exc:
        fail(f"{exc.name.replace('_', '-')}: {exc.reason}")
    except KeyError as exc:
        fail(f"regimen: {exc.args[0]}")
    planned = plan(
        regimen=the_regimen,
        treated_at=treated,
        timezone=zone_name,
        parameters=params,
        channels=chosen,
        quiet=rt.quiet,
        recorded_at=max(recorded, treated),
    )
    zone = ZoneInfo(zone_name)
    read_back(treated_at, treated, zone=zone_name)
    read_back(now, recorded, zone=zone_name, flag="now")
    if as_json:
        typer.echo(json.dumps(timeline_rows(planned, zone), indent=2))
    else:
        print_table(planned, zone)


def enrol(
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="Patient's name.")],
    phone: Annotated[
        str | None, typer.Option("--phone", metavar="PHONE", help="Mobile number.")
    ] = None,
    email: Annotated[
        str | None, typer.Option("--email", metavar="EMAIL", help="Email address.")
    ] = None,
    regimen: RegimenOpt = "micro-sclerotherapy",
    treated_at: TreatedOpt = None,
    timezone: ZoneOpt = None,
    daily_days: DailyOpt = None,
    checkin_week: CheckinOpt = None,
    channels: ChannelsOpt = "sms,email",
    consent: Annotated[
        bool,
        typer.Option(
            "--consent", help="The patient agrees to receive aftercare messages (required)."
        ),
    ] = False,
    contraindications_checked: Annotated[
        bool,
        typer.Option(
            "--contraindications-checked",
            help="The contraindication checklist was confirmed with the patient (required).",
        ),
    ] = False,
    discreet: Annotated[
        bool | None,
        typer.Option(
            "--discreet/--no-discreet",
            help="Discreet messages: the first line of each SMS and each email subject say only "
            "that there is a message from the clinic (default: AFTERCARE_DISCREET_DEFAULT).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Record a treatment session and plan its reminders.

    As on the staff form, --consent and --contraindications-checked confirm that the patient
    agreed to messages and that the checklist was gone through with them. A patient already
    known (same phone, or email when there is none, and name) gets the session added to their
    course.
    """
    from aftercare.sessions.enrolment import enrol_planned
    from aftercare.sessions.service import SessionRequest, validate_request

    if not consent:
        fail("consent: confirm the patient agrees to aftercare messages with --consent")
    if not contraindications_checked:
        fail(
            "contraindications-checked: confirm the contraindication checklist with "
            "--contraindications-checked"
        )
    rt = load_runtime()
    registry = load_registry(rt)
    now = rt.clock.now()
    zone_name = chosen_zone(timezone, rt)
    treated = instant(treated_at, zone=zone_name, rt=rt) if treated_at else now
    request = SessionRequest(
        name=name,
        phone=phone,
        email=email,
        timezone=zone_name,
        channels=read_channels(channels),
        treated_at=treated,
        regimen=regimen,
        parameters=regimen_parameters(daily_days, checkin_week),
        consent=consent,
        contraindications_checked=contraindications_checked,
        discreet=discreet,
    )
    try:
        valid = validate_request(request, registry=registry, quiet=rt.quiet, now=now)
    except ValidationFailed as exc:
        fail_validation(exc)
    ensure_schema(rt)
    with rt.db.session() as db_session:
        enrolled = enrol_planned(
            db_session=db_session,
            request=request,
            registry=registry,
            quiet=rt.quiet,
            now=now,
            actor_id=None,
        )
        session_id, patient_id = enrolled.session.id, enrolled.session.patient_id
    zone = ZoneInfo(valid.timezone)
    read_back(treated_at, treated, zone=zone_name)
    if as_json:
        out = {
            "id": session_id,
            "patient_id": patient_id,
            "matched_existing": enrolled.matched_existing,
            "reminders": timeline_rows(valid.plan, zone),
        }
        typer.echo(json.dumps(out, indent=2))
        return
    known = " (already known: added to their course)" if enrolled.matched_existing else ""
    typer.echo(f"Recorded session {session_id} for patient {patient_id}{known}.")
    for superseded_id, count in sorted(enrolled.superseded.items()):
        typer.echo(f"Superseded {count} reminders of session {superseded_id}.")
    print_table(valid.plan, zone)
