"""Logging for Nuri's processes: text for a terminal, JSON lines for a log pipeline.

``NURI_LOG_FORMAT=json`` makes every line one JSON object with ``time``, ``level``,
``logger``, ``message`` and ``pid``, plus, where known, ``trace_id`` and ``span_id`` (the span
that was current when the line was written: a request's server span, a job's ``job.admit``
...) and the ``job_id`` and ``member_id`` it was about. uvicorn's access lines also carry
``client``, ``method``, ``path`` and ``status``. A pipeline can then join a log line to its trace.

The ids are stamped by :class:`ContextFilter` on the handler (a logger's filter would miss
records propagated from child loggers); job and member come from :func:`bound` / :func:`bind`,
which the scheduler and the API set around the work they do for a job.
"""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from opentelemetry import trace

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
CONTEXT_FIELDS = ("trace_id", "span_id", "job_id", "member_id")

_fields: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("nuri_log_fields", default=())


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Log lines written inside the block carry ``fields`` (``job_id``, ``member_id``)."""
    token = _fields.set(_merged(fields))
    try:
        yield
    finally:
        _fields.reset(token)


def bind(**fields: str | None) -> None:
    """Like :func:`bound`, for the rest of the current context (an API request's task)."""
    _fields.set(_merged(fields))


def _merged(fields: dict[str, str | None]) -> tuple[tuple[str, str], ...]:
    given = tuple((k, v) for k, v in fields.items() if v is not None)
    current = _fields.get()
    if not current:  # the common case (an API request): nothing bound yet
        return given
    return tuple({**dict(current), **dict(given)}.items())


class ContextFilter(logging.Filter):
    """Stamp each record with the current trace and span ids and the bound fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = f"{ctx.trace_id:032x}"
            record.span_id = f"{ctx.span_id:016x}"
        for key, value in _fields.get():
            if not hasattr(record, key):  # an explicit ``extra=`` wins
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which of `nuri api --workers N`
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value:
                doc[key] = value
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            # uvicorn's access record: (client, method, path, HTTP version, status)
            client, method, path, _version, status = args
            doc.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def handler(fmt: LogFormat) -> logging.Handler:
    """A stderr handler in ``fmt``, stamping context ids."""
    out = logging.StreamHandler()
    out.addFilter(ContextFilter())
    out.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return out


def configure(fmt: LogFormat, level: int = logging.INFO) -> None:
    """Set up the root logger of a Nuri process (``nuri up``, ``nuri api``, the scheduler)."""
    logging.basicConfig(level=level, handlers=[handler(fmt)], force=True)


def uvicorn_config(fmt: LogFormat) -> dict[str, Any]:
    """uvicorn's ``log_config``: its own default for text; for JSON, uvicorn's loggers and
    the root logger all write JSON lines. A dictionary, not a live handler: ``nuri api
    --workers N`` applies it in each worker process it spawns."""
    from uvicorn.config import LOGGING_CONFIG

    if fmt == "text":
        return LOGGING_CONFIG
    stream = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "filters": ["context"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": f"{__name__}.ContextFilter"}},
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "default": {**stream, "stream": "ext://sys.stderr"},
            "access": {**stream, "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "INFO"},
    }
