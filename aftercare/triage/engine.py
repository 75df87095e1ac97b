"""Read a reply the way patients write: the words found (medspacy's TargetMatcher, over spaCy's
lookup lemmas, with rapidfuzz for typos) and what surrounds them (medspacy's ConText: denied,
over, asked about, somebody else's, played down).

The pipeline is built once per process, on first use (:func:`engine_for`), from the data in
``schedules/triage`` (:mod:`.data`); nothing is downloaded: spaCy's blank English, the lemma
tables of spacy-lookups-data and the rules are all local. Sentences are split by spaCy's
rule-based sentencizer, not medspacy's PyRuSH, which logs each message's words at DEBUG.

``read(text)`` is pure: text in, a :class:`Reading` (labels, never the text) out.
"""

from __future__ import annotations

import re
import threading
import unicodedata
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aftercare.triage.data import DIRECTIONS, RANK, Severity, TriageData, load_data
from aftercare.triage.patterns import PatternError, compile_pattern, expand_first

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Span

# ConText's own category names for ours (its default span attributes use the first four).
_CONTEXT_CATEGORY: Final = {
    "negated": "NEGATED_EXISTENCE",
    "historical": "HISTORICAL",
    "past": "PAST",
    "hypothetical": "HYPOTHETICAL",
    "other_person": "FAMILY",
    "mild": "MILD",
    "terminate": "TERMINATE",
}
_INTENT_PREFIX: Final = "intent:"
_INSIDE_TOO: Final = frozenset({"MILD", "FAMILY"})
# A word the dictionary does not know is read as the nearest vocabulary word at this rapidfuzz
# ratio or more (4-letter words need more: one wrong letter of four is a different word).
FUZZY_CUTOFF: Final = 85.0
FUZZY_CUTOFF_SHORT: Final = 88.0
FUZZY_MIN_LENGTH: Final = 4
_APOSTROPHES: Final = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u02bc": "'"})
_CACHE_LIMIT: Final = 100_000
# Characters a reply keeps: letters and digits of any script, spaces, and a little punctuation.
_NOT_KEPT: Final = re.compile(r"[^\w\s'/&?.,!-]|_")


@dataclass(frozen=True)
class Found:
    """One sign or intent in a reply, and what its context says about it."""

    name: str
    negated: bool = False
    historical: bool = False
    past: bool = False
    hypothetical: bool = False
    other_person: bool = False
    mild: bool = False


@dataclass(frozen=True)
class Reading:
    """What the engine read in a reply: every sign and intent found, with its context."""

    signs: tuple[Found, ...]
    intents: tuple[Found, ...]
    words: int
    known_words: int
    # Something in the message says a sign is over ("fine now"), wherever it stands.
    resolved: bool = False

    def has_intent(self, name: str) -> bool:
        """An intent found and not denied or merely asked about."""
        return any(f.name == name and not (f.negated or f.hypothetical) for f in self.intents)


def normalise(text: str) -> str:
    """NFKC, one kind of apostrophe, lower case; control characters and emoji become spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()
    text = text.replace("/", " / ")  # "8/10" is three words
    return _NOT_KEPT.sub(" ", text).strip()


def _import_quietly() -> None:
    """Import spaCy and medspacy with their import-time DeprecationWarnings silenced (weasel
    uses click's old parser API); nothing of ours is hidden."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import medspacy  # noqa: F401  (registers medspacy's pipeline factories)
        import spacy  # noqa: F401


