"""The hazard log (docs/clinical-safety.md) is kept honest: every hazard is complete, the
required hazards are there, every rating follows the stated matrix, every control has evidence,
and every test named as evidence exists and passes (docs/clinical-safety.md, "How the log is
kept honest")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.safety_evidence import EVIDENCE
from tests.safety_log import COLUMNS, REPO, Hazard, matches, named_tests, read_hazards

CHECKLIST = REPO / "docs" / "dcb0160-checklist.md"
# The hazards issue 14 requires, each by the words that must be in its Hazard column.
REQUIRED = {
    "a warning-sign reply missed or sent to the wrong service": ("warning-sign", "wrong service"),
    "a message at the wrong time or in the wrong zone": ("wrong time", "wrong zone"),
    "a message to the wrong person": ("wrong person",),
    "a message duplicated or lost": ("duplicated", "lost"),
    "an opt-out ignored": ("opt-out", "ignored"),
    "a page to on-call staff missed": ("page", "on-call", "missed"),
    "patient data on a lock screen, in a log or in the broker": ("lock screen", "log", "broker"),
    "a regimen edited wrongly": ("regimen", "edited wrongly"),
    "a clinic misconfigured": ("misconfigured", "placeholder", "cannot reply"),
}
RATING = re.compile(r"^S([1-5]) × L([1-5]) = (\d+) (Low|Medium|High|Very high)$")
# Running every named test alone takes minutes (about 9 on a busy 2-core machine).
SUBPROCESS_TIMEOUT = 3600


def band(score: int) -> str:
    return (
        "Low" if score <= 4 else "Medium" if score <= 9 else "High" if score <= 16 else "Very high"
    )


@pytest.fixture(scope="module")
def hazards() -> list[Hazard]:
    return read_hazards()


def pytest_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]


def test_every_hazard_is_numbered_in_order_with_every_column_filled(
    hazards: list[Hazard],
) -> None:
    assert [h.id for h in hazards] == [f"H{n}" for n in range(1, len(hazards) + 1)]
    for hazard in hazards:
        empty = [column for column in COLUMNS if not hazard.cells[column].strip()]
        assert not empty, f"{hazard.id}: empty {', '.join(empty)}"


@pytest.mark.parametrize("required", REQUIRED)
def test_the_required_hazard_is_in_the_log(hazards: list[Hazard], required: str) -> None:
    words = REQUIRED[required]
    found = [h.id for h in hazards if all(w in h.cells["Hazard"].lower() for w in words)]
    assert found, f"no hazard covers {required!r} (looked for {words})"


def test_every_rating_follows_the_matrix_and_controls_never_raise_the_risk(
    hazards: list[Hazard],
) -> None:
    for hazard in hazards:
        scores = {}
        for column in ("Initial risk", "Residual risk"):
            match = RATING.match(hazard.cells[column])
            assert match, f"{hazard.id} {column}: {hazard.cells[column]!r} is not S<n> × L<n> = .."
            severity, likelihood, score, named_band = match.groups()
            assert int(score) == int(severity) * int(likelihood), f"{hazard.id} {column}"
            assert named_band == band(int(score)), f"{hazard.id} {column}"
            scores[column] = int(score)
        assert scores["Residual risk"] <= scores["Initial risk"], hazard.id
        assert band(scores["Residual risk"]) in ("Low", "Medium"), hazard.id


def test_every_control_has_evidence_and_evidence_names_only_its_controls(
    hazards: list[Hazard],
) -> None:
    for hazard in hazards:
        controls = hazard.controls()
        assert controls, f"{hazard.id} names no control (**C1a** ...)"
        assert all(c.startswith(f"C{hazard.id[1:]}") for c in controls), hazard.id
        assert len(set(controls)) == len(controls), f"{hazard.id} repeats a control"
        evidence = hazard.evidence()
        assert set(evidence) == set(controls), (
            f"{hazard.id}: controls {controls}, evidence {list(evidence)}"
        )
        for control, tests in evidence.items():
            assert tests, f"{hazard.id} {control} names no test"


def test_every_named_test_exists(hazards: list[Hazard]) -> None:
    named = named_tests(hazards)
    files = sorted({node.split("::")[0] for node in named})
    missing_files = [f for f in files if not (REPO / f).is_file()]
    assert not missing_files, f"no such test file: {missing_files}"
    # pytest's own collection, so parametrised cases and fixtures count as pytest sees them.
    result = subprocess.run(
        pytest_cmd("--collect-only", "-q", *files),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    absent = [node for node in named if not any(matches(node, c) for c in collected)]
    assert not absent, f"named in the hazard log but not collected: {absent}"


def junit_outcomes(report: Path) -> dict[str, str]:
    """Node id -> passed | failed | error | skipped, from a JUnit XML report."""
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        node = f"{module}.py::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[node] = kinds[0] if kinds else "passed"
    return outcomes


@pytest.mark.timeout(SUBPROCESS_TIMEOUT + 60)
def test_every_named_test_passes(
    request: pytest.FixtureRequest, hazards: list[Hazard], tmp_path: Path
) -> None:
    named = named_tests(hazards)
    this_test = f"tests/ops/test_clinical_safety.py::{request.node.name}"
    assert this_test not in named, "the log must not name the test that runs its evidence"
    evidence = request.config.stash[EVIDENCE]
    assert evidence.named == named, "the evidence plugin did not read this log"
    elsewhere = [node for node in named if not evidence.covers(node)]
    if not elsewhere:
        # This run selected every named test: the evidence plugin fails the run at its end if
        # any of them failed or was skipped (tests/safety_evidence.py).
        return
    report = tmp_path / "evidence.xml"
    result = subprocess.run(
        pytest_cmd("-q", f"--junitxml={report}", *elsewhere),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert report.exists(), tail
    outcomes = junit_outcomes(report)
    for node in elsewhere:
        cases = {c: o for c, o in outcomes.items() if matches(node, c)}
        assert cases, f"{node} did not run\n{tail}"
        bad = {c: o for c, o in cases.items() if o != "passed"}
        assert not bad, f"hazard log evidence did not pass: {bad}\n{tail}"
    assert result.returncode == 0, tail


def test_the_dcb0160_checklist_covers_what_the_clinic_must_do() -> None:
    text = CHECKLIST.read_text(encoding="utf-8")
    lowered = " ".join(text.replace("*", "").split()).lower()  # as it reads, not as it wraps
    for must in (
        "clinical safety officer",
        "sign off",
        "on-call staff",
        "sender number that accepts replies",
        "alphanumeric",
        "docs/clinical-safety.md",
    ):
        assert must in lowered, must
    for setting in (
        "AFTERCARE_CLINIC_NAME",
        "AFTERCARE_CLINIC_PHONE",
        "AFTERCARE_TWILIO_FROM",
        "AFTERCARE_PUBLIC_BASE_URL",
        "AFTERCARE_QUIET_HOURS",
        "AFTERCARE_ESCALATE_AFTER",
    ):
        assert setting in text, setting
    assert "- [ ]" in text  # a checklist to tick, item by item


# --- The evidence plugin itself --------------------------------------------------------------

DEMO_TESTS = """
import pytest

