"""Every way a template can be asked to render for one step: each occurrence of the step, for a
discreet or plain patient, one who gets emails or SMS only, with or without a reply mailbox.
``aftercare check`` and the tests render them all, so no patient meets an untested wording."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product

from aftercare.messages.context import sample_context
from aftercare.regimens.model import Regimen


def template_variants(regimen: Regimen, step: str, **sample: object) -> Iterator[dict[str, object]]:
    """Sample contexts for every occurrence of ``step`` and every audience (``sample`` is
    passed on to sample_context: a clinic name, a patient name, parameters)."""
    last = sample_context(regimen=regimen, step=step, **sample)  # type: ignore[arg-type]
    count = int(str(last["day_count"]))
    for occurrence in range(count):
        base = sample_context(
            regimen=regimen,
            step=step,
            occurrence=occurrence,
            **sample,  # type: ignore[arg-type]
        )
        for discreet, sms_only, email_reply in product((False, True), repeat=3):
            yield {**base, "discreet": discreet, "sms_only": sms_only, "email_reply": email_reply}
