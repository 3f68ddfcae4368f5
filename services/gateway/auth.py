"""Who may call the gateway: bearer tokens, each with the name of the caller it belongs to.

``GATEWAY_TOKENS_FILE`` names a file of tokens, one per line::

    # comments and blank lines are ignored
    checkout-service: 3f9c…(at least 16 characters, no spaces)
    batch-jobs: 81be…

A name is 1–64 letters, digits, ``.``, ``_``, ``@`` or ``-``; each name and
each token appears once. The file is re-read when it changes (checked every
``GATEWAY_RELOAD_SECONDS``): tokens added work and tokens removed stop working
within that time, for calls made after it. A file that cannot be read or
parsed keeps the tokens that were in force, with an ERROR line saying why; a
bad file at start stops the gateway (exit code 2). ``GATEWAY_AUTH_TOKEN`` (or
``GATEWAY_AUTH_TOKEN_FILE``) is the older form: one token, caller ``default``,
read once at start. With neither, calls need no token (caller ``-``).

Callers send ``authorization: Bearer <token>``; the scheme may be in any
letter case. A token is hashed and compared with every known token's hash in
constant time, all of them every time, so the time taken tells nothing about
which token, or how much of one, matched. The caller's name goes into the
``job.submitted`` log line and into ``caller_var`` for the rest of the call
(metrics can read it there).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from services.common import logs
from services.common.config import ConfigError
from services.common.secrets import mask
from services.common.watched_files import WatchedFiles

log = logging.getLogger(__name__)

ANONYMOUS = "-"
SINGLE_TOKEN_NAME = "default"
MIN_TOKEN_CHARS = 16
MAX_FILE_BYTES = 1024 * 1024
TOKENS_VARIABLE = "GATEWAY_TOKENS_FILE"

# The caller of the call being served: a name from the tokens file, "default", or "-" without authentication.
caller_var: contextvars.ContextVar[str] = contextvars.ContextVar("facegen_caller", default=ANONYMOUS)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# Visible ASCII: what an HTTP/2 header value carries without escaping.
_TOKEN = re.compile(r"^[\x21-\x7e]+$")


class AuthenticationFailed(Exception):
    """The call's credentials are missing or unknown; the message says which, for the log (never the token).

    ``reason`` is a short label for metrics: ``missing``, ``malformed`` or ``unknown``.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class _Known:
    name: str
    digest: bytes


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str) -> dict[str, str]:
    """``{name: token}`` from a tokens file's text; ValueError naming the line of the first problem."""
    tokens: dict[str, str] = {}
    seen: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, token = (part.strip() for part in line.partition(":"))
        where = f"line {number}"
        if not colon:
            raise ValueError(f"{where}: expected 'name: token'")
        if not _NAME.match(name):
            raise ValueError(f"{where}: the name is not 1-64 letters, digits, '.', '_', '@' or '-'")
        if not _TOKEN.match(token):
            raise ValueError(f"{where} ({name}): the token is empty or holds spaces or non-ASCII characters")
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{where} ({name}): the token is shorter than {MIN_TOKEN_CHARS} characters")
        if name in tokens:
            raise ValueError(f"{where}: the name {name} is listed twice")
        if token in seen:
            raise ValueError(f"{where} ({name}): the same token as {seen[token]}")
        tokens[name] = token
        seen[token] = name
    if not tokens:
        raise ValueError("holds no token")
    return tokens


def _read_tokens(path: Path) -> tuple[_Known, ...]:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None
    return tuple(_Known(name, _digest(token)) for name, token in parse_tokens(text).items())


class Authenticator:
    """Tells the caller's name from a call's metadata; see the module docstring."""

    def __init__(self, tokens_file: Path | None = None, single_token: SecretStr | None = None) -> None:
        self.tokens_file = tokens_file
        self._watch = WatchedFiles(tokens_file) if tokens_file is not None else None
        self._known: tuple[_Known, ...] = ()
        if tokens_file is not None:
            try:
                self._known = _read_tokens(tokens_file)
            except ValueError as exc:
                raise ConfigError(f"{TOKENS_VARIABLE}={tokens_file} {exc}") from None
        elif single_token is not None:
            self._known = (_Known(SINGLE_TOKEN_NAME, _digest(single_token.get_secret_value())),)
        self._single_mask = mask(single_token)
        self.required = tokens_file is not None or single_token is not None

    @property
    def callers(self) -> list[str]:
        """The names of the tokens in force."""
        return [known.name for known in self._known]

    def caller(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """The caller's name for a call's metadata; AuthenticationFailed when it has no known token.

        Without authentication configured, every caller is ANONYMOUS.
        """
        if not self.required:
            return ANONYMOUS
        value = next((value for key, value in metadata or () if key == "authorization"), None)
        if value is None:
            raise AuthenticationFailed("no authorization metadata", "missing")
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed("not a bearer token", "malformed")
        digest = _digest(token.strip())
        found = None
        for known in self._known:  # one snapshot: a reload replaces the tuple whole
            if hmac.compare_digest(digest, known.digest):
                found = known.name
        if found is None:
            raise AuthenticationFailed("unknown token", "unknown")
        return found

    def reload_if_changed(self) -> bool:
        """Re-reads the tokens file if it changed (blocking: run it in a thread); True when new tokens apply."""
        if self._watch is None or self.tokens_file is None or not self._watch.changed():
            return False
        try:
            known = _read_tokens(self.tokens_file)
        except ValueError as exc:
            logs.event(log, "gateway.tokens_rejected", logging.ERROR, file=self.tokens_file, error=exc,
                       kept=",".join(self.callers))
            return False
        self._known = known
        logs.event(log, "gateway.tokens_reloaded", file=self.tokens_file, callers=",".join(self.callers))
        return True

    def describe(self) -> str:
        """For the start-up line: off, the single token masked, or the file and the callers' names."""
        if self.tokens_file is not None:
            return f"{self.tokens_file} ({', '.join(self.callers)})"
        return self._single_mask if self.required else "off"
