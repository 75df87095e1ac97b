"""The app as a server runs it: ``uvicorn --factory aftercare.web.server:create_served_app``.

The same app as :func:`aftercare.web.app.create_app`, with the process's logging set up as
every Aftercare process has it (JSON lines on stderr at ``AFTERCARE_LOG_LEVEL``, uvicorn's own
access log detached; the app's access log names routes, not targets). Tests build the app with
``create_app`` and keep their own logging.
"""

from __future__ import annotations

from fastapi import FastAPI

from aftercare.ops.logs import configure_logging
from aftercare.private import private_umask
from aftercare.runtime import get_runtime
from aftercare.web.app import create_app


def create_served_app() -> FastAPI:
    """The app for uvicorn's ``--factory``, called once uvicorn has set up its loggers."""
    private_umask()  # as every aftercare process (aftercare.cli.main)
    configure_logging(get_runtime().settings.log_level)
    return create_app()
