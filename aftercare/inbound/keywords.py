"""Classify an inbound SMS: an opt-out or opt-in keyword, HELP, a check-in answer, a warning
sign, or none of these.

Pure: text in, a :class:`Classification` out. The rules are deliberately simple word and phrase
matches, biased towards safety, because a missed warning sign costs far more than a nurse's call
to a patient who was fine:

- Negation is *not* understood for warning signs: "no calf pain" and "the swelling has gone" are
  still urgent. Staff read the message before they call, so a false alarm costs a minute.
- A warning sign anywhere in the text beats everything except a message that is only an
  opt-out keyword (a patient's "STOP" must always stop the texts, as Twilio does).
- Keywords count only as the whole message ("STOP", " stop. "), like Twilio's own matching, so
  "please don't stop" never opts anybody out.
- Among check-in words the most concerning level wins, and a "faded"/"gone" word just after a
  negation ("not faded", "hasn't gone") counts as still fading, never as faded.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["opt_out", "opt_in", "help", "checkin_answer", "urgent", "unrecognised"]

# Twilio's default single-word keywords (Advanced Opt-Out), matched on the whole message.
OPT_OUT_KEYWORDS: Final = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_KEYWORDS: Final = frozenset({"START", "UNSTOP", "YES"})
HELP_KEYWORDS: Final = frozenset({"HELP", "INFO"})

# The check-in SMS asks: 1 faded well, 2 still fading, 3 still dark or painful, or worried.
CHECKIN_ANSWERS: Final = ("1", "2", "3")
CONCERNING_ANSWER: Final = "3"


@dataclass(frozen=True)
class Classification:
    """What a message is. ``signs`` names the warning signs found (labels, never the text)."""

    kind: Kind
    keyword: str | None = None
    answer: str | None = None
    emergency: bool = False
    signs: tuple[str, ...] = ()


# --- Normalising -----------------------------------------------------------------------------

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u02bc": "'"})
# One word, perhaps wrapped in whitespace, punctuation or emoji: "Stop.", "  HELP!  ".
_SINGLE_WORD = re.compile(r"^[\W_]*([^\W_]+)[\W_]*$")
# "1", "3.", "(3)", "1 - all gone", "2) some": an answer digit standing alone at the start (but
# not "2 weeks", "10" or "3:30").
_ANSWER_DIGIT = re.compile(r"^[\W_]*([123])(?:[\W_]*$|(?:\s*[-.,:;)!]+\s+|\s+[-.,:;)!]+\s*)\S)")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _normalise(body: str) -> str:
    text = unicodedata.normalize("NFKC", body).translate(_APOSTROPHES)
    return text.casefold()


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _flat(tokens: Iterable[str]) -> str:
    """Words joined by single spaces, so phrase patterns need not care about punctuation."""
    return " " + " ".join(tokens) + " "


# --- Warning signs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sign:
    label: str
    emergency: bool
    pattern: re.Pattern[str] | None = None
    # Or: a word from ``near`` within ``window`` words of a word from ``symptoms``.
    near: frozenset[str] = frozenset()
    symptoms: frozenset[str] = frozenset()
    window: int = 0


_LEGS = frozenset({"calf", "calves", "thigh", "thighs", "leg", "legs", "knee", "ankle", "ankles"})
_LEG_SYMPTOMS = frozenset(
    {
        "pain",
        "pains",
        "painful",
        "hurt",
        "hurts",
        "hurting",
        "ache",
        "aches",
        "aching",
        "achy",
        "sore",
        "tender",
        "throbbing",
        "cramp",
        "cramps",
        "cramping",
        "hot",
        "warm",
        "red",
        "redness",
    }
)
_CHEST_SYMPTOMS = frozenset(
    {
        "pain",
        "pains",
        "painful",
        "hurt",
        "hurts",
        "hurting",
        "ache",
        "aching",
        "tight",
        "tightness",
        "pressure",
        "sore",
        "heavy",
    }
)
_UNABLE = r"(?:can't|cant|cannot|can not|couldn't|couldnt|could not|unable to|struggling to|"
_UNABLE += r"struggle to|hard to|difficult to)"

SIGNS: Final = (
    Sign(
        "breathlessness",
        emergency=True,
        pattern=re.compile(
            r" breathless(?:ness)? | short(?:ness)? of breath | out of breath "
            rf"| {_UNABLE} (?:catch my )?breathe? "
            r"| (?:difficulty|trouble|problems?) breathing | breathing (?:is )?(?:difficult|hard) "
            r"| gasping "
        ),
    ),
    Sign(
        "chest pain", emergency=True, near=frozenset({"chest"}), symptoms=_CHEST_SYMPTOMS, window=3
    ),
    Sign(
        "coughing blood",
        emergency=True,
        pattern=re.compile(r" cough(?:s|ed|ing)? (?:up )?blood "),
    ),
    Sign(
        "severe allergic reaction",
        emergency=True,
        pattern=re.compile(
            r" anaphyla\w* | throat (?:is )?closing "
            r"| (?:throat|tongue|lips?|face) (?:is |are |feels? )?(?:swollen|swelling) "
        ),
    ),
    Sign(
        "leg pain, warmth or redness", emergency=False, near=_LEGS, symptoms=_LEG_SYMPTOMS, window=4
    ),
    Sign("swelling", emergency=False, pattern=re.compile(r" swell(?:s|ed|ing|ings)? | swollen ")),
    Sign(
        "blood clot",
        emergency=False,
        pattern=re.compile(r" clots? | dvt | thrombos[ie]s | embolism "),
    ),
    Sign("blistering", emergency=False, pattern=re.compile(r" blister\w* ")),
    Sign("ulcer", emergency=False, pattern=re.compile(r" ulcer(?:s|ed|ation|ating)? ")),
    Sign(
        "broken skin",
        emergency=False,
        pattern=re.compile(
            r" open (?:wound|sore)s? | wounds? | broken skin | necros\w* | weeping | oozing "
            r"| skin (?:is )?(?:breaking|broken|broke|splitting|split|peeling|black|turning black) "
            r"| pus | infect(?:ed|ion) "
        ),
    ),
    Sign(
        "rash or allergy",
        emergency=False,
        pattern=re.compile(r" rash(?:es)? | allerg(?:ic|y|ies) | hives "),
    ),
    Sign(
        "fainting",
        emergency=False,
        # Not "faint" alone ("the marks are faint now" is good news), nor "collapsed" (the
        # treated veins are meant to).
        pattern=re.compile(
            r" faint(?:ed|ing) | (?:feel|feels|felt|feeling) faint | passed out | blacked out "
        ),
    ),
    Sign("bleeding", emergency=False, pattern=re.compile(r" bleed(?:s|ing)? | bled ")),
)


def _near(tokens: list[str], sign: Sign) -> bool:
    anchors = [i for i, t in enumerate(tokens) if t in sign.near]
    hits = [i for i, t in enumerate(tokens) if t in sign.symptoms]
    return any(abs(a - h) <= sign.window for a in anchors for h in hits)


def warning_signs(tokens: list[str]) -> list[Sign]:
    """The warning signs named anywhere in the message, in :data:`SIGNS` order."""
    flat = _flat(tokens)
    return [
        sign
        for sign in SIGNS
        if (sign.pattern.search(flat) if sign.pattern is not None else _near(tokens, sign))
    ]


# --- Check-in words --------------------------------------------------------------------------

_LEVEL_3 = re.compile(
    r" dark | darker | pain | painful | sore | hurts? | hurting | worse | worried | worrying "
    r"| concerned | not happy "
)
_LEVEL_2 = re.compile(r" fading | better | improving | improved | lighter | paler | some left ")
_LEVEL_1 = re.compile(r" faded | gone | cleared | disappeared | vanished ")
_NEGATIONS = frozenset(
    {
        "not",
        "no",
        "never",
        "nothing",
        "hasn't",
        "hasnt",
        "haven't",
        "havent",
        "isn't",
        "isnt",
        "aren't",
        "arent",
        "didn't",
        "didnt",
        "don't",
        "dont",
    }
)
_LEVEL_1_WORDS = frozenset({"faded", "gone", "cleared", "disappeared", "vanished"})


def _negated_level_1(tokens: list[str]) -> bool:
    """A faded/gone word with a negation up to three words before it ("not all gone")."""
    return any(
        token in _LEVEL_1_WORDS and _NEGATIONS.intersection(tokens[max(0, i - 3) : i])
        for i, token in enumerate(tokens)
    )


def checkin_level(text: str, tokens: list[str]) -> str | None:
    """The check-in answer the message gives ("1", "2", "3"), the most concerning if several."""
    levels: set[str] = set()
    digit = _ANSWER_DIGIT.match(text)
    if digit:
        levels.add(digit.group(1))
    flat = _flat(tokens)
    if _LEVEL_3.search(flat):
        levels.add("3")
    if _LEVEL_2.search(flat):
        levels.add("2")
    if _LEVEL_1.search(flat):
        levels.add("2" if _negated_level_1(tokens) else "1")
    return max(levels) if levels else None


# --- The classifier --------------------------------------------------------------------------


def classify(body: str) -> Classification:
    """What the message ``body`` is; see the module docstring for the precedence."""
    text = _normalise(body)
    single = _SINGLE_WORD.match(text)
    word = single.group(1).upper() if single else None
    if word in OPT_OUT_KEYWORDS:
        return Classification("opt_out", keyword=word)
    tokens = _tokens(text)
    signs = warning_signs(tokens)
    if signs:
        return Classification(
            "urgent",
            emergency=any(s.emergency for s in signs),
            signs=tuple(s.label for s in signs),
        )
    if word in OPT_IN_KEYWORDS:
        return Classification("opt_in", keyword=word)
    if word in HELP_KEYWORDS:
        return Classification("help", keyword=word)
    answer = checkin_level(text, tokens)
    if answer is not None:
        return Classification("checkin_answer", answer=answer)
    return Classification("unrecognised")
