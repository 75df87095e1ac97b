"""The fault suite's scoreboard: one row per scenario, printed as a table at the end of the run.

Any test can report into it through the session-scoped ``fault_table`` fixture (see
``conftest.py``). A row always has the five columns the reliability issue asks for (faults
injected, reminders due, delivered exactly once, duplicates, lost); a scenario may add its own
columns as keyword arguments (``fault_table.record("...", refused=12)``), which show up as extra
columns in the table. Record *before* asserting, so a failing scenario still shows its row.

:func:`tally` turns "what the provider received" into those numbers, the same way for every
provider (outbox ``sent.log``, the fake Twilio, the SMTP server).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

STANDARD = ("faults injected", "reminders due", "delivered exactly once", "duplicates", "lost")
TABLE_KEY = pytest.StashKey["FaultTable"]()
# Set to a file path to also get the table there as Markdown (docs/reliability.md pastes it).
TABLE_FILE_ENV = "AFTERCARE_FAULTS_TABLE"


@dataclass(frozen=True)
class Tally:
    """What one scenario's providers received, against what they should have received."""

    due: int
    exactly_once: int
    duplicates: int
    lost: int
    # Sends of reminders that must not go out (cancelled, opted out, expired, unknown).
    unwanted: int
    withheld: int

    def columns(self) -> dict[str, int]:
        return {
            "reminders due": self.due,
            "delivered exactly once": self.exactly_once,
            "duplicates": self.duplicates,
            "lost": self.lost,
        }


def tally(
    *,
    expected: Collection[int],
    sends: Iterable[int | None],
    withheld: Collection[int] = (),
) -> Tally:
    """Score provider sends (one reminder id per send call; None: a send nobody can account for).

    ``expected`` must each reach the provider exactly once; ``withheld`` (expired, cancelled,
    opted out) must not reach it at all.
    """
    counts = Counter(sends)
    expected_set = set(expected)
    exactly = sum(1 for r in expected_set if counts[r] == 1)
    duplicates = sum(max(counts[r] - 1, 0) for r in expected_set)
    lost = sum(1 for r in expected_set if counts[r] == 0)
    unwanted = sum(n for r, n in counts.items() if r not in expected_set)
    return Tally(
        due=len(expected_set) + len(set(withheld)),
        exactly_once=exactly,
        duplicates=duplicates,
        lost=lost,
        unwanted=unwanted,
        withheld=len(set(withheld)),
    )


@dataclass
class Row:
    scenario: str
    values: dict[str, object]
    nodeid: str = ""
    outcome: str = "?"


@dataclass
class FaultTable:
    """Rows reported by the tests of this run, in the order they were recorded."""

    rows: list[Row] = field(default_factory=list)

    def record(
        self,
        scenario: str,
        *,
        faults: int,
        tally: Tally | None = None,
        delay: timedelta | None = None,
        nodeid: str = "",
        **extra: object,
    ) -> Row:
        """Add one scenario's row; ``extra`` keyword arguments become extra columns.

        ``delay``: the latest delivery after the reminders fell due, in simulated time.
        """
        values: dict[str, object] = {"faults injected": faults}
        if delay is not None:
            values["max delay (simulated)"] = f"{delay.total_seconds() / 60:.1f} min"
        if tally is not None:
            values.update(tally.columns())
            if tally.withheld or tally.unwanted:
                values["withheld by policy"] = tally.withheld
                values["sent though withheld"] = tally.unwanted
        values.update({name.replace("_", " "): value for name, value in extra.items()})
        row = Row(scenario=scenario, values=values, nodeid=nodeid)
        self.rows.append(row)
        return row

    def settle(self, nodeid: str, outcome: str) -> None:
        """Mark the rows a test recorded with how the test ended."""
        for row in self.rows:
            if row.nodeid == nodeid and row.outcome == "?":
                row.outcome = outcome

    def columns(self) -> list[str]:
        extra: list[str] = []
        for row in self.rows:
            extra += [c for c in row.values if c not in STANDARD and c not in extra]
        return [*STANDARD, *extra]

    def markdown(self) -> str:
        columns = self.columns()
        lines = [
            "| scenario | " + " | ".join(columns) + " | result |",
            "|---|" + "---:|" * len(columns) + "---|",
        ]
        for row in self.rows:
            cells = [str(row.values.get(c, "")) for c in columns]
            lines.append(f"| {row.scenario} | " + " | ".join(cells) + f" | {row.outcome} |")
        return "\n".join(lines)

    def write(self, terminal: pytest.TerminalReporter) -> None:
        if not self.rows:
            return
        terminal.write_sep("=", "fault scenarios")
        for line in self.markdown().splitlines():
            terminal.write_line(line)
        target = os.environ.get(TABLE_FILE_ENV)
        if target:
            Path(target).write_text(self.markdown() + "\n", encoding="utf-8")
            terminal.write_line(f"(table written to {target})")
