"""Process logging for the coordinator and the worker: plain text for terminals, or one
JSON object per line for log collectors (`--log-format json`).

    configure_logging("INFO", "json")
    with job_log_context("job-1a2b3c4d", attempt=1):
        log.info("uploading artifacts")   # {"time": ..., "job_id": "job-1a2b3c4d", "attempt": 1, ...}

Every JSON line has `time` (RFC 3339, UTC), `level`, `logger` and `message`; `job_id` and
`attempt` are added when the line was logged inside `job_log_context` (the worker wraps
each job, the coordinator each RPC that names a job) or passed with `extra=`. The
context lives in contextvars, so threads that serve other jobs are not affected.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import IO

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JobContextFilter",
    "JsonFormatter",
    "configure_command_logging",
    "configure_logging",
    "job_log_context",
]

LOG_FORMATS = ("text", "json")
# The level names a command's --log-level takes (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_job_id: contextvars.ContextVar[str] = contextvars.ContextVar("tunefleet_job_id", default="")
_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("tunefleet_attempt", default=0)

# LogRecord attributes that are not user data: everything else on a record came from
# `extra=` and goes into the JSON object as is.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)


@contextlib.contextmanager
def job_log_context(job_id: str, attempt: int = 0) -> Iterator[None]:
    """Log lines emitted inside (in this thread or task) carry job_id and attempt."""
    tokens = (_job_id.set(job_id), _attempt.set(attempt))
    try:
        yield
    finally:
        _attempt.reset(tokens[1])
        _job_id.reset(tokens[0])


def current_job() -> tuple[str, int]:
    """(job_id, attempt) of the enclosing job_log_context; ("", 0) outside any."""
    return _job_id.get(), _attempt.get()


class JobContextFilter(logging.Filter):
    """Copies the job context onto each record (an explicit `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id, attempt = current_job()
        if job_id and not getattr(record, "job_id", ""):
            record.job_id = job_id
            if attempt and not getattr(record, "attempt", 0):
                record.attempt = attempt
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value if _is_json_scalar(value) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def _is_json_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def configure_logging(
    level: str | int = "INFO", log_format: str = "text", *, stream: IO[str] | None = None
) -> logging.Handler:
    """Replaces the root logger's handlers with one writing `log_format` lines to `stream`
    (stderr by default). Returns the handler."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


def configure_command_logging(level: str | int = "INFO", log_format: str = "text") -> None:
    """configure_logging for a command that runs a coordinator or a worker in the foreground
    (`ftctl server/worker`, `python -m tunefleet.coordinator/worker`): json always replaces
    the root logger's handlers; text keeps those someone already set up (a test calling the
    command in-process)."""
    if log_format == "json" or not logging.getLogger().handlers:
        configure_logging(level, log_format)
