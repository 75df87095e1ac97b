"""The FastAPI application factory: each area of the web face is its own router module."""

from __future__ import annotations

from fastapi import FastAPI

from aftercare import __version__
from aftercare.runtime import Runtime, get_runtime


def create_app(runtime: Runtime | None = None) -> FastAPI:
    """Build the app. ``runtime`` defaults to the process-wide one (read on first request)."""
    from aftercare.web import api, health, metrics, pages, unsubscribe, webhooks
    from aftercare.web.access_log import AccessLog, detach_uvicorn_access_log

    app = FastAPI(title="Aftercare", version=__version__)
    detach_uvicorn_access_log()
    app.add_middleware(AccessLog)
    app.state.runtime_override = runtime
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(api.router)
    app.include_router(webhooks.router)
    app.include_router(unsubscribe.router)
    app.include_router(pages.router)
    pages.mount_static(app)
    return app


def app_runtime(app: FastAPI) -> Runtime:
    override: Runtime | None = app.state.runtime_override
    return override or get_runtime()
