"""Typed settings read once from the environment.

Each service defines a frozen dataclass of its own settings and builds it with
``from_env()`` at start-up; nothing else reads ``os.environ``. The helpers here
turn a missing or malformed variable into one clear ``ConfigError`` naming the
variable, so a bad deployment fails at start with a message instead of later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024

# The largest image that travels inside one gRPC message: a 2048x2048 PNG of
# noise is ~12.6 MB, and a reference face may be 10 MB. 32 MiB leaves room
# for protobuf framing and a preview without inviting unbounded messages.
MAX_MESSAGE_BYTES = 32 * MiB


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


class Env:
    """Typed reads from an environment mapping (``os.environ`` by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def get_str(self, name: str, default: str | None = None) -> str:
        """The variable's value, or ``default``; ConfigError when both are missing."""
        value = self._environ.get(name)
        if value is None or value == "":
            if default is None:
                raise ConfigError(f"{name} is required but not set")
            return default
        return value

    def optional(self, name: str) -> str | None:
        """The variable's value, or None when it is unset or empty."""
        value = self._environ.get(name, "")
        return value or None

    def secret(self, name: str) -> str | None:
        """A secret from ``NAME`` or from the file named by ``NAME_FILE`` (mounted secrets)."""
        path = self.optional(f"{name}_FILE")
        if path is not None:
            try:
                return Path(path).read_text().strip() or None
            except OSError as exc:
                raise ConfigError(f"{name}_FILE={path} cannot be read: {exc.strerror}") from exc
        return self.optional(name)

    def get_int(self, name: str, default: int, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
        """An integer within [minimum, maximum]."""
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        _check_range(name, value, minimum, maximum)
        return value

    def get_float(self, name: str, default: float, *, minimum: float | None = None,
              maximum: float | None = None) -> float:
        """A float within [minimum, maximum]."""
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        _check_range(name, value, minimum, maximum)
        return value

    def get_bool(self, name: str, default: bool) -> bool:
        """A boolean written as 1/0, true/false, yes/no or on/off."""
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")

    def get_list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A comma-separated list; blanks are dropped."""
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        return tuple(item.strip() for item in raw.split(",") if item.strip())


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "-inf" if minimum is None else minimum
        high = "inf" if maximum is None else maximum
        raise ConfigError(f"{name}={value} is outside the allowed range [{low}, {high}]")


@dataclass(frozen=True)
class ServerSettings:
    """How a service's gRPC server listens and shuts down."""

    listen: str
    grace_seconds: float
    max_message_bytes: int

    @classmethod
    def from_env(cls, prefix: str, default_listen: str, env: Env | None = None) -> ServerSettings:
        """Reads ``<PREFIX>_LISTEN``, ``<PREFIX>_GRACE_SECONDS``, ``MAX_MESSAGE_BYTES``."""
        env = env or Env()
        return cls(
            listen=env.get_str(f"{prefix}_LISTEN", default_listen),
            grace_seconds=env.get_float(f"{prefix}_GRACE_SECONDS", 10.0, minimum=0.0),
            max_message_bytes=env.get_int("MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES,
                                      minimum=4 * MiB, maximum=512 * MiB),
        )
