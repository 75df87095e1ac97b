"""Classifying an inbound SMS (pure: no database, no web)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aftercare.inbound.keywords import (
    HELP_KEYWORDS,
    OPT_IN_KEYWORDS,
    OPT_OUT_KEYWORDS,
    classify,
)

# --- Keywords --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "keyword"),
    [
        ("STOP", "STOP"),
        ("stop", "STOP"),
        ("Stop.", "STOP"),
        ("  stop!  ", "STOP"),
        ("STOPALL", "STOPALL"),
        ("Unsubscribe", "UNSUBSCRIBE"),
        ("cancel", "CANCEL"),
        ("End", "END"),
        ("quit", "QUIT"),
        ("\nSTOP\n", "STOP"),
        ("ＳＴＯＰ", "STOP"),  # full-width letters from some keyboards
    ],
)
def test_opt_out_keyword_alone_in_any_case_or_punctuation_then_opt_out(
    body: str, keyword: str
) -> None:
    found = classify(body)
    assert (found.kind, found.keyword) == ("opt_out", keyword)


@pytest.mark.parametrize(
    "body",
    ["please don't stop", "stop it", "Can I cancel my appointment?", "STOP STOP", "stopped"],
)
def test_opt_out_word_inside_a_sentence_then_not_an_opt_out(body: str) -> None:
    assert classify(body).kind != "opt_out"


@pytest.mark.parametrize(
    ("body", "keyword"), [("START", "START"), ("unstop", "UNSTOP"), ("Yes", "YES")]
)
def test_opt_in_keyword_then_opt_in(body: str, keyword: str) -> None:
    found = classify(body)
    assert (found.kind, found.keyword) == ("opt_in", keyword)


@pytest.mark.parametrize(
    ("body", "keyword"), [("HELP", "HELP"), ("help?", "HELP"), ("Info", "INFO")]
)
def test_help_keyword_then_help(body: str, keyword: str) -> None:
    found = classify(body)
    assert (found.kind, found.keyword) == ("help", keyword)


def test_keyword_sets_are_twilios_defaults() -> None:
    assert {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"} == OPT_OUT_KEYWORDS
    assert {"START", "UNSTOP", "YES"} == OPT_IN_KEYWORDS
    assert {"HELP", "INFO"} == HELP_KEYWORDS


# --- Check-in answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ("1", "1"),
        ("2", "2"),
        ("3", "3"),
        (" 3. ", "3"),
        ("(2)", "2"),
        ("1 - all gone", "1"),
        ("2) a few left", "2"),
        ("Faded", "1"),
        ("They have all gone, thank you!", "1"),
        ("all disappeared", "1"),
        ("still fading", "2"),
        ("Much better", "2"),
        ("still dark", "3"),
        ("Dark", "3"),
        ("a bit painful still", "3"),
        ("worse than before", "3"),
        ("I'm worried about them", "3"),
    ],
)
def test_checkin_answer_as_digit_or_words_then_recognised(body: str, answer: str) -> None:
    found = classify(body)
    assert (found.kind, found.answer) == ("checkin_answer", answer)


@pytest.mark.parametrize(
    "body", ["not faded yet", "They haven't gone", "not all gone", "it hasn’t faded"]
)
def test_checkin_faded_word_after_a_negation_then_still_fading_not_faded(body: str) -> None:
    assert classify(body).answer == "2"


def test_checkin_answer_mixing_levels_then_the_most_concerning_wins() -> None:
    assert classify("Most have faded but one is still dark").answer == "3"
    assert classify("1, but some are still fading").answer == "2"


@pytest.mark.parametrize("body", ["2 weeks ago", "10", "3:30 tomorrow?", "1.5"])
def test_number_that_is_not_an_answer_digit_then_not_a_checkin_answer(body: str) -> None:
    assert classify(body).kind == "unrecognised"


# --- Warning signs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "sign"),
    [
        ("my calf is swollen and painful", "swelling"),
        ("my calf is swollen and painful", "leg pain, warmth or redness"),
        ("pain in my left calf", "leg pain, warmth or redness"),
        ("Leg pain since yesterday", "leg pain, warmth or redness"),
        ("my thigh feels hot", "leg pain, warmth or redness"),
        ("the leg is warm and red", "leg pain, warmth or redness"),
        ("Swelling round the ankle", "swelling"),
        ("there's a blister on my shin", "blistering"),
        ("looks like an ulcer", "ulcer"),
        ("there is an open wound", "broken skin"),
        ("the skin is breaking", "broken skin"),
        ("I have a rash", "rash or allergy"),
        ("allergic reaction?", "rash or allergy"),
        ("I fainted this morning", "fainting"),
        ("feeling faint", "fainting"),
        ("worried it's a clot", "blood clot"),
    ],
)
def test_warning_sign_anywhere_then_urgent(body: str, sign: str) -> None:
    found = classify(body)
    assert found.kind == "urgent"
    assert sign in found.signs
    assert found.emergency is False


@pytest.mark.parametrize(
    ("body", "sign"),
    [
        ("I feel breathless", "breathlessness"),
        ("short of breath when I walk", "breathlessness"),
        ("I can't breathe properly", "breathlessness"),
        ("cant breath", "breathlessness"),
        ("I have chest pain", "chest pain"),
        ("pain in my chest", "chest pain"),
        ("my chest feels tight", "chest pain"),
        ("coughing up blood", "coughing blood"),
        ("my throat is swelling", "severe allergic reaction"),
    ],
)
def test_breathlessness_or_chest_pain_then_urgent_emergency(body: str, sign: str) -> None:
    found = classify(body)
    assert found.kind == "urgent"
    assert found.emergency is True
    assert sign in found.signs


def test_negated_warning_sign_then_still_urgent_because_safer() -> None:
    # Negation is deliberately not understood: a nurse reading "no calf pain" loses a minute,
    # a missed "no calf pain... but it is swollen" could cost far more.
    assert classify("no calf pain").kind == "urgent"
    assert classify("the swelling has gone down").kind == "urgent"


@pytest.mark.parametrize(
    "body",
    [
        "the marks are faint now",  # "faint" is good news, only "fainted"/"feel faint" matter
        "the veins collapsed nicely",
        "hot weather today",  # heat with no leg
        "Thanks, see you soon",
        "I had a red car",
        "reduced a lot",  # "red" inside a word
        "crashed the car",  # "rash" inside a word
    ],
)
def test_harmless_text_with_lookalike_words_then_not_urgent(body: str) -> None:
    assert classify(body).kind != "urgent"


def test_danger_beats_keywords_and_answers_but_not_a_pure_stop() -> None:
    assert classify("STOP").kind == "opt_out"
    assert classify("stop, my calf is swollen").kind == "urgent"
    assert classify("help I can't breathe").kind == "urgent"
    assert classify("1 but my leg is red and hot").kind == "urgent"
    assert classify("yes chest pain").emergency is True


@pytest.mark.parametrize("body", ["", "   ", "hello", "Who is this?", "🙂", "Can I rebook?"])
def test_anything_else_then_unrecognised(body: str) -> None:
    assert classify(body).kind == "unrecognised"


@given(st.text(max_size=300))
def test_any_text_then_classified_without_error(body: str) -> None:
    found = classify(body)
    assert found.kind in {
        "opt_out",
        "opt_in",
        "help",
        "checkin_answer",
        "urgent",
        "unrecognised",
    }
    assert (found.answer is not None) == (found.kind == "checkin_answer")
    assert found.emergency is False or found.kind == "urgent"