def test_ok():
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_cases(n):
    pass

def test_skipped():
    pytest.skip("server not reachable")

@pytest.mark.xfail(reason="known")
def test_expected_to_fail():
    assert False

def test_not_named():
    pytest.skip("not evidence")
"""


def demo_log(*tests: str) -> str:
    evidence = ", ".join(f"`tests/test_demo.py::{t}`" for t in tests)
    return textwrap.dedent(f"""\
        | {" | ".join(COLUMNS)} |
        |---|---|---|---|---|---|---|---|
        | H1 | h | c | e | S1 × L1 = 1 Low | **C1a** c | **C1a** {evidence} | S1 × L1 = 1 Low |
        """)


def run_demo(tmp_path: Path, *named: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tests").mkdir(exist_ok=True)
    (tmp_path / "tests" / "test_demo.py").write_text(DEMO_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "log.md").write_text(demo_log(*named))
    env = {**os.environ, "AFTERCARE_HAZARD_LOG": str(tmp_path / "log.md"), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        pytest_cmd("-p", "tests.safety_evidence", "-rN", "tests/test_demo.py"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_plugin_when_named_tests_pass_then_the_run_passes(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "test_ok", "test_cases")
    assert result.returncode == 0, result.stdout
    assert "hazard log evidence" not in result.stdout


@pytest.mark.parametrize(
    ("named", "outcome"),
    [("test_skipped", "SKIPPED"), ("test_expected_to_fail", "XFAILED")],
)
def test_plugin_when_a_named_test_is_skipped_or_xfailed_then_the_run_fails_naming_it(
    tmp_path: Path, named: str, outcome: str
) -> None:
    result = run_demo(tmp_path, "test_ok", named)
    assert result.returncode == 1, result.stdout
    assert f"{outcome}: tests/test_demo.py::{named} (evidence for H1)" in result.stdout
