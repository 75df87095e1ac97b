"""The labelled reply corpus (tests/replies/corpus.yaml) is well formed.

This checks the labels' shape only; the triage engine is measured against the corpus elsewhere.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

CORPUS = Path(__file__).parents[1] / "replies" / "corpus.yaml"
FIELDS = {
    "text",
    "severity",
    "stop",
    "symptom",
    "lang",
    "context",
    "checkin_answer",
    "booking",
    "note",
}
LEVELS = {"emergency", "urgent", "concern", "info"}
LANGS = {"en", "pl", "ro", "pa", "ur", "pt", "es", "ar", "bn", "gu", "it", "cy"}


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    data = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
    assert isinstance(data, list)
    return data


def entry_errors(entry: dict[str, Any]) -> list[str]:
    errors = _shape_errors(entry) + _consistency_errors(entry)
    if not isinstance(entry.get("note"), str) or not entry["note"].strip():
        errors.append("no note")
    return errors


def _shape_errors(entry: dict[str, Any]) -> list[str]:
    """Each field present and of its kind (the note is checked last, by entry_errors)."""
    errors = []
    if set(entry) != FIELDS:
        errors.append(f"fields differ: {sorted(set(entry) ^ FIELDS)}")
    if not isinstance(entry.get("text"), str) or not entry["text"].strip():
        errors.append("empty text")
    if entry.get("severity") not in LEVELS:
        errors.append(f"severity {entry.get('severity')!r}")
    errors += [
        f"{flag} is not a boolean"
        for flag in ("stop", "symptom", "booking")
        if not isinstance(entry.get(flag), bool)
    ]
    if entry.get("lang") not in LANGS:
        errors.append(f"lang {entry.get('lang')!r}")
    if entry.get("context") not in ("none", "checkin"):
        errors.append(f"context {entry.get('context')!r}")
    if entry.get("checkin_answer") not in (None, "1", "2", "3"):
        errors.append(f"checkin_answer {entry.get('checkin_answer')!r}")
    return errors


def _consistency_errors(entry: dict[str, Any]) -> list[str]:
    """The fields agree with each other."""
    errors = []
    if entry.get("context") == "none" and entry.get("checkin_answer") is not None:
        errors.append("a check-in answer without a check-in")
    if entry.get("severity") in ("emergency", "urgent"):
        if entry.get("checkin_answer") in ("1", "2"):
            errors.append("a warning sign labelled as a routine check-in answer")
        if entry.get("symptom") is not True:
            errors.append("a warning sign not marked as a symptom")
    return errors


def test_every_entry_is_well_formed(corpus: list[dict[str, Any]]) -> None:
    bad = {i: errs for i, e in enumerate(corpus) if (errs := entry_errors(e))}
    assert bad == {}


def test_text_and_context_are_unique(corpus: list[dict[str, Any]]) -> None:
    seen = Counter((e["text"], e["context"]) for e in corpus)
    assert [key for key, n in seen.items() if n > 1] == []


def test_corpus_covers_every_level_language_and_case(corpus: list[dict[str, Any]]) -> None:
    levels = Counter(e["severity"] for e in corpus)
    assert len(corpus) >= 500
    assert min(levels[level] for level in LEVELS) >= 90
    assert {e["lang"] for e in corpus} == LANGS
    assert sum(e["stop"] for e in corpus) >= 45
    assert sum(e["context"] == "checkin" for e in corpus) >= 40
    assert any(e["booking"] and e["context"] == "checkin" for e in corpus)


def test_the_checks_catch_a_bad_entry() -> None:
    bad = {
        "text": "gone dark purple then black",
        "severity": "urgent",
        "stop": "no",
        "symptom": False,
        "lang": "english",
        "context": "checkin",
        "checkin_answer": "1",
        "booking": False,
    }
    assert entry_errors(bad) == [
        "fields differ: ['note']",
        "stop is not a boolean",
        "lang 'english'",
        "a warning sign labelled as a routine check-in answer",
        "a warning sign not marked as a symptom",
        "no note",
    ]
