"""Signed, opaque tokens for links sent to patients (unsubscribe).

A token names only the patient's random ``public_id`` and a purpose, signed with
``AFTERCARE_SECRET_KEY`` (HMAC-SHA256). It cannot be forged or turned to another patient.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def _mac(secret: str, purpose: str, public_id: str) -> str:
    digest = hmac.new(
        secret.encode("utf-8"), f"{purpose}:{public_id}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode("ascii")


def sign(public_id: str, *, secret: str, purpose: str = "unsubscribe") -> str:
    return f"{public_id}.{_mac(secret, purpose, public_id)}"


def verify(token: str, *, secret: str, purpose: str = "unsubscribe") -> str | None:
    """The public id named by a valid token, else None."""
    if not isinstance(token, str) or len(token) > 128 or token.count(".") != 1:
        return None
    public_id, mac = token.split(".")
    if not public_id.isalnum():
        return None
    if not hmac.compare_digest(mac, _mac(secret, purpose, public_id)):
        return None
    return public_id
