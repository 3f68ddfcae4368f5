"""Masking of secrets for logs, error messages and reports."""

from __future__ import annotations

from pydantic import SecretStr

# Shown characters: the last 4 at most, and only of a secret long enough that they are a small part of it.
SHOWN = 4
MIN_LENGTH_TO_SHOW = 16
HIDDEN = "…"


def mask(secret: str | SecretStr | None) -> str:
    """Shows at most the last 4 characters: ``…dxlb``; a secret under 16 characters is hidden entirely.

    Enough to tell two keys apart in a log or a ``doctor`` report, never enough to use one.
    """
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    if not secret:
        return "<unset>"
    if len(secret) < MIN_LENGTH_TO_SHOW:
        return HIDDEN
    return f"{HIDDEN}{secret[-SHOWN:]}"
