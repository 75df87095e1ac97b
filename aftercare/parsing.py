"""Whole numbers typed by people, read in ASCII only.

``str.isdigit()`` is true for "²" and "٣", and ``int()`` accepts "٣" but not "²", and refuses
strings of over 4300 digits: a check with one and a conversion with the other raises on input
that passed the check. Every number read from text at the edge goes through :func:`ascii_int`.
"""

from __future__ import annotations

import re

# Nine digits hold every id (2**31 - 1 has ten, so ten are allowed) and every regimen value.
_INT = re.compile(r"[+-]?[0-9]{1,10}")


def ascii_int(text: str) -> int | None:
    """``text`` (surrounding spaces aside) as an int if it is a plain ASCII whole number of at
    most ten digits, else None."""
    stripped = text.strip(" \t\r\n")
    if _INT.fullmatch(stripped) is None:
        return None
    return int(stripped)
