"""The FastAPI application factory: each area of the web face is its own router.

``api/`` is the JSON API, ``pages/`` the staff pages, ``webhooks/`` what Twilio calls back;
``health``, ``metrics`` and ``unsubscribe`` are single routers. Nothing in the web face imports
this module (the shared dependencies live in ``deps``), so the routers are imported here at the
top and the web face has no import cycle.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp

from aftercare import __version__
from aftercare.runtime import Runtime
from aftercare.settings import get_settings
from aftercare.web import api, health, metrics, pages, unsubscribe, webhooks
from aftercare.web.access_log import AccessLog, detach_uvicorn_access_log
from aftercare.web.api.guard import BearerFirst, NoStore
from aftercare.web.client_address import TrustedProxies


class AftercareApp(FastAPI):
    """FastAPI with ``Cache-Control: no-store`` on every ``/api/v1`` answer, added outside
    Starlette's error middleware so that it covers an unhandled 500 too."""

    def build_middleware_stack(self) -> ASGIApp:
        return NoStore(super().build_middleware_stack())


def create_app(runtime: Runtime | None = None) -> FastAPI:
    """Build the app. ``runtime`` defaults to the process-wide one (read on first request)."""
    settings = runtime.settings if runtime is not None else get_settings()
    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, unpinned and
    # without integrity hashes, on the origin of the staff pages. /openapi.json stays
    # (docs/api.md says how to browse it).
    app = AftercareApp(
        title="Aftercare",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        max_body_size=settings.max_body_bytes,
    )
    detach_uvicorn_access_log()
    app.add_middleware(AccessLog)
    app.state.runtime_override = runtime
    # Last added runs first: the client's address is settled before anything else looks at it.
    app.add_middleware(BearerFirst)
    app.add_middleware(TrustedProxies)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(api.router)
    app.include_router(webhooks.router)
    app.include_router(unsubscribe.router)
    app.include_router(pages.router)
    pages.mount_static(app)
    return app
