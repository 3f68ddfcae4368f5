"""Blocking HTTP calls to the RunPod Serverless queue API (run them in a thread).

Each call either returns a parsed answer or raises one of the errors below,
which say what is known about the request's fate: ``NotSent`` (it certainly
never reached the endpoint: connection refused, DNS failure, connect
timeout), ``NoAnswer`` (it may have been processed: reset or read timeout
after sending), ``HttpStatusError`` (the endpoint answered with an error
status) or ``BadResponse`` (a success status with a body that is not the
JSON we expect). Callers decide from that whether a retry could duplicate
work.

The API key is sent only with requests built from ``api_base``, redirects
are never followed with it, and it never appears in a message.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from services.swapper.backoff import parse_retry_after
from services.swapper.fallback import clip

USER_AGENT = "facegen-swapper/0.1"
# Status answers carry the whole base64 result; this bounds what one answer may hold.
_JSON_OVERHEAD = 1024 * 1024


class RunPodError(Exception):
    """A call to the RunPod API did not produce a usable answer."""


class NotSent(RunPodError):
    """The request certainly did not reach the endpoint (it is safe to send it again)."""


class NoAnswer(RunPodError):
    """The request may have reached the endpoint, but no complete answer came back."""


class BadResponse(RunPodError):
    """The endpoint answered 2xx with a body that is not the JSON the API specifies."""


class HttpStatusError(RunPodError):
    """The endpoint answered with an HTTP error status."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def key_rejected(self) -> bool:
        """401/403: the API key was refused (retrying cannot help)."""
        return self.status in (401, 403)

    @property
    def rate_limited(self) -> bool:
        """429: too many requests or a full queue."""
        return self.status == 429

    @property
    def server_error(self) -> bool:
        """5xx."""
        return self.status >= 500


@dataclass(frozen=True)
class SubmitAnswer:
    """What ``POST /run`` returned."""

    job_id: str
    status: str


@dataclass(frozen=True)
class StatusAnswer:
    """What ``GET /status/{id}`` returned."""

    status: str
    delay_ms: int
    execution_ms: int
    output: Any
    error: Any


class RunPodClient:
    """Thread-safe client for one RunPod API base (``https://api.runpod.ai/v2`` or a local server)."""

    def __init__(self, api_base: str, api_key: str, pool_size: int = 64) -> None:
        self.api_base = api_base.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
        self._api = _session(pool_size, self.api_base)
        # Result downloads go wherever the worker says: never with our key.
        self._plain = _session(pool_size, None)

    def close(self) -> None:
        """Closes the pooled connections."""
        self._api.close()
        self._plain.close()

    def submit(self, endpoint: str, payload: dict[str, Any], timeout: float) -> SubmitAnswer:
        """``POST /{endpoint}/run``: queues a job."""
        body = self._call("POST", f"{endpoint}/run", timeout, payload=payload)
        job_id = body.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise BadResponse(f"/run answered without a job id (keys: {clip(', '.join(body), 100)})")
        return SubmitAnswer(job_id=job_id, status=str(body.get("status") or "IN_QUEUE"))

    def status(self, endpoint: str, job_id: str, timeout: float, wait_ms: int = 0,
               max_bytes: int = 64 * 1024 * 1024) -> StatusAnswer:
        """``GET /{endpoint}/status/{id}``, long-polling with ``?wait=`` when ``wait_ms`` > 0."""
        params = {"wait": str(wait_ms)} if wait_ms > 0 else None
        body = self._call("GET", f"{endpoint}/status/{job_id}", timeout, params=params,
                          max_bytes=max_bytes)
        status = body.get("status")
        if not isinstance(status, str) or not status:
            raise BadResponse(f"/status answered without a status (keys: {clip(', '.join(body), 100)})")
        return StatusAnswer(status=status.upper(), delay_ms=_millis(body.get("delayTime")),
                            execution_ms=_millis(body.get("executionTime")),
                            output=body.get("output"), error=body.get("error"))

    def cancel(self, endpoint: str, job_id: str, timeout: float) -> str:
        """``POST /{endpoint}/cancel/{id}``; returns the status the endpoint reports."""
        body = self._call("POST", f"{endpoint}/cancel/{job_id}", timeout)
        return str(body.get("status") or "")

    def health(self, endpoint: str, timeout: float) -> dict[str, Any]:
        """``GET /{endpoint}/health``: worker and job counts."""
        return self._call("GET", f"{endpoint}/health", timeout)

    def download(self, url: str, max_bytes: int, timeout: float) -> bytes:
        """Downloads a result without credentials, refusing more than ``max_bytes`` or ``timeout`` s."""
        deadline = time.monotonic() + timeout
        try:
            with self._plain.get(url, stream=True, timeout=_timeouts(timeout), allow_redirects=True,
                                 headers={"User-Agent": USER_AGENT}) as response:
                if response.status_code >= 400:
                    raise HttpStatusError(response.status_code,
                                          f"downloading the result answered HTTP {response.status_code}")
                return _read_capped(response, max_bytes, deadline, "the result download")
        except requests.RequestException as exc:
            raise _transport_error(exc, "downloading the result") from None

    def _call(self, method: str, path: str, timeout: float, payload: dict[str, Any] | None = None,
              params: dict[str, str] | None = None, max_bytes: int = 1024 * 1024) -> dict[str, Any]:
        url = f"{self.api_base}/{path}"
        route = path.split("/")[1] if "/" in path else path
        deadline = time.monotonic() + timeout
        try:
            with self._api.request(method, url, json=payload, params=params, headers=self._auth,
                                   timeout=_timeouts(timeout), allow_redirects=False,
                                   stream=True) as response:
                status = response.status_code
                if status >= 300:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                    raise HttpStatusError(status, _status_message(route, status, response), retry_after)
                raw = _read_capped(response, max_bytes + _JSON_OVERHEAD, deadline, f"/{route}")
        except requests.RequestException as exc:
            raise _transport_error(exc, f"/{route}") from None
        try:
            body = json.loads(raw)
        except ValueError:
            snippet = raw[:80].decode("utf-8", "replace")
            raise BadResponse(f"/{route} answered HTTP {status} with a body that is not JSON: "
                              f"{clip(snippet, 80)!r}") from None
        if not isinstance(body, dict):
            raise BadResponse(f"/{route} answered HTTP {status} with JSON that is not an object")
        return body


