"""What the service says back to a patient's SMS: HELP and check-in thanks from templates/sms,
the triage answers by severity and the safety line in each language (schedules/triage)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

from aftercare.messages.render import MessageRenderer
from aftercare.regimens.loader import RegimenRegistry
from aftercare.triage.verdict import Triager, Verdict, default_triager

log = logging.getLogger(__name__)

# Sent if an answer cannot be built from the triage data (it is checked at start-up, so this is
# a last resort): a patient reporting warning signs must never go unanswered.
FALLBACK_SAFETY_ADVICE = (
    "If you suddenly feel breathless or have chest pain, call 999 now. For pain, swelling, "
    "warmth or redness in a leg, blisters, broken skin or a rash, call NHS 111 or your clinic."
)
CALL_BACK = "We will try to call you today."


@lru_cache(maxsize=1)
def _default_regimens() -> RegimenRegistry:
    """The shipped regimens (read on the first call), for callers given no registry."""
    from aftercare.settings import Settings

    return RegimenRegistry.load(Settings.model_fields["schedules_dir"].default)


@dataclass(frozen=True)
class Replies:
    """The texts sent back to a patient: HELP and check-in thanks from templates/sms, the
    triage answers (by severity, and the safety line in each language) from
    schedules/triage/answers.yaml."""

    renderer: MessageRenderer
    clinic_name: str
    clinic_phone: str
    triage: Triager = field(default_factory=default_triager)
    # Which step of a session's regimen asks the check-in question (``check_in: true``).
    regimens: RegimenRegistry = field(default_factory=_default_regimens)

    def checkin_steps(self, regimen_id: str) -> frozenset[str]:
        """The steps of ``regimen_id`` that ask the check-in question (none if unknown)."""
        try:
            return self.regimens.get(regimen_id).checkin_steps
        except KeyError:
            return frozenset()

    # When the clinic next answers its phone ("The clinic opens again at 08:30 tomorrow."),
    # told with an urgent answer; empty when AFTERCARE_OPENING_HOURS is not set.
    next_open: str = ""

    def _render(self, template: str, **extra: object) -> str:
        context = {"clinic_name": self.clinic_name, "clinic_phone": self.clinic_phone, **extra}
        return self.renderer.render_sms(template, context).body

    def help(self, *, resubscribed: bool = False) -> str:
        return self._render("help", resubscribed=resubscribed)

    def checkin_thanks(self) -> str:
        return self._render("checkin-thanks")

    def answer(self, key: str) -> str:
        """One of answers.yaml's answers, with the clinic's name and number."""
        text = self.triage.data.answers.answers.get(key)
        if text is None:
            log.error("no triage answer %r; sending the built-in safety advice", key)
            return FALLBACK_SAFETY_ADVICE
        return " ".join(
            text.format_map(
                {"clinic_name": self.clinic_name, "clinic_phone": self.clinic_phone}
            ).split()
        )

    def alarm(self, verdict: Verdict, *, known: bool) -> str:
        """The answer to an emergency (999 first) or an urgent reply (clinic, 111, what to do)."""
        if verdict.emergency:
            return self.answer("emergency")
        parts = [self.answer("urgent" if known else "urgent_unknown_sender")]
        if self.next_open:
            parts.append(self.next_open)
        advice = self.triage.data.answers.advice
        parts += [" ".join(advice[a].split()) for a in verdict.advice if a in advice]
        if known:
            parts.append(CALL_BACK)
        return " ".join(parts)

    def interpreter(self, language: str) -> str:
        """The safety line in English and in the reply's language."""
        safety = self.triage.data.answers.languages.safety
        lines = [f"{self.clinic_name}: " + " ".join(safety["en"].split())]
        if language in safety and language != "en":
            lines.append(" ".join(safety[language].split()))
        return "\n".join(lines)
