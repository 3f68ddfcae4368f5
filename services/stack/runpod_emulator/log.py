"""One line per event: ``<time> <LEVEL> <event> key=value ...`` (stdout when run as a program)."""

from __future__ import annotations

import logging
import sys
from typing import Any

_logger = logging.getLogger("runpod_emulator")


def configure(level: int = logging.INFO) -> None:
    """Send the emulator's events to stdout, one line each (the program's output)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    _logger.handlers[:] = [handler]
    _logger.setLevel(level)
    _logger.propagate = False


def _fmt(value: Any) -> str:
    text = str(value)
    return repr(text) if (not text or any(c.isspace() for c in text)) else text


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event; values with spaces are quoted, None values left out."""
    if _logger.isEnabledFor(level):
        parts = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None)
        _logger.log(level, f"{name} {parts}".rstrip())


def mask(secret: str) -> str:
    """A secret as shown in logs: its first and last four characters at most."""
    if len(secret) < 12:
        return "***"
    return f"{secret[:4]}…{secret[-4:]}"
