"""One line per event on stdout when run as a program, in the services' format (``services.common.logs``):
``<time> <LEVEL> runpod-emulator job=- event=<event> key=value ...``, or JSON with ``--log-format json``.

Values that came from a client (job ids, paths, error messages) are escaped
like every service's: no control character reaches the output.
"""

from __future__ import annotations

import logging
from typing import Any

from services.common import logs
from services.common.logs import LogFormat
from services.common.secrets import mask as _mask

_logger = logging.getLogger("runpod_emulator")
SERVICE = "runpod-emulator"


def configure(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Send the emulator's events to stdout, one line each (the program's output)."""
    _logger.handlers[:] = [logs.stdout_handler(SERVICE, fmt)]
    _logger.setLevel(level)
    _logger.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event; None values are left out."""
    logs.event(_logger, name, level, **{key: value for key, value in fields.items() if value is not None})


def mask(secret: str) -> str:
    """A secret as shown in logs: the services' rule (its last four characters at most)."""
    return _mask(secret)
