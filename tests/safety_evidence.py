"""A pytest plugin that watches the tests the hazard log names as evidence.

During any run it records the outcome of every named test the run selected; at the end it
fails the run if one of them failed, was skipped or was expected to fail (a skipped test is
not evidence). tests/ops/test_clinical_safety.py uses what it recorded to know whether this run
covers every named test, and runs the rest in a subprocess when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.safety_log import HazardLogError, matches, named_tests, read_hazards


@dataclass(eq=False)  # a plugin object must stay hashable
class Evidence:
    """The hooks, and what they saw."""

    # Named node id -> the hazards naming it (empty when the log cannot be read; the hazard
    # log's own tests then fail and say why).
    named: dict[str, list[str]] = field(default_factory=dict)
    # Selected test item -> the named id it is evidence for.
    selected: dict[str, str] = field(default_factory=dict)
    # Selected test item -> passed | failed | skipped | xfailed | xpassed.
    outcomes: dict[str, str] = field(default_factory=dict)
    # Named ids some case of which -k or -m deselected.
    deselected: set[str] = field(default_factory=set)

    def problems(self) -> dict[str, str]:
        """Named tests that ran and did not pass: node id -> outcome."""
        return {node: outcome for node, outcome in self.outcomes.items() if outcome != "passed"}

    def covers(self, named: str) -> bool:
        """Whether this run selected ``named`` (for a parametrised test: every case of it)."""
        return named in self.selected.values() and named not in self.deselected

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        for item in items:
            self.deselected.update(n for n in self.named if matches(n, item.nodeid))

    @pytest.hookimpl(trylast=True)  # after -k / -m have deselected what they will
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            for named in self.named:
                if matches(named, item.nodeid):
                    self.selected[item.nodeid] = named
                    break

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid not in self.selected:
            return
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.failed:
            outcome = "failed"
        elif report.skipped:
            outcome = "skipped"
        elif report.when == "call":
            outcome = "passed"
        else:
            return
        # Once not passed, it stays so (a teardown error after a passing call is a failure).
        if self.outcomes.get(report.nodeid, "passed") == "passed":
            self.outcomes[report.nodeid] = outcome

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.problems() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        problems = self.problems()
        if not problems:
            return
        terminalreporter.section("hazard log evidence", red=True)
        for node, outcome in sorted(problems.items()):
            hazards = ", ".join(self.named[self.selected[node]])
            terminalreporter.line(f"{outcome.upper()}: {node} (evidence for {hazards})")
        terminalreporter.line(
            "Every test docs/clinical-safety.md names must pass; a skip is not evidence."
        )


EVIDENCE = pytest.StashKey[Evidence]()


def pytest_configure(config: pytest.Config) -> None:
    try:
        named = named_tests(read_hazards())
    except (HazardLogError, OSError):
        named = {}
    evidence = Evidence(named=named)
    config.stash[EVIDENCE] = evidence
    config.pluginmanager.register(evidence, "aftercare-hazard-evidence")
