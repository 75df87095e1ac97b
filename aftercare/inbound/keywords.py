"""What an inbound SMS is, read with the shipped triage data (``schedules/triage``): a thin
entry point for callers without a runtime (tests, the bench). The service itself uses the
runtime's triager (:attr:`aftercare.runtime.Runtime.triage`), whose folder is configurable.

The rules are in :mod:`aftercare.triage.verdict`; the words in ``schedules/triage``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from aftercare.regimens.loader import RegimenRegistry
from aftercare.settings import Settings
from aftercare.triage.verdict import Triager, Verdict, triager_for

DEFAULT_TRIAGE_DIR: Final = Settings.model_fields["schedules_dir"].default / "triage"


@lru_cache(maxsize=1)
def default_regimens() -> RegimenRegistry:
    """The shipped regimens (read on the first call), for callers given no registry."""
    return RegimenRegistry.load(Settings.model_fields["schedules_dir"].default)


def default_triager() -> Triager:
    """The process's triager for the shipped data (read on the first call)."""
    return triager_for(DEFAULT_TRIAGE_DIR)


def classify(body: str) -> Verdict:
    """What the message ``body`` is (see :mod:`aftercare.triage.verdict`)."""
    return default_triager().triage(body)
