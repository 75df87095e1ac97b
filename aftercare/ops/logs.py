"""Structured logs: one JSON object per line, with ids, never patient data.

Exception *messages* can quote data (a database error may echo a value), so a logged
exception carries only its type and the code locations of its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _message(record),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _exc, tb = record.exc_info
            event["exc_type"] = exc_type.__name__
            event["exc_where"] = [
                f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}:{frame.name}"
                for frame in traceback.extract_tb(tb)
            ][-8:]
        return json.dumps(event, separators=(",", ":"))


def _message(record: logging.LogRecord) -> str:
    """The message, with any exception text Celery formats into it replaced by its type."""
    if isinstance(record.args, dict) and "exc" in record.args:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else "error"
        return str(record.msg) % {**record.args, "exc": exc}
    return record.getMessage()


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "celery", "kombu"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # uvicorn's access line holds the raw request target (query strings, unsubscribe tokens):
    # it goes nowhere. The app writes its own, by route (aftercare.web.access_log).
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
