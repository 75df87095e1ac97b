"""Modules fit in a reader's head: none of aftercare's is over 400 lines (STYLE.md 7)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aftercare"
LIMIT = 400
# Over the limit today and split by another branch of issue 17: removed at integration. A module
# listed here that fits, or no longer exists, fails the test, so no entry outlives its split.
SPLIT_ELSEWHERE = {
    "channels/twilio_sms.py",  # chan: channels/twilio/
    "inbound/service.py",  # core
    "regimens/loader.py",  # regdata
    "reminders/delivery.py",  # core: reminders/delivery/
    "sessions/actions.py",  # core: sessions/ and patients/
    "sessions/importer.py",  # core: storage/bulk.py
    "sessions/service.py",  # core: one enrolment service, storage/bulk.py
    "triage/engine.py",  # whoever owns triage/
}


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_is_over_400_lines() -> None:
    modules = {
        str(path.relative_to(PACKAGE)): _lines(path)
        for path in PACKAGE.rglob("*.py")
        if "versions" not in path.relative_to(PACKAGE).parts
    }
    too_long = {name: n for name, n in modules.items() if n > LIMIT}
    assert sorted(set(too_long) - SPLIT_ELSEWHERE) == []
    assert sorted(SPLIT_ELSEWHERE - set(too_long)) == []
