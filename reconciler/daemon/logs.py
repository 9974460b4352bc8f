"""Structured JSON logs: one object per line, always carrying the commit, plan id and address."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

LOGGER = "skyform.reconcile"
_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "skyform_log", default=None
)
_KEYS = ("commit", "plan_id", "address")


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Fields added to every line logged inside the block (this thread only)."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        fields = {**(_CONTEXT.get() or {}), **getattr(record, "fields", {})}
        # Keys every line has, so a log query on commit/plan/address never misses a line.
        for key in _KEYS:
            line[key] = fields.pop(key, None)
        line.update(fields)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER)


def setup(level: str = "INFO") -> None:
    """Send the daemon's logs to stderr as JSON (idempotent)."""
    log = logger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False


def info(msg: str, **fields: Any) -> None:
    logger().info(msg, extra={"fields": fields})


def warning(msg: str, **fields: Any) -> None:
    logger().warning(msg, extra={"fields": fields})


def error(msg: str, **fields: Any) -> None:
    logger().error(msg, extra={"fields": fields})
