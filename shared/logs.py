"""Structured (JSON lines) logging that carries the run id.

Pass context with ``extra``: ``log.info("combined", extra={"run_id": run_id, "detector": 0})``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "RepeatLimiter", "configure_logging", "get_logger"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = (
                    value if isinstance(value, str | int | float | bool | type(None)) else str(value)
                )
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


class RepeatLimiter(logging.Filter):
    """Let a repeated warning or error through at most once per ``interval`` seconds.

    A broker outage makes the Kafka client log the same connection error many times a second;
    the first one passes, the next ones within the interval are counted, and the next one that
    passes says how many were suppressed. Records are "the same" when their logger, level and
    message template are.
    """

    def __init__(self, interval: float = 10.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        suppressed = last[1] if last is not None else 0
        self._seen[key] = (now, 0)
        if len(self._seen) > 10_000:
            self._seen.clear()
        if suppressed:
            record.suppressed = suppressed  # carried into the JSON line
        return True


_configured = False


def configure_logging(level: str | None = None) -> None:
    """Send JSON lines to stderr (once per process) at ``level`` (default INFO)."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatLimiter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or "INFO")
    for noisy in ("aiokafka", "lsst", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
