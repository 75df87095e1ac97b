"""Errors a service raises for a face to turn into a status: :class:`NotFound` (404) and
:class:`Conflict` (409). Validation errors (422) are ``sessions.validation.ValidationFailed``."""

from __future__ import annotations


class NotFound(LookupError):
    """No such row; ``what`` names it for the 404 message."""

    def __init__(self, what: str, ident: int) -> None:
        super().__init__(f"{what} {ident} not found")


class Conflict(ValueError):
    """The change makes no sense in the row's current state (a 409)."""
