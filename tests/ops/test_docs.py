"""The README documents every setting the code reads, and every CLI command."""

from __future__ import annotations

from pathlib import Path

from aftercare.cli.main import cli
from aftercare.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [
        f"AFTERCARE_{name.upper()}"
        for name in Settings.model_fields
        if f"AFTERCARE_{name.upper()}" not in README
    ]
    assert missing == []


def test_every_command_is_named_in_the_readme() -> None:
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in cli.registered_commands}
    names |= {g.name or "" for g in cli.registered_groups}
    missing = sorted(n for n in names if n and f"aftercare {n}" not in README)
    assert missing == []
