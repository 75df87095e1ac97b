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


SessionDep = Annotated[Session, Depends(db_session)]
