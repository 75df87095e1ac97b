"""vocabulary.yaml's phrases as spaCy Matcher patterns: the phrase syntax (gaps, alternatives,
groups, exact words, optional slots) compiled, and the first slot expanded for speed."""

from __future__ import annotations

from typing import Any


class PatternError(ValueError):
    pass


def compile_pattern(
    pattern: str, *, groups: dict[str, tuple[str, ...]], canon: Any
) -> list[dict[str, Any]]:
    """A vocabulary.yaml phrase as a spaCy Matcher pattern (see that file's header)."""
    tokens = [_token(part, groups=groups, canon=canon) for part in pattern.split()]
    if not tokens or all(t.get("OP") for t in tokens):
        raise PatternError(f"{pattern!r}: nothing to match")
    if str(tokens[0].get("OP", "")).startswith("{") or str(tokens[-1].get("OP", "")).startswith(
        "{"
    ):
        raise PatternError(f"{pattern!r}: a gap cannot start or end a phrase")
    return tokens


def _token(part: str, *, groups: dict[str, tuple[str, ...]], canon: Any) -> dict[str, Any]:
    """One slot of a phrase: a gap (``~3``), or a word's alternatives, ``?`` when optional."""
    if part.startswith("~"):
        if not part[1:].isdigit() or not 1 <= int(part[1:]) <= 10:
            raise PatternError(f"{part!r}: a gap is ~1 to ~10")
        return {"OP": f"{{0,{int(part[1:])}}}"}
    optional = part.endswith("?") and len(part) > 1
    alternatives = part[:-1] if optional else part
    norms: set[str] = set()
    exact: set[str] = set()
    for alt in alternatives.split("|"):
        if not alt:
            raise PatternError(f"{part!r}: an empty alternative")
        if alt.startswith("$"):
            if alt[1:] not in groups:
                raise PatternError(f"{alt!r}: no such group")
            norms.update(canon(w) for w in groups[alt[1:]])
        elif alt.startswith("="):
            exact.add(alt[1:])
        else:
            norms.add(canon(alt))
    if norms and exact:
        raise PatternError(f"{part!r}: '=' words cannot be mixed with others")
    attr, words = ("NORM", norms) if norms else ("LOWER", exact)
    # One word is matched in spaCy's C code; a set costs a Python call per token.
    token: dict[str, Any] = (
        {attr: next(iter(words))} if len(words) == 1 else {attr: {"IN": sorted(words)}}
    )
    if optional:
        token["OP"] = "?"
    return token


def expand_first(tokens: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """One pattern per word of the first slot: spaCy tests a single word in C for every token
    of every message, but calls Python for a set, which made the matcher the slowest part."""
    first = tokens[0]
    if "OP" in first:
        return [tokens]
    attr, value = next(iter(first.items()))
    if not isinstance(value, dict):
        return [tokens]
    return [[{attr: word}, *tokens[1:]] for word in value["IN"]]
