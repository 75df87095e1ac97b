"""``aftercare check``: every regimen valid, every template renders, every SMS fits."""

from __future__ import annotations

import typer

from aftercare.messages.calendar import sample_calendar
from aftercare.messages.render import MessageRenderer, TemplateError
from aftercare.messages.variants import template_variants
from aftercare.regimens.loader import RegimenError, RegimenRegistry
from aftercare.regimens.model import Regimen, Step
from aftercare.runtime import Runtime


def run_checks(rt: Runtime) -> list[str]:
    """Print a report of what was checked; return every fault found (empty when all is well)."""
    faults: list[str] = _channel_faults(rt)
    try:
        registry = RegimenRegistry.load(rt.settings.schedules_dir)
    except RegimenError as exc:
        return [*faults, str(exc)]
    if not registry.ids():
        return [*faults, f"{rt.settings.schedules_dir}: no regimen files (*.yaml)"]
    faults.extend(_triage_faults(rt))
    renderer = MessageRenderer(rt.settings.templates_dir)
    for regimen in registry:
        typer.echo(
            f"regimen {regimen.id} (v{regimen.version}, {regimen.source}): "
            f"{len(regimen.steps)} steps"
        )
        for index, step in enumerate(regimen.steps):
            faults.extend(_step_faults(rt, renderer, regimen, index, step))
        faults.extend(_calendar_faults(regimen))
    return sorted(set(faults), key=faults.index)


def _step_faults(
    rt: Runtime, renderer: MessageRenderer, regimen: Regimen, index: int, step: Step
) -> list[str]:
    """Each of the step's channels rendered with a sample and with the configured clinic; a fault
    names the regimen file and the step's template key, then the template file and the reason."""
    faults: list[str] = []
    where = f"{regimen.source}: steps[{index}].template ({step.template})"
    for label, clinic in (("sample", None), ("configured", rt.settings.clinic_name)):
        extra = (
            {}
            if clinic is None
            else {"clinic_name": clinic, "clinic_phone": rt.settings.clinic_phone}
        )
        worst = None
        # Every occurrence and every audience (discreet, SMS only, reply mailbox).
        for context in template_variants(regimen, step.id, **extra):
            try:
                if "sms" in step.channels:
                    sms = renderer.render_sms(step.template, context)
                    if worst is None or len(sms.body) > len(worst.body):
                        worst = sms
                if "email" in step.channels:
                    renderer.render_email(step.template, context)
            except TemplateError as exc:
                faults.append(f"{where}: {exc!s} (with {label} clinic details)")
        if label == "sample" and worst is not None:
            typer.echo(
                f"  sms   {step.template:<16} {worst.encoding}, "
                f"{worst.segments} segment(s), {len(worst.body)} chars (longest)"
            )
    return faults


def _calendar_faults(regimen: Regimen) -> list[str]:
    """The regimen's calendar built for a sample session (its texts are templates too)."""
    if regimen.calendar is None:
        return []
    try:
        sample_calendar(regimen)
    except TemplateError as exc:
        return [str(exc)]
    typer.echo(f"  calendar {len(regimen.calendar.events)} event(s)")
    return []


def _triage_faults(rt: Runtime) -> list[str]:
    """The reply-triage data: read, checked, and its pipeline built (every pattern compiled)."""
    from aftercare.triage.data import TriageDataError, load_data
    from aftercare.triage.engine import Engine

    folder = rt.settings.schedules_dir / "triage"
    try:
        data = load_data(folder)
        Engine(data).warm()
    except TriageDataError as exc:
        return [str(exc)]
    vocabulary = data.vocabulary
    typer.echo(
        f"triage ({folder}): {len(vocabulary.signs)} signs, "
        f"{sum(len(s.patterns) for s in vocabulary.signs.values())} patterns, "
        f"{len(data.context.rules)} context rules, "
        f"{len(data.answers.languages.safety)} languages"
    )
    return []


def _channel_faults(rt: Runtime) -> list[str]:
    """Settings the chosen transports lack; warnings are printed and do not fail the check."""
    from aftercare.channels.registry import WARNING, check_channel_settings

    faults: list[str] = []
    for finding in check_channel_settings(rt.settings):
        if finding.startswith(WARNING):
            typer.echo(f"WARNING {finding.removeprefix(WARNING)}", err=True)
        else:
            faults.append(finding)
    typer.echo(
        f"channels: sms via {rt.settings.sms_transport}, email via {rt.settings.email_transport}"
        + (f", {len(faults)} setting(s) missing" if faults else "")
    )
    # Part of the report (stdout), not a fault: the templates are fine, the settings are not.
    warning = rt.settings.clinic_warning()
    typer.echo(f"clinic: WARNING {warning}" if warning else f"clinic: {rt.settings.clinic_name}")
    sender = rt.settings.sender_warning()
    if sender:
        typer.echo(f"sms sender: WARNING {sender}")
    return faults
