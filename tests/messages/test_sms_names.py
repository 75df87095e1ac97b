"""A patient's name in the SMS they are actually sent, through the real pipeline (enrol, claim,
compose, the outbox transport): greeted by name only when the name survives GSM-7 whole and is
not link-shaped. The rule itself, with a property test over names, is in test_messages."""

from __future__ import annotations

import json

import pytest

from aftercare.reminders import states
from aftercare.runtime import Runtime
from tests.factories import enrol
from tests.reminders.test_delivery import claim_all, deliver_all, keep_only


@pytest.mark.parametrize(
    ("name", "greeting"),
    [
        ("李 Wang", "Hi there."),
        ("ЈОНN Smith", "Hi there."),
        ("bit.ly/x9z Smith", "Hi there."),
        ("evil.co Smith", "Hi there."),
        ("x@y.io Smith", "Hi there."),
        ("Zoë Smith", "Hi Zoe."),
        ("José Müller", "Hi José."),
    ],
)
def test_the_welcome_sms_sent_greets_by_name_only_when_it_is_whole_and_not_a_link(
    runtime: Runtime, name: str, greeting: str
) -> None:
    enrol(runtime, name=name, channels=["sms"])
    keep_only(runtime, "welcome")
    assert deliver_all(runtime, claim_all(runtime)) == [states.SENT]
    [sent] = (runtime.settings.outbox_dir / "sms").glob("*.json")
    body = json.loads(sent.read_text(encoding="utf-8"))["body"]
    assert body.split(": ", 1)[1].startswith(greeting + " Wear"), body
    first = name.split(maxsplit=1)[0]
    if greeting == "Hi there.":
        assert first not in body
