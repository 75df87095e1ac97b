"""Reply triage (pure: the engine and the data in schedules/triage, no database, no web).

The examples are written here from the issue's categories, not taken from the labelled corpus
(tests/replies/), which measures the engine as a whole (tests/inbound/test_triage_corpus.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from loguru import logger

from aftercare.triage.data import TriageDataError, load_data
from aftercare.triage.engine import Engine
from aftercare.triage.verdict import Triager, Verdict, triager_for
from tests.conftest import REPO

DATA = REPO / "schedules" / "triage"


@pytest.fixture(scope="module")
def triager() -> Triager:
    return triager_for(DATA)


def verdict(triager: Triager, text: str) -> Verdict:
    return triager.triage(text)


# --- Severity ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I feel really breathless",
        "cant brethe properly",
        "chest tite since this morning",
        "pain in my chest when I breathe in",
        "I coughed blood this morning",
        "my lips are swelling up",
        "puffy eyes and my throat feels tight",
        "she fainted in the kitchen",
        "went down like a sack of potatoes",
        "i'm all wheezy",
    ],
)
def test_emergency_signs_in_patients_words_then_emergency(triager: Triager, text: str) -> None:
    found = verdict(triager, text)
    assert (found.kind, found.severity) == ("urgent", "emergency"), found


@pytest.mark.parametrize(
    "text",
    [
        "my calf is swollen and painful",
        "my dad's leg is red and hot",
        "the spot has gone dark purple then black",
        "there's a blister on my ankle",
        "running a temperature and the area is angry and spreading",
        "toes are numb and cold with the stocking on",
        "the pain is agony",
        "pain is 8/10",
        "can't stand on it",
        "my ankle is double the size",
        "it bleeds every time I take the stocking off",
        "there's an open wound that keeps weeping",
    ],
)
def test_urgent_signs_including_inflections_and_relatives_then_urgent(
    triager: Triager, text: str
) -> None:
    found = verdict(triager, text)
    assert (found.kind, found.severity) == ("urgent", "urgent"), found
    assert found.signs


@pytest.mark.parametrize(
    "text",
    [
        "no calf pain, no swelling",
        "no chest pain or breathlessness, just bruising",
        "was swelling the first day but fine now",
        "sore the first day, fine now",
        "the bleeding has stopped",
    ],
)
def test_denied_or_past_signs_then_no_alarm_but_still_answered(triager: Triager, text: str) -> None:
    found = verdict(triager, text)
    assert not found.alarm, found
    assert found.answer != "3"
    assert found.symptom


def test_what_if_question_then_a_question_not_an_alarm(triager: Triager) -> None:
    found = verdict(triager, "what if the swelling gets worse?")
    assert (found.kind, found.severity) == ("question", "concern")


def test_somebody_elses_clot_then_a_concern_not_an_alarm(triager: Triager) -> None:
    found = verdict(triager, "my mum had a clot after her operation")
    assert found.severity == "concern"


def test_a_past_sign_that_is_getting_worse_still_counts(triager: Triager) -> None:
    found = verdict(triager, "my leg has been swollen since the first day and is getting worse")
    assert found.severity == "urgent"


def test_a_played_down_ache_is_a_concern_but_played_down_breathlessness_is_not(
    triager: Triager,
) -> None:
    assert verdict(triager, "my calf is a bit achy").severity == "concern"
    assert verdict(triager, "a bit short of breath").severity == "emergency"


def test_warning_sign_with_a_checkin_word_is_never_a_checkin_answer(triager: Triager) -> None:
    found = verdict(triager, "the spot has gone dark purple then black")
    assert found.answer is None
    assert found.kind == "urgent"


@pytest.mark.parametrize(
    ("text", "answer"),
    [("1", "1"), ("3.", "3"), ("2 - still some left", "2"), ("all gone, thanks", "1")],
)
def test_checkin_answers_in_digits_or_words(triager: Triager, text: str, answer: str) -> None:
    assert verdict(triager, text).answer == answer


def test_not_faded_is_still_fading_never_faded(triager: Triager) -> None:
    assert verdict(triager, "not faded yet").answer == "2"


@pytest.mark.parametrize("text", ["thanks!", "ok see you tuesday", "cheers x", "Thank you"])
def test_thanks_and_chatter_then_info(triager: Triager, text: str) -> None:
    found = verdict(triager, text)
    assert (found.kind, found.severity, found.symptom) == ("chatter", "info", False)


# --- Opt-outs and keywords ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop.",
        "STOPALL",
        "unsubscribe",
        "Cancel",
        "END",
        "quit",
        "REVOKE",
        "optout",
        "STOP please",
        "please stop texting me",
        "wrong number, stop",
        "Wrong number",
        "no more texts thanks",
        "take me off your list",
    ],
)
def test_stop_in_a_word_or_in_words_then_a_stop_request(triager: Triager, text: str) -> None:
    found = verdict(triager, text)
    assert found.stop, found
    assert found.kind == "opt_out"


@pytest.mark.parametrize(
    "text",
    [
        "can I stop wearing the stockings?",
        "the bleeding has stopped",
        "cancel my appointment",
        "please don't stop the texts, they help",
        "stop it hurts",
        "the itching won't stop",
    ],
)
def test_nothing_else_is_a_stop_request(triager: Triager, text: str) -> None:
    assert not verdict(triager, text).stop


def test_stop_in_words_with_a_warning_sign_then_both(triager: Triager) -> None:
    found = verdict(triager, "stop texting me, my calf is swollen and red")
    assert found.stop
    assert found.severity == "urgent"


@pytest.mark.parametrize("text", ["BOOK", "can I have another session please", "book me in"])
def test_booking_requests_then_booking_concern(triager: Triager, text: str) -> None:
    found = verdict(triager, text)
    assert (found.kind, found.severity, found.booking) == ("booking", "concern", True)


def test_yes_alone_is_the_yes_keyword(triager: Triager) -> None:
    found = verdict(triager, "Yes")
    assert (found.kind, found.keyword) == ("opt_in", "YES")


# --- Languages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Boli mnie noga i jest bardzo spuchnięta", "pl"),
        ("Mă doare piciorul și este umflat", "ro"),
        ("A minha perna está inchada e dói muito", "pt"),
        ("Me duele mucho la pierna y está hinchada", "es"),
        ("La gamba è gonfia e mi fa molto male", "it"),
        ("Mae fy nghoes wedi chwyddo ac yn boenus iawn", "cy"),
        ("ساقي منتفخة وتؤلمني كثيرا", "ar"),
        ("আমার পা ফুলে গেছে এবং খুব ব্যথা করছে", "bn"),
        ("મારો પગ સૂજી ગયો છે અને દુખે છે", "gu"),
        ("ਮੇਰੀ ਲੱਤ ਸੁੱਜ ਗਈ ਹੈ ਅਤੇ ਦਰਦ ਹੈ", "pa"),
        ("میری ٹانگ سوج گئی ہے اور درد ہے", "ur"),
        ("meri tang mein bahut dard hai aur sujan bhi hai", "ur"),
    ],
)
def test_a_reply_in_another_language_then_urgent_needing_an_interpreter(
    triager: Triager, text: str, language: str
) -> None:
    found = verdict(triager, text)
    assert (found.kind, found.severity, found.language) == ("unrecognised", "urgent", language)
    assert found.interpreter


@pytest.mark.parametrize("text", ["ok", "Thanks x", "see you tuesday", "yes please", "lol"])
def test_short_english_texts_are_not_misread_as_another_language(
    triager: Triager, text: str
) -> None:
    assert verdict(triager, text).language == "en"


# --- The data ----------------------------------------------------------------------------------


def test_the_shipped_data_loads_and_builds() -> None:
    data = load_data(DATA)
    Engine(data).warm()
    assert {"emergency", "urgent", "concern", "info"} == {
        s.severity for s in data.vocabulary.signs.values()
    }


def _copy_data(tmp_path: Path) -> Path:
    folder = tmp_path / "triage"
    shutil.copytree(DATA, folder)
    return folder


@pytest.mark.parametrize(
    ("file", "old", "new", "named"),
    [
        (
            "vocabulary.yaml",
            "    severity: emergency",
            "    severity: dire",
            "signs.breathlessness.severity",
        ),
        (
            "vocabulary.yaml",
            "- $CHEST ~3 $PAIN",
            "- $CHEST ~3 $AGONY",
            "signs.chest_pain.patterns.0",
        ),
        ("vocabulary.yaml", "advice: garment_off", "advice: nope", "signs.tight_garment.advice"),
        ("context.yaml", "category: negated", "category: denied", "rules.0.category"),
        ("answers.yaml", "{clinic_name}: Call 999", "{clinic}: Call 999", "answers"),
        ("answers.yaml", "  pl: >-", "  xx: >-", "languages.safety"),
    ],
)
def test_bad_data_is_refused_naming_the_file_the_key_and_the_reason(
    tmp_path: Path, file: str, old: str, new: str, named: str
) -> None:
    folder = _copy_data(tmp_path)
    path = folder / file
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(TriageDataError) as caught:
        Engine(load_data(folder)).warm()
    message = str(caught.value)
    assert str(path) in message
    assert named in message


# --- Offline, quiet, fast enough ---------------------------------------------------------------

_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled for this test")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse

    from pathlib import Path
    from aftercare.triage.verdict import triager_for

    triager = triager_for(Path({data!r}))
    triager.warm()
    print(triager.triage("cant brethe and my calf is swollen").severity)
    print(triager.triage("Boli mnie noga i jest bardzo spuchnięta").language)
    """
)