class Lexicon:
    """Each typed word to the form patterns are written in: spelling fixes, typo matching
    against the vocabulary, then spaCy's lemma lookup (``coughed`` -> ``cough``)."""

    def __init__(self, data: TriageData) -> None:
        _import_quietly()
        from spacy.lang.en.stop_words import STOP_WORDS
        from spacy.lookups import load_lookups

        lookups = load_lookups("en", ["lemma_lookup", "lemma_index"])
        # spaCy's tables are keyed by string hashes: look words up through the table.
        self._lemmas = lookups.get_table("lemma_lookup")
        known: set[str] = set(STOP_WORDS)
        known.update(str(v) for v in self._lemmas.values())
        for words in lookups.get_table("lemma_index").values():
            known.update(words)
        self._spelling = dict(data.vocabulary.spelling)
        # Emoji and other symbols in the spelling table, read as the words they stand for.
        self._symbols = {k: v for k, v in self._spelling.items() if not k[0].isalnum()}
        self._skeletons: dict[str, str] = {}
        self.vocabulary = sorted(_vocabulary_words(data))
        self._keep = frozenset(data.vocabulary.keep_as_is)
        self._known = frozenset(known | set(self.vocabulary) | set(self._spelling))
        self._cache: dict[str, str] = {}
        self._known_cache: dict[str, bool] = {}
        self._lock = threading.Lock()

    def known(self, word: str) -> bool:
        hit = self._known_cache.get(word)
        if hit is None:
            hit = word in self._known or word in self._lemmas or not word.isalpha()
            with self._lock:
                if len(self._known_cache) >= _CACHE_LIMIT:
                    self._known_cache.clear()
                self._known_cache[word] = hit
        return hit

    def lemma(self, word: str) -> str:
        return str(self._lemmas.get(word, word))

    def symbols(self, text: str) -> str:
        """Emoji and symbols replaced by their words ("🦵🔥" -> " leg  hot ")."""
        if text.isascii():
            return text
        for symbol, words in self._symbols.items():
            if symbol in text:
                text = text.replace(symbol, f" {words} ")
        return text

    def respell(self, text: str) -> str:
        """Whole words swapped by the spelling table ("cant" -> "unable"), before spaCy splits
        them ("cant" would become "ca" "nt")."""
        out = []
        for word in text.split():
            core = word.rstrip(".,!?")
            out.append(self._spelling.get(core, core) + word[len(core) :])
        return " ".join(out)

    def canon(self, word: str) -> str:
        """The pattern form of one lower-case word."""
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        fixed = self._spelling.get(word, word)
        if fixed in self._keep:
            # spaCy's lookup table has quirks ("number" -> "numb", "worse" -> "wrong").
            result = fixed
        elif fixed == word and not self.known(word) and len(word) >= FUZZY_MIN_LENGTH:
            result = self.lemma(self._nearest(word) or word)
        else:
            result = self.lemma(fixed)
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = result
        return result

    def _nearest(self, word: str) -> str | None:
        """The vocabulary word a typo stands for: by edit-distance ratio; else one edit away
        counting a swap of neighbours as one ("pian"); else the same consonants when the
        vowels were dropped, as in text-speak ("brthe", "chst")."""
        from rapidfuzz import fuzz, process
        from rapidfuzz.distance import DamerauLevenshtein

        cutoff = FUZZY_CUTOFF_SHORT if len(word) <= FUZZY_MIN_LENGTH else FUZZY_CUTOFF
        best = process.extractOne(word, self.vocabulary, scorer=fuzz.ratio, score_cutoff=cutoff)
        if best:
            return str(best[0])
        swapped = process.extractOne(
            word, self.vocabulary, scorer=DamerauLevenshtein.distance, score_cutoff=1
        )
        if swapped and len(swapped[0]) == len(word):
            return str(swapped[0])
        if not self._skeletons:
            for known in self.vocabulary:
                if len(known) >= FUZZY_MIN_LENGTH:
                    self._skeletons.setdefault(_skeleton(known), known)
        vowels = sum(1 for ch in word if ch in _VOWELS)
        if vowels <= 1 and len(_skeleton(word)) >= 3:
            return self._skeletons.get(_skeleton(word))
        return None


_VOWELS: Final = frozenset("aeiou")


def _skeleton(word: str) -> str:
    """The first letter and the consonants after it: "breathe" -> "brth"."""
    return word[:1] + "".join(ch for ch in word[1:] if ch not in _VOWELS)


def _vocabulary_words(data: TriageData) -> set[str]:
    words: set[str] = set()
    for group in data.vocabulary.groups.values():
        words.update(group)
    patterns = [p for s in data.vocabulary.signs.values() for p in s.patterns]
    patterns += [p for i in data.vocabulary.intents.values() for p in i.patterns]
    patterns += [p for r in data.context.rules for p in r.phrases]
    for pattern in patterns:
        for part in pattern.split():
            for alt in part.rstrip("?").split("|"):
                if alt.isalpha() and alt.islower():
                    words.add(alt)
    return words


