"""Shared FastAPI dependencies (``Annotated`` aliases)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from aftercare.runtime import Runtime
from aftercare.web.app import app_runtime


def runtime(request: Request) -> Runtime:
    return app_runtime(request.app)


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def db_session(rt: RuntimeDep) -> Iterator[Session]:
    """A database session committed when the request handler returns without error."""
    with rt.db.session() as session:
        yield session


# scope="function": commit before the response is sent, so a 2xx is never answered for a write
# that then fails to commit.
SessionDep = Annotated[Session, Depends(db_session, scope="function")]
