"""Modules fit in a reader's head: none of aftercare's is over 400 lines (STYLE.md 7)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "aftercare"
LIMIT = 400


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_is_over_400_lines() -> None:
    modules = {
        str(path.relative_to(PACKAGE)): _lines(path)
        for path in PACKAGE.rglob("*.py")
        if "versions" not in path.relative_to(PACKAGE).parts
    }
    too_long = {name: n for name, n in modules.items() if n > LIMIT}
    assert too_long == {}
