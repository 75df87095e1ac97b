"""Triage one reply: its severity, what it asks for, and the signs found (labels only).

Pure: text in, a :class:`Verdict` out, from the engine's reading (:mod:`.engine`), the language
guard (:mod:`.language`) and the keywords (vocabulary.yaml). The rules, in order:

1. A message that is only an opt-out keyword (STOP, ..., REVOKE, OPTOUT; "STOP please" too) is an
   opt-out, as Twilio reads it. START/UNSTOP/YES, HELP/INFO and BOOK alone likewise.
2. A message confidently in another of our languages is not understood: urgent, "needs an
   interpreter".
3. Each sign found counts unless its context denies it, puts it in the past and over, or only
   asks about it. Somebody else's sign is a concern; a played-down urgent sign ("a bit sore") is
   a concern. The severity is the worst sign that counts.
4. A request to stop in words opts out (besides any sign, which is still acted on); a request for
   another session is a booking; then a check-in answer (digit or words), never when a sign of
   urgent or worse counts; then a question (concern), thanks and chatter (info), and otherwise
   not understood.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal

from aftercare.triage.data import RANK, Severity, TriageData
from aftercare.triage.engine import Engine, Found, Reading, engine_for, normalise, worst
from aftercare.triage.language import ENGLISH, LanguageGuard

Kind = Literal[
    "opt_out",
    "opt_in",
    "help",
    "booking",
    "checkin_answer",
    "urgent",
    "concern",
    "question",
    "expected",
    "chatter",
    "unrecognised",
]
CHECKIN_ANSWERS: Final = ("1", "2", "3")


@dataclass(frozen=True)
class Verdict:
    """What a reply is. ``signs`` are labels from vocabulary.yaml, never the patient's words."""

    kind: Kind
    severity: Severity
    signs: tuple[str, ...] = ()
    keyword: str | None = None
    answer: str | None = None
    language: str = ENGLISH
    advice: tuple[str, ...] = ()
    stop: bool = False
    booking: bool = False
    # The message may describe a symptom: it is always answered, never rate-limited.
    symptom: bool = False

    @property
    def emergency(self) -> bool:
        return self.severity == "emergency"

    @property
    def interpreter(self) -> bool:
        return self.language != ENGLISH and self.kind == "unrecognised"

    @property
    def alarm(self) -> bool:
        """Urgent or worse."""
        return RANK[self.severity] <= RANK["urgent"]


def _words(text: str) -> list[str]:
    return [w.strip(".,!?'\"-()*:;") for w in normalise(text).split() if w.strip(".,!?'\"-()*:;")]


# "1", "3.", "(3)", "1 - all gone", "2) some": an answer digit standing alone at the start (but
# not "2 weeks", "10" or "3:30"). A format, like a keyword, not language.
_ANSWER_DIGIT: Final = re.compile(
    r"^[\W_]*([123])(?:[\W_]*$|(?:\s*[-.,:;)!]+\s+|\s+[-.,:;)!]+\s*)\S)"
)


def _answer_digit(text: str) -> str | None:
    """The check-in digit a message starts with, if it stands alone."""
    found = _ANSWER_DIGIT.match(unicodedata.normalize("NFKC", text).strip())
    return found.group(1) if found else None


def _counts(found: Found, reading: Reading) -> bool:
    if found.negated or found.historical or found.hypothetical:
        return False
    return not (found.past and reading.resolved)


