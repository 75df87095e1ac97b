"""The preview's message texts: each planned message rendered as the patient will read it, by the
same renderer and context that delivery uses (:mod:`aftercare.reminders.compose`). Pure: nothing
is stored or sent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from aftercare.messages.context import build_context, sms_first_name
from aftercare.messages.render import TemplateError
from aftercare.planning.planner import PlannedReminder, step_instants
from aftercare.regimens.model import Regimen
from aftercare.runtime import Runtime


@dataclass(frozen=True)
class MessageText:
    channel: str
    subject: str  # email only
    body: str
    # Why the message could not be shown (a template fault), else "".
    problem: str = ""


def message_texts(
    *,
    rt: Runtime,
    regimen: Regimen,
    planned: Sequence[PlannedReminder],
    patient_name: str,
    timezone: str,
    treated_at: datetime,
    parameters: dict[str, int | str],
    discreet: bool = False,
) -> dict[tuple[str, int], list[MessageText]]:
    """Each (step, occurrence)'s messages, SMS first, as the patient will read them."""
    # No email planned: the SMS carry the safety recap (as compose decides at sending).
    sms_only = not any(p.channel == "email" for p in planned)
    settings = rt.settings
    instants = step_instants(
        regimen=regimen,
        treated_at=treated_at,
        zone=ZoneInfo(timezone),
        parameters=parameters,
        quiet=rt.quiet,
    )
    # The real link is signed per patient when the email is sent; this one only shows where.
    unsubscribe = f"{settings.public_base_url.rstrip('/')}/unsubscribe/…"
    out: dict[tuple[str, int], list[MessageText]] = {}
    for item in sorted(planned, key=lambda p: (p.channel != "sms", p.due_utc)):
        key = (item.step, item.occurrence)
        if any(m.channel == item.channel for m in out.get(key, [])):
            continue
        context = build_context(
            regimen=regimen,
            patient_name=patient_name,
            clinic_name=settings.clinic_name,
            clinic_phone=settings.clinic_phone,
            timezone=timezone,
            parameters=parameters,
            instants=instants,
            step=item.step,
            occurrence=item.occurrence,
            unsubscribe_url=unsubscribe if item.channel == "email" else None,
            discreet=discreet,
            sms_only=sms_only,
            email_reply=bool(settings.email_reply_to),
        )
        try:
            if item.channel == "sms":
                greeting = sms_first_name(str(context["first_name"]))
                sms = rt.renderer.render_sms(item.template, {**context, "first_name": greeting})
                text = MessageText("sms", "", sms.body)
            else:
                email = rt.renderer.render_email(item.template, context)
                text = MessageText("email", email.subject, email.text)
        except TemplateError as exc:
            text = MessageText(item.channel, "", "", problem=str(exc))
        out.setdefault(key, []).append(text)
    return out