class Engine:
    """The spaCy + medspacy pipeline for one triage data folder."""

    def __init__(self, data: TriageData) -> None:
        self.data = data

    @cached_property
    def lexicon(self) -> Lexicon:
        return Lexicon(self.data)

    @cached_property
    def nlp(self) -> Language:
        return self._build()

    def _build(self) -> Language:
        _import_quietly()
        import spacy
        from loguru import logger
        from medspacy.context import ConTextRule
        from medspacy.target_matcher import TargetRule

        # PyRuSH (medspacy's default sentence splitter) logs every message's words at DEBUG;
        # it is not in this pipeline, and is silenced in case anything ever loads it.
        logger.disable("PyRuSH")
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        matcher: Any = nlp.add_pipe(
            "medspacy_target_matcher",
            config={"result_type": "group", "span_group_name": "triage", "prune": False},
        )
        context: Any = nlp.add_pipe(
            "medspacy_context",
            config={
                "rules": None,
                "input_span_type": "group",
                "span_group_name": "triage",
                "span_attrs": None,
                "prune_on_modifier_overlap": True,
            },
        )
        vocab = self.data.vocabulary
        canon = self.lexicon.canon
        rules = []
        found: list[tuple[str, str, tuple[str, ...]]] = [
            (f"signs.{n}", n, s.patterns) for n, s in vocab.signs.items()
        ]
        found += [
            (f"intents.{n}", _INTENT_PREFIX + n, i.patterns) for n, i in vocab.intents.items()
        ]
        for key, category, patterns in found:
            for i, pattern in enumerate(patterns):
                tokens = self._compile(f"{key}.patterns.{i}", pattern, canon)
                for k, expanded in enumerate(expand_first(tokens)):
                    # medspacy maps a match back to its rule by the literal: keep each unique.
                    rules.append(
                        TargetRule(
                            literal=f"{category}#{i}.{k}", category=category, pattern=expanded
                        )
                    )
        matcher.add(rules)
        modifiers = []
        for i, rule in enumerate(self.data.context.rules):
            terminate = rule.category == "terminate"
            for j, phrase in enumerate(rule.phrases):
                tokens = self._compile(f"rules.{i}.pattern.{j}", phrase, canon, "context.yaml")
                for k, expanded in enumerate(expand_first(tokens)):
                    modifiers.append(
                        ConTextRule(
                            literal=f"rules.{i}.{j}.{k}",
                            category=_CONTEXT_CATEGORY[rule.category],
                            pattern=expanded,
                            direction="TERMINATE" if terminate else DIRECTIONS[rule.direction],
                            # A terminator's own scope is kept to its neighbours: medspacy's
                            # tuple_overlaps misses a scope that contains another whole, so a
                            # sentence-wide terminator would never cut "not breathless, but".
                            max_scope=1 if terminate else rule.scope,
                        )
                    )
        context.add(modifiers)
        return nlp

    def _compile(
        self, key: str, pattern: str, canon: Any, file: str = "vocabulary.yaml"
    ) -> list[dict[str, Any]]:
        from aftercare.triage.data import TriageDataError

        try:
            return compile_pattern(pattern, groups=self.data.vocabulary.groups, canon=canon)
        except PatternError as exc:
            raise TriageDataError(f"{self.data.folder / file}: {key}: {exc}") from exc

    def warm(self) -> None:
        """Build everything now (start-up, ``aftercare check``), not on the first reply."""
        self.read("warm up")

    def doc(self, text: str) -> Doc:
        nlp = self.nlp
        lexicon = self.lexicon
        doc = nlp.make_doc(lexicon.respell(normalise(lexicon.symbols(text[:2000]))))
        canon = self.lexicon.canon
        for token in doc:
            token.norm_ = canon(token.lower_)
        for _, component in nlp.pipeline:
            doc = component(doc)
        return doc

    def read(self, text: str) -> Reading:
        doc = self.doc(text)
        signs, intents = [], []
        for span in doc.spans.get("triage", []):
            found = _found(span)
            if found.name.startswith(_INTENT_PREFIX):
                intents.append(
                    Found(**{**found.__dict__, "name": found.name[len(_INTENT_PREFIX) :]})
                )
            else:
                signs.append(found)
        words = [t for t in doc if t.is_alpha]
        known = sum(1 for t in words if self.lexicon.known(t.lower_))
        resolved = any(m.category == "HISTORICAL" for m in doc._.context_graph.modifiers)
        return Reading(tuple(signs), tuple(intents), len(words), known, resolved)


def _found(span: Span) -> Found:
    # A denial inside the phrase itself ("not" in "the pain will not stop") is part of what
    # was found, not its context (medspacy's overlap test misses a modifier inside a target);
    # "a bit" inside "my calf is a bit achy" still plays it down.
    categories = {
        m.category
        for m in span._.modifiers
        if m.category in _INSIDE_TOO
        or not (span.start <= m.modifier_span[0] and m.modifier_span[1] <= span.end)
    }
    return Found(
        name=span.label_,
        negated="NEGATED_EXISTENCE" in categories,
        historical="HISTORICAL" in categories,
        past="PAST" in categories,
        hypothetical="HYPOTHETICAL" in categories,
        other_person="FAMILY" in categories,
        mild="MILD" in categories,
    )


def worst(severities: Iterable[Severity]) -> Severity | None:
    ranked = sorted(severities, key=RANK.__getitem__)
    return ranked[0] if ranked else None


_ENGINES: dict[Path, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(folder: Path) -> Engine:
    """The process's engine for ``folder`` (data read and checked on the first call; the
    pipeline built on the first reply or :meth:`Engine.warm`)."""
    key = folder.resolve()
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = Engine(load_data(key))
        return engine
