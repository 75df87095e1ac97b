"""Scenario 6, reply triage speed: replies triaged per second on one core, in one thread.

Aftercare: the whole triage of each reply (keywords, the medspacy pipeline, typo matching,
context, the language guard), warmed up first (the pipeline and lingua's models load once per
process). Baseline, in the same run on the same texts: spaCy's blank English tokenizer alone,
the least any spaCy-based reader does. The texts are the labelled corpus's replies
(tests/replies/corpus.yaml: keywords, chatter, long rambling messages, other languages), or
generated ones when it is absent. Target (issue 13): at least 1,000 replies a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import yaml

from aftercare.triage.verdict import default_triager
from bench.context import Bench
from bench.infra import REPO, log
from bench.results import Row, summary

NAME = "triage"
TARGET = 1000.0
CORPUS = REPO / "tests" / "replies" / "corpus.yaml"
FALLBACK = [
    "my calf is swollen and red",
    "thanks!",
    "STOP",
    "no chest pain, just bruising",
    "cant brethe",
    "2 - still some left",
    "Boli mnie noga i jest spuchnięta",
    "Hi, just to say the stockings are a bit tight and my toes have gone blue, is that ok?",
]


def _texts() -> list[str]:
    if CORPUS.exists():
        return [str(e["text"]) for e in yaml.safe_load(CORPUS.read_text(encoding="utf-8"))]
    return FALLBACK * 100


def _rate(texts: Sequence[str], passes: int, one: Callable[[str], object]) -> float:
    started = time.perf_counter()
    for _ in range(passes):
        for text in texts:
            one(text)
    return passes * len(texts) / (time.perf_counter() - started)


def run(bench: Bench) -> list[Row]:
    import spacy

    texts = _texts()
    passes = bench.size(5, 1)
    triager = default_triager()
    triager.warm()
    tokenizer = spacy.blank("en")
    ours: list[float] = []
    theirs: list[float] = []
    for rep in range(bench.reps):
        log(f"triage {rep + 1}/{bench.reps}: {passes} x {len(texts)} replies")
        ours.append(_rate(texts, passes, triager.triage))
        theirs.append(_rate(texts, passes, tokenizer.make_doc))
    row = Row(
        NAME,
        f"replies triaged per second, one core ({len(texts)} corpus replies)",
        "replies/s",
        summary(ours),
        "spaCy blank English tokenizer only",
        summary(theirs),
        target=f"≥ {TARGET:,.0f}/s",
    )
    row.met = min(ours) >= TARGET
    return [row]
