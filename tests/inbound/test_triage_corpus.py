"""Reply triage measured on the labelled corpus (tests/replies/corpus.yaml), against issue 13's
targets. Prints recall and false-alarm rates per level (run with ``-s`` to see the table);
fails below a target.

The corpus was written before the rules, by another author; the rules are not tuned to it
message by message (docs/replies.md, "What limits recall").

What the patient is answered is read from the verdict as the inbound service answers it
(aftercare/inbound/service.py): an emergency answer and the interpreter's safety line put 999
first; every verdict is answered except a lone opt-out keyword (Twilio confirms those) and
chatter (thanks, "ok"), which is acknowledged at most once every few hours.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from aftercare.triage.data import RANK, SEVERITIES
from aftercare.triage.verdict import Triager, Verdict, triager_for
from tests.conftest import REPO

CORPUS = REPO / "tests" / "replies" / "corpus.yaml"
DATA = REPO / "schedules" / "triage"

# Issue 13's targets.
EMERGENCY_ANSWERED_999 = 0.97
ALARMS_FLAGGED = 0.97
ROUTINE_FALSE_ALARMS = 0.10
STOPS_HONOURED = 0.95


@dataclass(frozen=True)
class Case:
    entry: dict[str, Any]
    verdict: Verdict

    @property
    def label(self) -> str:
        return str(self.entry["severity"])

    @property
    def answered(self) -> bool:
        lone_keyword = self.verdict.kind == "opt_out" and self.verdict.keyword is not None
        return not lone_keyword and self.verdict.kind != "chatter"

    @property
    def answered_999_first(self) -> bool:
        return self.verdict.emergency or self.verdict.interpreter

    @property
    def saved_as_checkin_answer(self) -> bool:
        return self.entry["context"] == "checkin" and self.verdict.kind == "checkin_answer"


def _rate(hits: int, total: int) -> str:
    return f"{hits}/{total} = {hits / total:.1%}" if total else "0/0"


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    entries = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
    triager: Triager = triager_for(DATA)
    triager.warm()
    return [Case(e, triager.triage(str(e["text"]))) for e in entries]


def _print_table(cases: list[Case]) -> None:
    print(f"\nReply triage on {len(cases)} corpus replies ({CORPUS.relative_to(REPO)})")
    print("level      | replies | recall (at this level or worse) | exact | flagged urgent+")
    for level in SEVERITIES:
        mine = [c for c in cases if c.label == level]
        at_least = sum(1 for c in mine if RANK[c.verdict.severity] <= RANK[level])
        exact = sum(1 for c in mine if c.verdict.severity == level)
        alarms = sum(1 for c in mine if c.verdict.alarm)
        print(
            f"{level:<10} | {len(mine):>7} | {_rate(at_least, len(mine)):>31} | "
            f"{_rate(exact, len(mine)):>16} | {_rate(alarms, len(mine))}"
        )
    confusion = Counter((c.label, c.verdict.severity) for c in cases)
    print(
        "confusion (label -> verdict): "
        + ", ".join(f"{a}->{b}: {n}" for (a, b), n in sorted(confusion.items()))
    )


def test_corpus_targets(cases: list[Case]) -> None:
    _print_table(cases)
    emergencies = [c for c in cases if c.label == "emergency"]
    alarms = [c for c in cases if c.label in ("emergency", "urgent")]
    routine = [c for c in cases if c.label == "info"]
    stops = [c for c in cases if c.entry["stop"]]
    not_stops = [c for c in cases if not c.entry["stop"]]
    symptoms = [c for c in cases if c.entry["symptom"]]
    with_999 = sum(c.answered_999_first for c in emergencies)
    flagged = sum(c.verdict.alarm for c in alarms)
    saved = [c for c in alarms if c.saved_as_checkin_answer]
    false_alarms = sum(c.verdict.alarm for c in routine)
    honoured = sum(c.verdict.stop for c in stops)
    wrongly_stopped = [c for c in not_stops if c.verdict.stop]
    unanswered = [c for c in symptoms if not c.answered]
    print("targets:")
    answered = len(symptoms) - len(unanswered)
    lines = [
        ("emergency answered with 999 first", _rate(with_999, len(emergencies)), ">= 97%"),
        ("emergency+urgent flagged urgent or worse", _rate(flagged, len(alarms)), ">= 97%"),
        ("warning sign saved as a check-in answer", str(len(saved)), "0"),
        ("routine flagged urgent or worse", _rate(false_alarms, len(routine)), "<= 10%"),
        ("stop requests honoured", _rate(honoured, len(stops)), ">= 95%"),
        ("other messages that opted out", str(len(wrongly_stopped)), "0"),
        ("may describe a symptom, answered", _rate(answered, len(symptoms)), "100%"),
    ]
    for name, value, target in lines:
        print(f"  {name:<42} {value} ({target})")
    missed = [c.entry["text"] for c in alarms if not c.verdict.alarm]
    print(f"  missed alarms ({len(missed)}): {missed[:40]}")
    print(f"  wrongly stopped: {[c.entry['text'] for c in wrongly_stopped]}")
    print(f"  stop requests missed: {[c.entry['text'] for c in stops if not c.verdict.stop]}")
    print(f"  unanswered symptoms: {[c.entry['text'] for c in unanswered]}")
    print(f"  saved as check-in answers: {[c.entry['text'] for c in saved]}")
    false = [c.entry["text"] for c in routine if c.verdict.alarm]
    print(f"  routine false alarms ({len(false)}): {false[:40]}")
    failures = []
    if with_999 < EMERGENCY_ANSWERED_999 * len(emergencies):
        failures.append("emergency answered with 999")
    if flagged < ALARMS_FLAGGED * len(alarms):
        failures.append("emergency+urgent flagged")
    if saved:
        failures.append("warning sign saved as a check-in answer")
    if false_alarms > ROUTINE_FALSE_ALARMS * len(routine):
        failures.append("routine false alarms")
    if honoured < STOPS_HONOURED * len(stops) or wrongly_stopped:
        failures.append("stop requests")
    if unanswered:
        failures.append("symptoms answered")
    assert not failures, f"below target: {', '.join(failures)}"


def test_corpus_is_the_one_described(cases: list[Case]) -> None:
    """The measure is only meaningful on the full corpus at every level."""
    levels = Counter(c.label for c in cases)
    assert len(cases) >= 500
    assert all(levels[level] >= 30 for level in SEVERITIES), levels
    assert Path(CORPUS).exists()
