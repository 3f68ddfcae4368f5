"""The proxy the environment names for a host, read once at start (the RunPod API, the object store)."""

from __future__ import annotations

import urllib.request
from urllib.parse import urlsplit


def proxy_for(url: str) -> str | None:
    """The proxy ``HTTPS_PROXY``/``HTTP_PROXY`` name for ``url``'s host, unless ``NO_PROXY`` bypasses it.

    Read once: aiohttp's ``trust_env`` would scan the environment on every request.
    """
    proxies = urllib.request.getproxies()
    host = urlsplit(url).hostname or ""
    if not proxies or urllib.request.proxy_bypass(host):
        return None
    return proxies.get(urlsplit(url).scheme)
