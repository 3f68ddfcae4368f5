"""One log line per event on stdout, carrying the job id.

The job id lives in a context variable, so every line logged while a job's
task (or a thread started with ``asyncio.to_thread`` from it) runs carries it
without passing it around. Lines look like::

    2026-11-29T05:10:00.123Z INFO gateway job=3f2a… event=swap.submitted remote_id=abc endpoint=ep1
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

job_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="-")


class _JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = job_id_var.get()
        return True


class _Formatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        # One event, one line: tracebacks are folded onto the same line.
        return line.replace("\n", " | ")


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the record (it may be replaced)."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(service: str, level: str = "INFO") -> None:
    """Sends every log record to stdout, one line each, tagged with service and job id."""
    handler = _StdoutHandler()
    handler.addFilter(_JobIdFilter())
    handler.setFormatter(_Formatter(f"%(asctime)s %(levelname)s {service} job=%(job_id)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug", "diffusers",
                  "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in " =\"\n"):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Logs ``event=<name> key=value ...`` as one line."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={name}"]
    parts.extend(f"{key}={_format_value(value)}" for key, value in fields.items())
    logger.log(level, " ".join(parts))


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tags every line logged inside the block (and tasks started from it) with ``job_id``."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)
