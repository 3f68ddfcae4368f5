"""One log line per event on stdout: text on a terminal, JSON lines in containers (``LOG_FORMAT=json``).

Every line carries the service, the level, the event, the job id (a context
variable: every line logged while a job's task, or a thread started from it,
runs carries it without passing it around) and, while a traced span is
current, its trace and span ids::

    2026-11-29T05:10:00.123Z INFO gateway job=3f2a… trace=4bf92f…/00f067… event=swap.submitted remote_id=abc
    {"time": "2026-11-29T05:10:00.123Z", "level": "info", "service": "gateway", "event": "swap.submitted",
     "job_id": "3f2a…", "trace_id": "4bf92f…", "span_id": "00f067…", "remote_id": "abc"}

Lines of other libraries (grpc, botocore, ...) get the same frame, with
``event=log`` and their logger and message. Values may come from a client (a
job id, a key, an error message quoting a request): whatever the format, no
character that is not printable (CR, LF, ESC, NUL, DEL, C1 controls, bidi
overrides, line separators) reaches the output; each is written as an escape
(``\\x1b``, ``\\u202e``). A traceback is kept on its event's line.

This module imports only the standard library: the RunPod emulator uses it in
the worker's environment. Tracing registers how to read the current trace ids
(``set_trace_source``) and what to do when a job context is entered
(``on_job_context``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

LogFormat = Literal["text", "json"]
NO_JOB = "-"

job_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default=NO_JOB)

# (trace id, span id) of the current span as hex, or None; tracing replaces it when it is on.
_trace_source: Callable[[], tuple[str, str] | None] = lambda: None  # noqa: E731
_job_hooks: list[Callable[[str], None]] = []

# Libraries whose INFO lines are noise in a service's log.
_NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug", "diffusers", "transformers", "httpx")
# Attributes a formatter reads from a record, set by ``_Context`` (job, trace) and ``event`` (name, fields).
_EVENT, _FIELDS = "facegen_event", "facegen_fields"


def set_trace_source(source: Callable[[], tuple[str, str] | None]) -> None:
    """Where lines get the current trace and span ids (tracing calls this when it is configured)."""
    global _trace_source
    _trace_source = source


def on_job_context(hook: Callable[[str], None]) -> None:
    """Calls ``hook(job_id)`` whenever a job context is entered (tracing tags the current span with it)."""
    _job_hooks.append(hook)


# --- escaping ---------------------------------------------------------------------------------

def escape(text: str, as_json: bool = False) -> str:
    """``text`` with every character that is not printable written as an escape.

    Text lines get Python-style escapes (``\\x1b``, ``\\u2028``); JSON lines get
    JSON's (``\\u001b``), so they still parse. Spaces stay; backslashes are
    left alone, so an escape in a text line may also be a client's literal
    backslash sequence: either way, nothing in it is a control character.
    """
    if text.isprintable():
        return text
    escaped = _json_escaped if as_json else _text_escaped
    return "".join(ch if ch.isprintable() else escaped(ch) for ch in text)


def _text_escaped(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _json_escaped(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON writes a character beyond the BMP
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def format_value(value: Any) -> str:
    """One ``key=value`` value: quoted when it holds a space, ``=``, a quote or nothing."""
    text = str(value)
    if text == "" or any(ch in text for ch in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


# --- records ----------------------------------------------------------------------------------

class _Context(logging.Filter):
    """Stamps each record with the job id and trace ids of the context that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = job_id_var.get()
        ids = _trace_source()
        record.trace_id, record.span_id = ids if ids is not None else ("", "")
        return True


def _timestamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <service> job=<id> [trace=<trace>/<span>] <message>``, one line, escaped."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        trace_id = getattr(record, "trace_id", "")
        trace = f" trace={trace_id}/{getattr(record, 'span_id', '')}" if trace_id else ""
        message = record.getMessage()
        if getattr(record, _EVENT, None) is None:
            message = f"event=log logger={record.name} message={format_value(message)}"
        line = (f"{_timestamp(record)} {record.levelname} {self.service} "
                f"job={getattr(record, 'job_id', NO_JOB)}{trace} {message}")
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return escape(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the event's fields are its keys, next to the frame's."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": _timestamp(record), "level": record.levelname.lower(),
                                 "service": self.service}
        name = getattr(record, _EVENT, None)
        if name is None:
            entry.update(event="log", logger=record.name, message=record.getMessage())
        else:
            entry["event"] = name
        job_id = getattr(record, "job_id", NO_JOB)
        if job_id != NO_JOB:
            entry["job_id"] = job_id
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            entry["trace_id"], entry["span_id"] = trace_id, getattr(record, "span_id", "")
        for key, value in (getattr(record, _FIELDS, None) or {}).items():
            entry.setdefault(key, value if isinstance(value, int | float | bool) or value is None else str(value))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # json escapes the C0 controls; escape() writes the rest (DEL, C1, separators, bidi) as \u escapes.
        return escape(json.dumps(entry, ensure_ascii=False), as_json=True)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the record (it may be replaced)."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def formatter(service: str, fmt: LogFormat = "text") -> logging.Formatter:
    """The formatter of ``fmt`` for ``service``'s lines."""
    return JsonFormatter(service) if fmt == "json" else TextFormatter(service)


def stdout_handler(service: str, fmt: LogFormat = "text") -> logging.Handler:
    """A handler writing ``service``'s lines to stdout, as text or JSON, tagged with job and trace."""
    handler = _StdoutHandler()
    handler.addFilter(_Context())
    handler.setFormatter(formatter(service, fmt))
    return handler


def configure(service: str, level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Sends every log record to stdout, one line each, as text or JSON, tagged with service, job and trace."""
    root = logging.getLogger()
    root.handlers[:] = [stdout_handler(service, fmt)]
    root.setLevel(level.upper())
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, *,
          exc_info: BaseException | bool | None = None, **fields: Any) -> None:
    """Logs ``event=<name> key=value ...`` as one line (the fields are the JSON keys with LOG_FORMAT=json)."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={name}"]
    parts.extend(f"{key}={format_value(value)}" for key, value in fields.items())
    logger.log(level, " ".join(parts), exc_info=exc_info, extra={_EVENT: name, _FIELDS: fields}, stacklevel=2)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tags every line logged inside the block (and tasks started from it) with ``job_id``."""
    token = job_id_var.set(job_id)
    for hook in _job_hooks:
        hook(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)
