"""Shared FastAPI dependencies (``Annotated`` aliases) and the app's runtime.

Everything in the web face that needs the runtime or a database session gets it from here; this
module imports no router and not the app, so the routers can be imported by ``app.py`` at the top.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy.orm import Session

from aftercare.runtime import Runtime, get_runtime


def app_runtime(app: FastAPI) -> Runtime:
    """The runtime the app was built with, else the process-wide one (read on first request)."""
    override: Runtime | None = app.state.runtime_override
    return override or get_runtime()


def runtime(request: Request) -> Runtime:
    return app_runtime(request.app)


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def db_session(rt: RuntimeDep) -> Iterator[Session]:
    """A database session committed when the handler returns, before the response is sent.

    Scoped to the handler ("function"), so a failed commit is a 500, never a 2xx for data that
    was rolled back, and a client's next request always sees what this one wrote.
    """
    with rt.db.session() as session:
        yield session


DbSession = Annotated[Session, Depends(db_session, scope="function")]
