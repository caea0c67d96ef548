"""Structured (JSON) logs, one line per event, each carrying the request id (and, with
tracing on, the trace and span ids: shared/tracing.py)."""

import contextvars
import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from shared import tracing

# Set per RPC by the logging interceptor; "-" outside a request.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        for name, value in tracing.log_fields().items():
            setattr(record, name, value)
        return True


def json_handler(service: str, stream: TextIO) -> logging.Handler:
    """Writes one JSON object per record to `stream`, with every `extra` field."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{request_id}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    return handler


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = json_handler(service, sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