def test_triage_loads_and_runs_with_the_network_disabled(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "SPACY_OFFLINE": "1",
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT.format(data=str(DATA))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["emergency", "pl"]
    assert not (tmp_path / "cache").exists()


def test_triage_logs_no_words_of_a_message(
    triager: Triager, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Nothing medspacy, spaCy or lingua logs (loguru or logging, at DEBUG) names a word of a
    message; medspacy's PyRuSH would, so it is not in the pipeline."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    logger.enable("PyRuSH")
    sink = logger.add(seen.append, level="DEBUG")
    try:
        for text in ["my zorblaxian calf is swollen", "Quxwell wants another session"]:
            triager.triage(text)
    finally:
        logger.remove(sink)
        logger.disable("PyRuSH")
    out, err = capfd.readouterr()
    everything = "\n".join([caplog.text, *seen, out, err]).lower()
    assert "zorblaxian" not in everything
    assert "quxwell" not in everything
    assert "medspacy_pyrush" not in triager.engine.nlp.pipe_names


def test_a_served_app_loads_the_language_models_before_the_first_reply(tmp_path: Path) -> None:
    """The server warms triage in the background as it starts (aftercare.web.server), so the
    first reply in another language does not wait several seconds for the models."""
    from aftercare.web.server import warm_triage

    folder = tmp_path / "triage"
    shutil.copytree(REPO / "schedules" / "triage", folder)
    fresh = triager_for(folder)
    assert "detector" not in vars(fresh.language)
    warm_triage(fresh).join(timeout=240)
    assert "detector" in vars(fresh.language)
