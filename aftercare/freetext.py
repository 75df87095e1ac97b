"""Free text that staff read (a reply, a flag's text or note), made safe to show."""

from __future__ import annotations

import unicodedata

_BIDI_CONTROLS = frozenset({"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"})


def without_bidi_controls(text: str) -> str:
    """``text`` without the bidirectional embedding, override and isolate controls, for free
    text that staff read (a reply, a flag's note): they could make it read as something else.
    Left-to-right and right-to-left marks, which only order neutral characters, are kept."""
    if text.isascii():
        return text
    return "".join(c for c in text if unicodedata.bidirectional(c) not in _BIDI_CONTROLS)
