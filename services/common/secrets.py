"""Masking of secrets for logs and error messages."""

from __future__ import annotations

from pydantic import SecretStr


def mask(secret: str | SecretStr | None) -> str:
    """Shows at most the first 6 and last 7 characters: ``rpa_YT…Q1tdxlb``.

    Short secrets are masked entirely, so that a mask never reveals most of one.
    """
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    if not secret:
        return "<unset>"
    if len(secret) < 20:
        return "…" * 3
    return f"{secret[:6]}…{secret[-7:]}"
