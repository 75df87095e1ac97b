"""Two guards of ``/api/v1`` that work below FastAPI's routing, on the raw ASGI messages.

* ``NoStore`` adds ``Cache-Control: no-store`` to every answer under ``/api/v1``, errors and
  unhandled 500s included: API answers carry patient data and must not sit in any cache.
* ``BearerFirst`` checks the bearer token before anything reads the request body. FastAPI reads
  and parses a JSON body before it runs the route's dependencies, so without this an anonymous
  caller could make the app read and parse a large body only to be told 401. The route's own
  dependency (``auth.current_staff``) still checks the token again: no route relies on this.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aftercare.runtime import Runtime
from aftercare.web.api.auth import INVALID_TOKEN, MISSING_TOKEN, bearer_token
from aftercare.web.deps import app_runtime

API_PREFIX = "/api/v1"


def _is_api(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    return scope["type"] == "http" and (path == API_PREFIX or path.startswith(API_PREFIX + "/"))


class NoStore:
    """ASGI middleware: ``Cache-Control: no-store`` on every ``/api/v1`` response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api(scope):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_no_store)


class BearerFirst:
    """ASGI middleware: an ``/api/v1`` request without a live API token is answered 401 before
    its body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api(scope):
            await self.app(scope, receive, send)
            return
        token = bearer_token(Headers(scope=scope).get("authorization", ""))
        if token is None:
            problem = MISSING_TOKEN
        elif not await _live(app_runtime(scope["app"]), token):
            problem = INVALID_TOKEN
        else:
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": problem}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)


async def _live(rt: Runtime, token: str) -> bool:
    from aftercare.staff.service import staff_for_token

    def check() -> bool:
        with rt.db.session() as db_session:
            user = staff_for_token(db_session=db_session, token=token, now=rt.clock.now())
            return user is not None

    return await run_in_threadpool(check)
