"""Signed, opaque tokens for links sent to patients (unsubscribe).

A token names only the patient's random ``public_id`` and a purpose, signed with
``AFTERCARE_SECRET_KEY`` (HMAC-SHA256). It cannot be forged or turned to another patient.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re


def _mac(secret: str, purpose: str, public_id: str) -> str:
    digest = hmac.new(
        secret.encode("utf-8"), f"{purpose}:{public_id}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode("ascii")


def sign(public_id: str, *, secret: str, purpose: str = "unsubscribe") -> str:
    return f"{public_id}.{_mac(secret, purpose, public_id)}"


# What sign() makes: an ASCII letters-and-digits id, a dot, an unpadded urlsafe base64 MAC.
# str.isalnum() and str.isdigit() also accept letters and digits from every other script, which
# hmac.compare_digest refuses with a TypeError: the shape is checked in ASCII first.
_TOKEN = re.compile(r"[A-Za-z0-9]{1,64}\.[A-Za-z0-9_-]{24}")


def verify(token: str, *, secret: str, purpose: str = "unsubscribe") -> str | None:
    """The public id named by a valid token, else None (also for anything not shaped like one)."""
    if not isinstance(token, str) or _TOKEN.fullmatch(token) is None:
        return None
    public_id, mac = token.split(".")
    if not hmac.compare_digest(mac, _mac(secret, purpose, public_id)):
        return None
    return public_id
