"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from aftercare import __version__


def create_app() -> FastAPI:
    app = FastAPI(title="Aftercare", version=__version__)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process is up and answering."""
        return {"status": "ok"}

    return app
