"""Structured logs: one JSON object per line on stderr.

Why JSON: on-call engineers filter by ``job``/``topic``/``partition`` in their log store, and
a line that can be parsed never needs a regex. Secrets never reach here: settings are logged
through :func:`redact`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}
_SECRET_WORDS = ("password", "secret", "keyfile")


class JsonFormatter(logging.Formatter):
    """Render a record and its ``extra=`` fields as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(level: str = "INFO") -> None:
    """Send every log line to stderr as JSON at ``level``. Called by entry points, never on import."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every retriable hiccup at WARNING/ERROR with tracebacks; keep them, but terse.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """The same JSON logs as a ``logging.config.dictConfig`` (what ``faust worker`` applies)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "json"}
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {"aiokafka": {"level": max(logging.getLevelName(level.upper()), logging.WARNING)}},
    }


def redact(values: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``values`` with anything secret-looking replaced, for logging settings."""
    return {
        key: ("***" if value and any(w in key.lower() for w in _SECRET_WORDS) else value)
        for key, value in values.items()
    }
