"""Read the hazard log (docs/clinical-safety.md): its rows, controls and the tests named as
evidence. Shared by tests/ops/test_clinical_safety.py and the evidence plugin."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The plugin's own test points it at a log of its making.
LOG = Path(os.environ.get("AFTERCARE_HAZARD_LOG", REPO / "docs" / "clinical-safety.md"))
COLUMNS = (
    "ID",
    "Hazard",
    "Cause",
    "Effect on the patient",
    "Initial risk",
    "Controls",
    "Evidence (tests)",
    "Residual risk",
)
NODE_ID = re.compile(r"`(tests/[\w/.-]+\.py::[\w.\[\]-]+)`")
CONTROL = re.compile(r"\*\*(C\d+[a-z])\*\*")


class HazardLogError(ValueError):
    """The hazard log cannot be read as a table of hazards."""


@dataclass(frozen=True)
class Hazard:
    id: str
    cells: dict[str, str]

    def controls(self) -> list[str]:
        return CONTROL.findall(self.cells["Controls"])

    def evidence(self) -> dict[str, list[str]]:
        """Control label -> the test node ids named for it, in the order written."""
        out: dict[str, list[str]] = {}
        for part in re.split(r"(?=\*\*C\d+[a-z]\*\*)", self.cells["Evidence (tests)"]):
            label = CONTROL.match(part)
            if label is not None:
                out.setdefault(label.group(1), []).extend(NODE_ID.findall(part))
        return out

    def tests(self) -> list[str]:
        return NODE_ID.findall(self.cells["Evidence (tests)"])


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def read_hazards(path: Path = LOG) -> list[Hazard]:
    """The rows of the hazard table (the one whose header is ``COLUMNS``)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if tuple(_cells(line)) == COLUMNS]
    if len(starts) != 1:
        raise HazardLogError(f"{path}: expected one table headed {' | '.join(COLUMNS)}")
    hazards = []
    for number, line in enumerate(lines[starts[0] + 2 :], start=starts[0] + 3):
        if not line.startswith("|"):
            break
        cells = _cells(line)
        if len(cells) != len(COLUMNS):
            raise HazardLogError(f"{path}:{number}: {len(cells)} columns, not {len(COLUMNS)}")
        row = dict(zip(COLUMNS, cells, strict=True))
        hazards.append(Hazard(id=row["ID"], cells=row))
    return hazards


def named_tests(hazards: list[Hazard]) -> dict[str, list[str]]:
    """Each test node id named as evidence -> the hazards naming it."""
    out: dict[str, list[str]] = {}
    for hazard in hazards:
        for node_id in hazard.tests():
            if hazard.id not in out.setdefault(node_id, []):
                out[node_id].append(hazard.id)
    return out


def matches(named: str, collected: str) -> bool:
    """Whether a collected test is ``named``: the same id, or a parametrised case of it."""
    return collected == named or (collected.startswith(named + "[") and "[" not in named)
