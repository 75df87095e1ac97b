"""The triage data beside the regimens (``schedules/triage/*.yaml``): vocabulary, context rules,
answers. Loaded and checked here; a mistake is refused with the file, the key and the reason.

Pure: files in, frozen values out. The spaCy pipeline is built from these in :mod:`.engine`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Severity = Literal["emergency", "urgent", "concern", "info"]
SEVERITIES: Final[tuple[Severity, ...]] = ("emergency", "urgent", "concern", "info")
RANK: Final[dict[str, int]] = {s: i for i, s in enumerate(SEVERITIES)}

CATEGORIES: Final = frozenset(
    {"negated", "historical", "past", "hypothetical", "other_person", "mild", "terminate"}
)
DIRECTIONS: Final = {"forward": "FORWARD", "backward": "BACKWARD", "both": "BIDIRECTIONAL"}
INTENTS: Final = (
    "stop_request",
    "booking",
    "question",
    "thanks",
    "checkin_1",
    "checkin_2",
    "checkin_3",
)
ANSWER_KEYS: Final = (
    "emergency",
    "urgent",
    "urgent_unknown_sender",
    "concern",
    "not_understood",
    "expected",
    "acknowledge",
    "booking",
    "stopped",
)
# The languages we answer in besides English (issue 13: the ten most spoken in England and Wales
# after English, and Welsh).
LANGUAGES: Final = ("pl", "ro", "pa", "ur", "pt", "es", "ar", "bn", "gu", "it", "cy")
PLACEHOLDERS: Final = frozenset({"clinic_name", "clinic_phone"})


class TriageDataError(ValueError):
    """A triage data file is missing or wrong: ``file: key: reason``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignSpec(_Strict):
    label: str = Field(min_length=1, max_length=80)
    severity: Severity
    patterns: tuple[str, ...] = Field(min_length=1)
    advice: str | None = None


class IntentSpec(_Strict):
    patterns: tuple[str, ...] = Field(min_length=1)


class Keywords(_Strict):
    opt_out: frozenset[str]
    opt_in: frozenset[str]
    help: frozenset[str]
    book: frozenset[str]
    courtesy: frozenset[str]

    @field_validator("opt_out", "opt_in", "help", "book")
    @classmethod
    def _upper(cls, words: frozenset[str]) -> frozenset[str]:
        if any(not w.isalpha() or w != w.upper() for w in words):
            raise ValueError("keywords are single words in capitals")
        return words


class Vocabulary(_Strict):
    version: int
    spelling: dict[str, str]
    keep_as_is: frozenset[str] = frozenset()
    groups: dict[str, tuple[str, ...]]
    signs: dict[str, SignSpec]
    intents: dict[str, IntentSpec]
    keywords: Keywords

    @field_validator("spelling")
    @classmethod
    def _one_word(cls, spelling: dict[str, str]) -> dict[str, str]:
        for key, value in spelling.items():
            if not key or " " in key or not value.strip():
                raise ValueError(f"{key!r}: one word on the left, some words on the right")
        return spelling

    @field_validator("intents")
    @classmethod
    def _known_intents(cls, intents: dict[str, IntentSpec]) -> dict[str, IntentSpec]:
        missing = set(INTENTS) - set(intents)
        extra = set(intents) - set(INTENTS)
        if missing or extra:
            raise ValueError(f"intents must be exactly {', '.join(INTENTS)}")
        return intents


class ContextRuleSpec(_Strict):
    pattern: str | tuple[str, ...]
    category: str
    direction: Literal["forward", "backward", "both"] = "both"
    scope: int | None = Field(default=None, ge=1, le=30)

    @property
    def phrases(self) -> tuple[str, ...]:
        return (self.pattern,) if isinstance(self.pattern, str) else self.pattern

    @field_validator("category")
    @classmethod
    def _category(cls, category: str) -> str:
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {', '.join(sorted(CATEGORIES))}")
        return category


class ContextRules(_Strict):
    version: int
    rules: tuple[ContextRuleSpec, ...]


class Phrases(_Strict):
    thanks: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()


class LanguageSpec(_Strict):
    min_confidence: float = Field(ge=0, le=1)
    min_letters: int = Field(ge=1)
    romanised: dict[str, frozenset[str]]
    phrases: dict[str, Phrases] = Field(default_factory=dict)
    safety: dict[str, str]

    @field_validator("phrases")
    @classmethod
    def _our_languages(cls, phrases: dict[str, Phrases]) -> dict[str, Phrases]:
        unknown = sorted(set(phrases) - set(LANGUAGES))
        if unknown:
            raise ValueError(f"not a language we answer in: {', '.join(unknown)}")
        return phrases

    @field_validator("safety")
    @classmethod
    def _every_language(cls, safety: dict[str, str]) -> dict[str, str]:
        missing = [code for code in ("en", *LANGUAGES) if not safety.get(code, "").strip()]
        if missing:
            raise ValueError(f"a safety line is missing for {', '.join(missing)}")
        if any("999" not in text or "111" not in text for text in safety.values()):
            raise ValueError("every safety line names 999 and 111")
        return safety


class Answers(_Strict):
    version: int
    answers: dict[str, str]
    advice: dict[str, str]
    acknowledge_every_hours: float = Field(gt=0, le=72)
    languages: LanguageSpec

    @field_validator("answers")
    @classmethod
    def _complete(cls, answers: dict[str, str]) -> dict[str, str]:
        missing = [k for k in ANSWER_KEYS if not answers.get(k, "").strip()]
        if missing:
            raise ValueError(f"missing answers: {', '.join(missing)}")
        for key, text in answers.items():
            names = {name for _, name, _, _ in string.Formatter().parse(text) if name}
            if names - PLACEHOLDERS:
                raise ValueError(f"{key}: unknown placeholder(s) {', '.join(sorted(names))}")
        emergency = answers["emergency"]
        if "999" not in emergency or (
            "111" in emergency and emergency.index("111") < emergency.index("999")
        ):
            raise ValueError("emergency: must name 999, before anything else")
        return answers


@dataclass(frozen=True)
class TriageData:
    """Everything the triage engine and its answers read, checked."""

    folder: Path
    vocabulary: Vocabulary
    context: ContextRules
    answers: Answers


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TriageDataError(f"{path}: cannot be read ({exc.strerror})") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise TriageDataError(f"{path}: {where}: not valid YAML") from exc


M = TypeVar("M", bound=BaseModel)


def _parse(path: Path, model: type[M]) -> M:
    raw = _read(path)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise TriageDataError(f"{path}: {key}: {first['msg']}") from exc


def load_data(folder: Path) -> TriageData:
    """Read and check ``folder``'s vocabulary.yaml, context.yaml and answers.yaml."""
    vocabulary = _parse(folder / "vocabulary.yaml", Vocabulary)
    context = _parse(folder / "context.yaml", ContextRules)
    answers = _parse(folder / "answers.yaml", Answers)
    vocab_path = folder / "vocabulary.yaml"
    for name, sign in vocabulary.signs.items():
        if sign.advice is not None and sign.advice not in answers.advice:
            raise TriageDataError(
                f"{vocab_path}: signs.{name}.advice: no advice {sign.advice!r} in answers.yaml"
            )
    for code in answers.languages.romanised:
        if code not in LANGUAGES:
            where = f"{folder / 'answers.yaml'}: languages.romanised.{code}"
            raise TriageDataError(f"{where}: not a language we answer in")
    return TriageData(folder, vocabulary, context, answers)
