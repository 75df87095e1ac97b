"""The app as a server runs it: ``uvicorn --factory aftercare.web.server:create_served_app``.

The same app as :func:`aftercare.web.app.create_app`, with the process's logging set up as
every Aftercare process has it (JSON lines on stderr at ``AFTERCARE_LOG_LEVEL``, uvicorn's own
access log detached; the app's access log names routes, not targets). Tests build the app with
``create_app`` and keep their own logging.
"""

from __future__ import annotations

import threading

from fastapi import FastAPI

from aftercare.ops.logs import configure_logging
from aftercare.private import private_umask
from aftercare.runtime import get_runtime
from aftercare.triage.verdict import Triager
from aftercare.web.app import create_app

# create_app too: `aftercare run` (aftercare.cli.supervise) serves the app in its own process,
# and this module is the one way into the web face from outside it.
__all__ = ["create_app", "create_served_app", "warm_triage"]


def create_served_app() -> FastAPI:
    """The app for uvicorn's ``--factory``, called once uvicorn has set up its loggers."""
    private_umask()  # as every aftercare process (aftercare.cli.main)
    configure_logging(get_runtime().settings.log_level)
    warm_triage(get_runtime().triage)
    return create_app()


def warm_triage(triager: Triager) -> threading.Thread:
    """Load reply triage's pipeline and language models in the background as the server starts.

    Loaded on first use instead, the first reply that needs them would wait several seconds
    (about 7 s and 300 MB for the language models here), close to Twilio's 15 s webhook timeout;
    a reply that arrives before the warm-up ends loads them itself, as before."""
    thread = threading.Thread(target=triager.warm, daemon=True, name="warm-triage")
    thread.start()
    return thread
