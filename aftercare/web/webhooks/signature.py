"""Verify ``X-Twilio-Signature`` on a webhook, against the URL Twilio called.

Twilio signs the full public URL it was configured with (scheme, host, path and query) plus the
POST parameters. Behind a TLS-terminating proxy the app sees ``http://10.0.0.5:8000/...``, which
would never match, so the URL is rebuilt from ``AFTERCARE_PUBLIC_BASE_URL`` and the request path;
``Host`` and ``X-Forwarded-*`` headers are never trusted for it.
"""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, HTTPException, Request
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator

from aftercare.web.deps import RuntimeDep

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
FORM_TYPE = "application/x-www-form-urlencoded"
# Twilio's webhooks are a few kilobytes (an SMS body is at most 1600 characters). Anything much
# bigger is not from Twilio, and is refused before it is read: the body is read before the
# signature can be checked, so without a limit anyone could make the app buffer gigabytes.
MAX_BODY_BYTES = 64 * 1024


def public_url(base_url: str, path: str, query: str) -> str:
    """The URL Twilio was given for this request: public base + path (+ query string)."""
    url = base_url.rstrip("/") + path
    return f"{url}?{query}" if query else url


def is_valid_signature(
    *, auth_token: str, url: str, params: FormData | dict[str, str], signature: str | None
) -> bool:
    """Whether ``signature`` is Twilio's for ``url`` and ``params`` under ``auth_token``.

    With no auth token configured nothing is valid: an empty key would let anyone sign.
    """
    if not auth_token or not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))


async def verified_form(request: Request, rt: RuntimeDep) -> dict[str, str]:
    """The webhook's POST parameters, once the signature is checked; else 403 (nothing read
    further, nothing stored). A body of unknown length or over MAX_BODY_BYTES is 411/413 before
    it is read; a signed body that is not UTF-8 form data, or repeats a name, is 415/400."""
    length = request.headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()):
        raise HTTPException(status_code=411, detail="Content-Length is required")
    if int(length) > MAX_BODY_BYTES:
        raise HTTPException(
            status_code=413, detail=f"the request body is larger than {MAX_BODY_BYTES} bytes"
        )
    raw = await request.body()
    form = await request.form()
    settings = rt.settings
    url = public_url(settings.public_base_url, request.url.path, request.url.query)
    if any(not isinstance(value, str) for _, value in form.multi_items()) or not (
        is_valid_signature(
            auth_token=settings.twilio_auth_token,
            url=url,
            params=form,
            signature=request.headers.get(SIGNATURE_HEADER),
        )
    ):
        if not settings.twilio_auth_token:
            log.warning("twilio webhook refused: AFTERCARE_TWILIO_AUTH_TOKEN is not set")
        else:
            log.warning("twilio webhook refused: missing or invalid signature")
        raise HTTPException(status_code=403, detail="invalid Twilio signature")
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_TYPE:
        raise HTTPException(status_code=415, detail=f"the body must be {FORM_TYPE}")
    try:
        # The form parser turns bytes that are not UTF-8 into U+FFFD; refuse them instead.
        parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(status_code=400, detail="the form data is not UTF-8") from None
    names = [key for key, _ in form.multi_items()]
    if len(names) != len(set(names)):
        # Twilio sends each parameter once; a repeated one could be read two ways.
        repeated = next(name for name in names if names.count(name) > 1)
        raise HTTPException(status_code=400, detail=f"{repeated[:40]!r} is repeated")
    return {key: str(value) for key, value in form.items()}


TwilioParams = Annotated[dict[str, str], Depends(verified_form)]
