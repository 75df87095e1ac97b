"""Time zones as people type them: a city ("London") read as its IANA zone, and "did you mean"
suggestions for a misspelt one. Whether a name is a zone at all is
:func:`aftercare.validation.clean_timezone`'s call; this module only offers names that
pass it."""

from __future__ import annotations

import difflib
from functools import lru_cache
from zoneinfo import available_timezones

from aftercare.validation import ValidationFailed, clean_timezone

# The regions of the IANA database's geographic names (Europe/London, America/New_York ...).
_REGIONS = (
    "Africa/",
    "America/",
    "Antarctica/",
    "Asia/",
    "Atlantic/",
    "Australia/",
    "Europe/",
    "Indian/",
    "Pacific/",
)


@lru_cache(maxsize=1)
def zone_names() -> tuple[str, ...]:
    """The zones offered to staff: every geographic IANA name that validates, and UTC."""
    names = []
    for name in available_timezones():
        if not name.startswith(_REGIONS) and name != "UTC":
            continue
        try:
            clean_timezone(name, ("timezone",))
        except ValidationFailed:
            continue
        names.append(name)
    return tuple(sorted(names))


def _key(text: str) -> str:
    return " ".join(text.replace("_", " ").split()).casefold()


@lru_cache(maxsize=1)
def _by_city() -> dict[str, str]:
    cities: dict[str, str] = {}
    # Shorter names first, so America/Buenos_Aires wins over America/Argentina/Buenos_Aires:
    # the same clock either way.
    for name in sorted(zone_names(), key=lambda n: (n.count("/"), n)):
        cities.setdefault(_key(name.rsplit("/", 1)[-1]), name)
    return cities


def zone_for(text: str) -> str | None:
    """The IANA zone ``text`` names: the zone itself in any case, or a city ("london",
    "New York") read as its zone; None when it names neither."""
    key = _key(text)
    for name in zone_names():
        if _key(name) == key:
            return name
    return _by_city().get(key)


def suggest_zones(text: str, *, limit: int = 2) -> list[str]:
    """The closest zone names to a mistyped ``text`` (``Europe/Londn`` -> ``Europe/London``)."""
    found = zone_for(text)
    if found is not None:
        return [found]
    key = _key(text)
    keyed = {_key(n): n for n in zone_names()}
    close = difflib.get_close_matches(key, list(keyed), n=limit, cutoff=0.75)
    if close:
        return [keyed[c] for c in close]
    cities = _by_city()
    return [cities[c] for c in difflib.get_close_matches(key, list(cities), n=limit, cutoff=0.75)]
