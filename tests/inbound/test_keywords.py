"""Classifying an inbound SMS (pure: no database, no web), through the shipped triage data.

These were the tests of the regex classifier this replaced; they still hold, except where
issue 13 changed the rule (named at each such test).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aftercare.triage.verdict import classify, default_triager


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """Load the pipeline and the language models once, before any timed example."""
    default_triager().warm()


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
        ("REVOKE", "REVOKE"),
        ("optout", "OPTOUT"),
        ("STOP please", "STOP"),
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
    keywords = default_triager().data.vocabulary.keywords
    assert keywords.opt_out == {
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "REVOKE",
        "OPTOUT",
    }
    assert {"START", "UNSTOP", "YES"} == keywords.opt_in
    assert {"HELP", "INFO"} == keywords.help


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
    assert classify(body).answer is None


# --- Warning signs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "sign"),
    [
        ("my calf is swollen and painful", "swelling"),
        ("my calf is swollen and painful", "pain in a leg"),
        ("pain in my left calf", "pain in a leg"),
        ("Leg pain since yesterday", "pain in a leg"),
        ("my thigh feels hot", "warmth or redness"),
        ("the leg is warm and red", "warmth or redness"),
        ("Swelling round the ankle", "swelling"),
        ("there's a blister on my shin", "blistering"),
        ("looks like an ulcer", "ulcer or open wound"),
        ("there is an open wound", "ulcer or open wound"),
        ("the skin is breaking", "skin darkening or breaking down"),
        ("I have a rash", "rash or allergic reaction"),
        ("allergic reaction?", "rash or allergic reaction"),
        ("worried it's a clot", "possible blood clot"),
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
        ("my throat is swelling", "swelling of the lips, face, tongue or throat"),
        # Issue 13: collapse or fainting needs 999.
        ("I fainted this morning", "collapse or fainting"),
        ("feeling faint", "collapse or fainting"),
    ],
)
def test_breathlessness_or_chest_pain_then_urgent_emergency(body: str, sign: str) -> None:
    found = classify(body)
    assert found.kind == "urgent"
    assert found.emergency is True
    assert sign in found.signs


def test_negated_warning_sign_then_answered_but_no_alarm_unless_another_sign_follows() -> None:
    # Issue 13 reversed the old rule ("no calf pain" was urgent, to be safe): denials raised
    # false alarms. A sign after "but" still counts.
    assert classify("no calf pain").kind == "expected"
    assert not classify("the swelling has gone down").alarm
    assert classify("no calf pain but it is swollen").kind == "urgent"
    assert classify("worse than before").kind == "urgent"  # worsening: issue 13's urgent list


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


@pytest.mark.parametrize("body", ["", "   ", "hello", "🙂"])
def test_anything_else_then_unrecognised(body: str) -> None:
    assert classify(body).kind == "unrecognised"


def test_a_question_is_a_question_and_asking_to_rebook_is_a_booking() -> None:
    # Issue 13: a question is a concern for a nurse; another session is a booking request.
    assert classify("Who is this?").kind == "question"
    assert classify("Can I rebook?").kind == "booking"


@given(st.text(max_size=300))
def test_any_text_then_classified_without_error(body: str) -> None:
    found = classify(body)
    assert found.kind in {
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
    }
    assert found.severity in {"emergency", "urgent", "concern", "info"}
    assert (found.answer is not None) == (found.kind == "checkin_answer")
    assert found.emergency is False or found.kind == "urgent"