def _session(pool_size: int, api_base: str | None) -> requests.Session:
    session = requests.Session()
    if api_base is not None:
        # requests would scan the whole environment for proxies and look for ~/.netrc on
        # every request (a third of its CPU time here): read the proxies for the API host once.
        session.trust_env = False
        session.proxies.update(requests.utils.get_environ_proxies(api_base))
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _timeouts(timeout: float) -> tuple[float, float]:
    return (min(timeout, 5.0), timeout)


def _millis(value: Any) -> int:
    try:
        return max(0, int(float(value)))
    except (TypeError, ValueError):
        return 0


def _status_message(route: str, status: int, response: requests.Response) -> str:
    if status in (401, 403):
        return f"/{route} answered HTTP {status}: the RunPod API key was rejected"
    if 300 <= status < 400:
        return f"/{route} answered a redirect (HTTP {status}); redirects are not followed with the API key"
    detail = ""
    with contextlib.suppress(requests.RequestException):
        detail = next(response.iter_content(200, decode_unicode=False), b"").decode("utf-8", "replace")
    return f"/{route} answered HTTP {status}" + (f": {clip(detail, 120)}" if detail.strip() else "")


def _read_capped(response: requests.Response, max_bytes: int, deadline: float, what: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BadResponse(f"{what} is {int(declared):,} bytes; the limit is {max_bytes:,} bytes")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise BadResponse(f"{what} is over the limit of {max_bytes:,} bytes")
        if time.monotonic() > deadline:
            raise NoAnswer(f"{what} did not complete in time")
        chunks.append(chunk)
    return b"".join(chunks)


def _transport_error(exc: requests.RequestException, what: str) -> RunPodError:
    if isinstance(exc, requests.ConnectTimeout):
        return NotSent(f"{what}: connection timed out")
    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ReadTimeout):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(reason, (NewConnectionError, ConnectTimeoutError)):
            return NotSent(f"{what}: connection refused or host unreachable")
        return NoAnswer(f"{what}: connection reset or closed before a complete answer")
    if isinstance(exc, requests.ReadTimeout):
        return NoAnswer(f"{what}: no answer in time")
    return NoAnswer(f"{what}: {type(exc).__name__}")