@dataclass(frozen=True)
class Triager:
    """Everything triage needs, built once per process."""

    data: TriageData
    engine: Engine
    language: LanguageGuard

    def warm(self) -> None:
        """Load the pipeline and the language models now rather than on the first reply."""
        self.engine.warm()
        self.language.detect("Dzień dobry, jak się masz dzisiaj?", english_share=0.0)

    def keyword(self, words: list[str]) -> tuple[Kind, str] | None:
        """(kind, KEYWORD) when the message is one keyword and courtesy words ("STOP please")."""
        keywords = self.data.vocabulary.keywords
        core = [w for w in words if w not in keywords.courtesy]
        if len(core) != 1:
            return None
        word = core[0].upper()
        choices: tuple[tuple[Kind, frozenset[str]], ...] = (
            ("opt_out", keywords.opt_out),
            ("opt_in", keywords.opt_in),
            ("help", keywords.help),
            ("booking", keywords.book),
        )
        for kind, known in choices:
            if word in known:
                return kind, word
        return None

    def triage(self, text: str) -> Verdict:
        words = _words(text)
        keyword = self.keyword(words)
        if keyword is not None:
            kind, word = keyword
            return Verdict(
                kind,
                "concern" if kind == "booking" else "info",
                keyword=word,
                stop=kind == "opt_out",
                booking=kind == "booking",
            )
        reading = self.engine.read(text)
        share = reading.known_words / reading.words if reading.words else 1.0
        language = self.language.detect(text, english_share=share)
        if language != ENGLISH:
            return self._other_language(text, words, language)
        verdict = self._english(reading, text, asks="?" in text)
        if not verdict.stop and self._leading_stop(text, words):
            # "STOP. also I can't breathe": the keyword, then more; both are acted on.
            return replace(
                verdict, stop=True, kind="opt_out" if not verdict.alarm else verdict.kind
            )
        return verdict

    def _leading_stop(self, text: str, words: list[str]) -> bool:
        """The message opens with an opt-out keyword standing alone in its own sentence."""
        if not words or words[0].upper() not in self.data.vocabulary.keywords.opt_out:
            return False
        rest = normalise(text)[len(words[0]) :].lstrip()
        return (
            rest[:1] in (".", "!", ",", ";", ":", "-") or "\n" in text.strip()[: len(words[0]) + 2]
        )

    def _other_language(self, text: str, words: list[str], language: str) -> Verdict:
        """Not understood, so urgent for an interpreter, unless it is only thanks, a request to
        stop (as data, per language) or a check-in digit."""
        phrase = self.language.phrase(text, language)
        if phrase == "stop":
            return Verdict("opt_out", "info", language=language, stop=True)
        if phrase == "thanks" and len(words) <= 5:
            return Verdict("chatter", "info", language=language)
        digit = _answer_digit(text)
        if digit is not None:
            # The digit answers the check-in; a nurse reads the rest.
            return Verdict("checkin_answer", "concern", answer=digit, language=language)
        return Verdict("unrecognised", "urgent", language=language, symptom=True)

    def _counted(self, reading: Reading) -> dict[str, Severity]:
        """Each sign that counts, at its level for this reading (another person's, or a mild
        urgent one, is at most a concern); the most severe when a sign is found twice."""
        signs = self.data.vocabulary.signs
        counted: dict[str, Severity] = {}
        for found in reading.signs:
            if not _counts(found, reading):
                continue
            level = signs[found.name].severity
            if found.other_person:
                level = "concern" if RANK[level] < RANK["concern"] else level
            elif found.mild and level == "urgent":
                level = "concern"
            if found.name not in counted or RANK[level] < RANK[counted[found.name]]:
                counted[found.name] = level
        return counted

    def _english(self, reading: Reading, text: str, *, asks: bool) -> Verdict:
        signs = self.data.vocabulary.signs
        counted = self._counted(reading)
        severity = worst(counted.values())
        # The expected after-effects are named only when nothing else is.
        alarming = [n for n, s in counted.items() if RANK[s] <= RANK["concern"]]
        names = alarming or list(counted)
        order = list(signs)
        names.sort(key=lambda n: (RANK[counted[n]], order.index(n)))
        labels = tuple(signs[n].label for n in names)
        advice = tuple(sorted({a for n in names if (a := signs[n].advice)}))
        symptom = bool(reading.signs)
        stop = reading.has_intent("stop_request")
        booking = reading.has_intent("booking")

        def make(kind: Kind, level: Severity, answer: str | None = None) -> Verdict:
            return Verdict(
                kind,
                level,
                signs=labels,
                answer=answer,
                advice=advice,
                stop=stop,
                booking=booking or kind == "booking",
                symptom=symptom,
            )

        if severity is not None and RANK[severity] <= RANK["urgent"]:
            return make("urgent", severity)
        if stop:
            return make("opt_out", severity or "info")
        if booking:
            return make("booking", "concern")
        answer = self._checkin(reading, text)
        if answer is not None:
            concerning = answer == "3" or severity == "concern"
            return make("checkin_answer", "concern" if concerning else "info", answer)
        if severity == "concern":
            return make("concern", "concern")
        if asks or reading.has_intent("question"):
            return make("question", "concern")
        if severity == "info" or symptom:
            # Expected after-effects, or signs only denied or over: answered, no alarm.
            return make("expected", "info")
        if reading.has_intent("thanks"):
            return make("chatter", "info")
        return make("unrecognised", "concern")

    @staticmethod
    def _checkin(reading: Reading, text: str) -> str | None:
        levels = set()
        digit = _answer_digit(text)
        if digit:
            levels.add(digit)
        for found in reading.intents:
            if not found.name.startswith("checkin_") or found.hypothetical:
                continue
            level = found.name[-1]
            if found.historical or (found.past and reading.resolved):
                continue
            if found.negated:
                # "not faded", "hasn't gone": still fading; "not dark", "not sore": faded.
                level = {"1": "2", "3": "1"}.get(level, level)
            levels.add(level)
        return max(levels) if levels else None


_TRIAGERS: dict[Path, Triager] = {}
_LOCK = threading.Lock()


def triager_for(folder: Path) -> Triager:
    """The process's triager for a data folder: the data read and checked on the first call,
    the language models and the pipeline loaded on the first reply (or :meth:`Triager.warm`)."""
    key = folder.resolve()
    with _LOCK:
        found = _TRIAGERS.get(key)
        if found is None:
            engine = engine_for(key)
            found = _TRIAGERS[key] = Triager(
                engine.data, engine, LanguageGuard(engine.data.answers.languages)
            )
        return found


def default_triager() -> Triager:
    """The triager for the shipped data (``schedules/triage``), for callers without a runtime
    (tests, the bench); the service uses the runtime's, whose folder is configurable."""
    from aftercare.settings import Settings

    return triager_for(Settings.model_fields["schedules_dir"].default / "triage")


def classify(body: str) -> Verdict:
    """What the message ``body`` is, read with the shipped triage data."""
    return default_triager().triage(body)
