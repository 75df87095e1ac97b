"""The web app's access log: one line per request naming the route, never the raw target.

A request's target can carry patient data or a secret: ``/patients?q=<name>`` holds a name,
``/unsubscribe/<token>`` a credential, a form's ``next=`` a whole URL. uvicorn's own access log
writes the target as received, query string included, so it is switched off wherever the app
runs (``--no-access-log``, ``access_log=False``) and detached again here, after uvicorn has set
up its loggers, for any other way of starting it. This log writes the route's template
(``/unsubscribe/{token}``), the method, the status and the duration; never the query string,
a path parameter, the client's address or a header.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("aftercare.access")

UVICORN_ACCESS = "uvicorn.access"


def detach_uvicorn_access_log() -> None:
    """Give uvicorn's access logger nowhere to write (it checks ``hasHandlers()`` per
    connection, so with no handler of its own and no propagation it formats nothing)."""
    logger = logging.getLogger(UVICORN_ACCESS)
    logger.handlers[:] = []
    logger.propagate = False


def route_template(scope: Scope) -> str | None:
    """The matched route's path template, e.g. ``/unsubscribe/{token}``; None if none matched."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) else None


class AccessLog:
    """ASGI middleware writing one ``request`` line per HTTP request when its response ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, int] = {}

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # An exception escaping the app is answered 500 by the server error middleware.
            _write(scope, status.get("code", 500), time.perf_counter() - started)


def _write(scope: Scope, status: int, seconds: float) -> None:
    extra: dict[str, Any] = {
        "method": scope.get("method", ""),
        "route": route_template(scope),
        "status": status,
        "ms": round(seconds * 1000, 1),
    }
    log.info("request", extra=extra)
