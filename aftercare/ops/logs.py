"""Structured logs: one JSON object per line, with ids, never patient data.

Exception *messages* can quote data (a database error may echo a value), so a logged
exception carries only its type and the code locations of its traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    # uvicorn's copy of the message with terminal colour codes: JSON lines carry none.
    "color_message",
}
# Terminal colour and style codes (ESC [ ... m), which some libraries put in their messages.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The timer tasks beat sends every few seconds: Celery's lines about each run of them (sent,
# received, succeeded) are routine, so DEBUG; the tasks log their own line when they did work.
ROUTINE_TASKS = frozenset({"aftercare.dispatch", "aftercare.recover"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _ANSI.sub("", _message(record)),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = (
                    value
                    if isinstance(value, int | float | bool | None)
                    else _ANSI.sub("", str(value))
                )
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


def _routine(record: logging.LogRecord) -> bool:
    """A Celery INFO line about one run of a timer task (:data:`ROUTINE_TASKS`)."""
    if record.levelno != logging.INFO or not record.name.startswith("celery."):
        return False
    data = getattr(record, "data", None)  # celery.worker.strategy and celery.app.trace
    if isinstance(data, dict):
        return data.get("name") in ROUTINE_TASKS
    # celery.beat: "Scheduler: Sending due task %s (%s)" with (entry name, task name).
    args = record.args
    return isinstance(args, tuple) and len(args) == 2 and args[1] in ROUTINE_TASKS


class RoutineToDebug(logging.Filter):
    """Turns Celery's lines about each timer tick into DEBUG records (kept only at DEBUG)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if _routine(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.level <= logging.DEBUG
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RoutineToDebug(logging.getLevelName(level.upper())))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "celery", "kombu"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        # Whatever configured them before (uvicorn's own dictConfig, a library) may have set a
        # level or disabled them: the root's level is the one that counts here.
        logger.setLevel(logging.NOTSET)
        logger.disabled = False
    # uvicorn's access line holds the raw request target (query strings, unsubscribe tokens):
    # it goes nowhere. The app writes its own, by route (aftercare.web.access_log).
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
