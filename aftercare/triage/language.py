"""Which language a reply is in, when that is not English: lingua-language-detector, offline,
restricted to English and the languages we answer in (:data:`.data.LANGUAGES`).

lingua misreads short texts ("ok" as Polish) and reads romanised Urdu as English or Welsh, so
an answer is trusted only for a text of enough letters at enough confidence (answers.yaml), or
in a script of its own; romanised Urdu and Panjabi are recognised by their common words.
"""

from __future__ import annotations

import threading
import unicodedata
from functools import cached_property
from typing import TYPE_CHECKING, Final

from aftercare.triage.data import LANGUAGES, LanguageSpec

if TYPE_CHECKING:
    from lingua import LanguageDetector

ENGLISH: Final = "en"
# Romanised words needed before a text counts as that language.
ROMANISED_MIN_WORDS: Final = 3
# Language names for staff (the flag says which interpreter is needed).
LANGUAGE_NAMES: Final = {
    "pl": "Polish",
    "ro": "Romanian",
    "pa": "Panjabi",
    "ur": "Urdu",
    "pt": "Portuguese",
    "es": "Spanish",
    "ar": "Arabic",
    "bn": "Bengali",
    "gu": "Gujarati",
    "it": "Italian",
    "cy": "Welsh",
}


def _script_letters(text: str) -> tuple[int, int]:
    """(letters, letters outside the Latin script)."""
    letters = other = 0
    for ch in text:
        if ch.isalpha():
            letters += 1
            if ord(ch) > 0x024F and not unicodedata.name(ch, "").startswith("LATIN"):
                other += 1
    return letters, other


class LanguageGuard:
    """Says "en" unless a text is confidently in one of our other languages."""

    def __init__(self, spec: LanguageSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()

    @cached_property
    def detector(self) -> LanguageDetector:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

        codes = [ENGLISH, *LANGUAGES]
        languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in codes]
        # All models loaded at once (a few seconds, about 300 MB): lazily, the first replies in
        # each language would each wait for theirs.
        builder = LanguageDetectorBuilder.from_languages(*languages)
        return builder.with_preloaded_language_models().build()

    def detect(self, text: str, *, english_share: float) -> str:
        """The ISO 639-1 code of ``text``'s language; ``english_share`` is the share of its
        words an English dictionary knows (a text mostly of English words is English)."""
        letters, other = _script_letters(text)
        if letters == 0:
            return ENGLISH
        words = [w.strip(".,!?'\"") for w in text.casefold().split()]
        for code, markers in self.spec.romanised.items():
            if sum(1 for w in words if w in markers) >= ROMANISED_MIN_WORDS and english_share < 0.7:
                return code
        non_latin = other * 2 > letters
        if not non_latin and (
            english_share >= 0.8 or (letters < self.spec.min_letters and english_share >= 0.5)
        ):
            return ENGLISH
        with self._lock:
            values = self.detector.compute_language_confidence_values(text)
        if not values:
            return ENGLISH
        best = values[0]
        code = best.language.iso_code_639_1.name.lower()
        if code == ENGLISH:
            return ENGLISH
        # Trusted when confident, in a script of its own, or when an English dictionary knows
        # under half of the words (then it is not English, whatever the confidence).
        unknown_words = english_share < 0.5 and letters * 2 >= self.spec.min_letters
        if non_latin or best.value >= self.spec.min_confidence or unknown_words:
            return code
        return ENGLISH

    def phrase(self, text: str, language: str) -> str | None:
        """ "stop" or "thanks" when ``text`` holds one of that language's phrases for it."""
        phrases = self.spec.phrases.get(language)
        if phrases is None:
            return None
        padded = " " + " ".join(w.strip(".,!?'\"") for w in text.casefold().split()) + " "
        for kind, listed in (("stop", phrases.stop), ("thanks", phrases.thanks)):
            if any(f" {p.casefold()} " in padded for p in listed):
                return kind
        return None
