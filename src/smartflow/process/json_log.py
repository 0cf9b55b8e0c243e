"""The operational log: one JSON object per line on stderr, from the
supervisor and every worker alike."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from typing import Any

import orjson


def log_event(level: str, event: str, **fields: Any) -> None:
    """One JSON line on stderr (written with one os.write, so lines never tear)."""
    record = {"ts": round(time.time(), 3), "level": level, "event": event, "pid": os.getpid()}
    record.update(fields)
    line = orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
    with contextlib.suppress(OSError):
        os.write(2, line)


class JsonLinesHandler(logging.Handler):
    """Routes `logging` records (the HTTP server's, the proxy's) into the same
    single-line JSON format as `log_event`, tracebacks included as a field."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))
            log_event(record.levelname.lower(), "log", **fields)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def install_json_logging(level: int = logging.INFO) -> None:
    """Send every `logging` record to stderr as one JSON line (inherited by workers)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(JsonLinesHandler())
    root.setLevel(level)
