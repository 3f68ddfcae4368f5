"""HTTP calls to the RunPod Serverless queue API, on one pooled aiohttp session per process.

Each call either returns a parsed answer or raises one of the errors below,
which say what is known about the request's fate: ``NotSent`` (it certainly
never reached the endpoint: connection refused, DNS failure, connect
timeout), ``NoAnswer`` (it may have been processed: reset or timeout after
sending), ``HttpStatusError`` (the endpoint answered with an error status),
``BadResponse`` (a success status with a body that is not the JSON we
expect) or ``TooLarge`` (an answer over its size limit, refused unread).
Callers decide from that whether a retry could duplicate work.

Every call has one timeout for the whole request, answer included. The API
key is sent only with requests built from ``api_base``, redirects are never
followed with it, and it never appears in a message. aiohttp rather than
httpx: here a request cost 0.16-0.30 ms of CPU with aiohttp against
0.9-3.8 ms with httpx, whose pool grows costlier with every open connection.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.common import tracing
from services.swapper.backoff import parse_retry_after
from services.swapper.fallback import clip
from services.swapper.metrics import SwapperMetrics
from services.swapper.proxies import proxy_for

USER_AGENT = "facegen-swapper/0.2"
_JSON = {"Content-Type": "application/json"}
# The longest a connection may take to open, whatever the request's timeout.
_CONNECT_S = 5.0
_CHUNK = 64 * 1024


class RunPodError(Exception):
    """A call to the RunPod API did not produce a usable answer."""


class NotSent(RunPodError):
    """The request certainly did not reach the endpoint (it is safe to send it again)."""


class NoAnswer(RunPodError):
    """The request may have reached the endpoint, but no complete answer came back."""


class BadResponse(RunPodError):
    """The endpoint answered 2xx with a body that is not the JSON the API specifies."""


class TooLarge(RunPodError):
    """The answer is larger than the caller accepts; it was not read."""


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
    """Client for one RunPod API base (``https://api.runpod.ai/v2`` or a local server).

    The sessions are opened on first use, in the event loop that uses them.
    """

    def __init__(self, api_base: str, api_key: str, max_connections: int = 256,
                 metrics: SwapperMetrics | None = None) -> None:
        self.api_base = api_base.rstrip("/")
        self.max_connections = max_connections
        self.metrics = metrics or SwapperMetrics()
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
        self._proxy = proxy_for(self.api_base)
        self._api: aiohttp.ClientSession | None = None
        self._plain: aiohttp.ClientSession | None = None

    def _api_session(self) -> aiohttp.ClientSession:
        if self._api is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0)
            self._api = aiohttp.ClientSession(connector=connector, headers=self._headers, proxy=self._proxy,
                                              cookie_jar=aiohttp.DummyCookieJar(), trace_configs=_traced())
        return self._api

    def _plain_session(self) -> aiohttp.ClientSession:
        # Result downloads go wherever the worker says: never with our key.
        if self._plain is None:
            self._plain = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, trust_env=True,
                                                cookie_jar=aiohttp.DummyCookieJar(), trace_configs=_traced())
        return self._plain

    async def aclose(self) -> None:
        """Closes the pooled connections."""
        for session in (self._api, self._plain):
            if session is not None:
                await session.close()
        self._api = self._plain = None

    async def submit(self, endpoint: str, payload: dict[str, Any], timeout_s: float) -> SubmitAnswer:
        """``POST /{endpoint}/run``: queues a job."""
        body = await self._call("POST", f"{endpoint}/run", timeout_s, data=json.dumps(payload).encode())
        job_id = body.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise BadResponse(f"/run answered without a job id (keys: {clip(', '.join(body), 100)})")
        return SubmitAnswer(job_id=job_id, status=str(body.get("status") or "IN_QUEUE"))

    async def status(self, endpoint: str, job_id: str, timeout_s: float, wait_ms: int = 0,
                     max_bytes: int = 64 * 1024 * 1024) -> StatusAnswer:
        """``GET /{endpoint}/status/{id}``, long-polling with ``?wait=`` when ``wait_ms`` > 0."""
        params = {"wait": str(wait_ms)} if wait_ms > 0 else None
        body = await self._call("GET", f"{endpoint}/status/{job_id}", timeout_s, params=params, max_bytes=max_bytes)
        status = body.get("status")
        if not isinstance(status, str) or not status:
            raise BadResponse(f"/status answered without a status (keys: {clip(', '.join(body), 100)})")
        return StatusAnswer(status=status.upper(), delay_ms=_millis(body.get("delayTime")),
                            execution_ms=_millis(body.get("executionTime")),
                            output=body.get("output"), error=body.get("error"))

    async def cancel(self, endpoint: str, job_id: str, timeout_s: float) -> str:
        """``POST /{endpoint}/cancel/{id}``; returns the status the endpoint reports."""
        body = await self._call("POST", f"{endpoint}/cancel/{job_id}", timeout_s)
        return str(body.get("status") or "")

    async def health(self, endpoint: str, timeout_s: float) -> dict[str, Any]:
        """``GET /{endpoint}/health``: worker and job counts."""
        return await self._call("GET", f"{endpoint}/health", timeout_s)

    async def download(self, url: str, max_bytes: int, timeout_s: float) -> bytes:
        """Downloads a result without credentials, refusing more than ``max_bytes`` or ``timeout_s``."""
        what = "downloading the result"
        try:
            async with self._plain_session().get(url, timeout=_timeout(timeout_s)) as response:
                if response.status >= 400:
                    raise HttpStatusError(response.status, f"{what} answered HTTP {response.status}")
                return await _read_capped(response, max_bytes, "the result download")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _transport_error(exc, what) from None

    async def _call(self, method: str, path: str, timeout_s: float, data: bytes | None = None,
                    params: dict[str, str] | None = None, max_bytes: int = 1024 * 1024) -> dict[str, Any]:
        endpoint, _, rest = path.partition("/")
        route = rest.split("/")[0] if rest else endpoint
        status = 0
        started = time.perf_counter()
        try:
            async with self._api_session().request(
                    method, f"{self.api_base}/{path}", data=data, params=params,
                    headers=_JSON if data is not None else None, timeout=_timeout(timeout_s),
                    allow_redirects=False) as response:
                status = response.status
                if status >= 300:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                    raise HttpStatusError(status, await _status_message(route, response), retry_after)
                raw = await _read_capped(response, max_bytes, f"/{route}'s answer")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _transport_error(exc, f"/{route}") from None
        finally:
            metrics = self.metrics
            metrics.runpod_requests.labels(endpoint=endpoint, route=route, status=str(status or "error")).inc()
            metrics.runpod_seconds.labels(endpoint=endpoint, route=route).observe(time.perf_counter() - started)
        try:
            body = json.loads(raw)
        except ValueError:
            snippet = raw[:80].decode("utf-8", "replace")
            raise BadResponse(f"/{route} answered HTTP {status} with a body that is not JSON: "
                              f"{clip(snippet, 80)!r}") from None
        if not isinstance(body, dict):
            raise BadResponse(f"/{route} answered HTTP {status} with JSON that is not an object")
        return body


def _traced() -> list[aiohttp.TraceConfig]:
    """With tracing on, a client span per request, its context sent in ``traceparent`` (URLs without query)."""
    if not tracing.enabled():
        return []
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    # The query is dropped from the recorded URL: a result URL may be presigned.
    return [create_trace_config(url_filter=lambda url: str(url.with_query(None)),
                                tracer_provider=tracing.provider())]


def _timeout(total: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, sock_connect=min(total, _CONNECT_S))


def _millis(value: Any) -> int:
    try:
        return max(0, int(float(value)))
    except (TypeError, ValueError):
        return 0


async def _status_message(route: str, response: aiohttp.ClientResponse) -> str:
    status = response.status
    if status in (401, 403):
        return f"/{route} answered HTTP {status}: the RunPod API key was rejected"
    if 300 <= status < 400:
        return f"/{route} answered a redirect (HTTP {status}); redirects are not followed with the API key"
    try:
        detail = (await response.content.read(200)).decode("utf-8", "replace")
    except (aiohttp.ClientError, OSError):
        detail = ""
    return f"/{route} answered HTTP {status}" + (f": {clip(detail, 120)}" if detail.strip() else "")


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int, what: str) -> bytes:
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise TooLarge(f"{what} is {declared:,} bytes; the limit is {max_bytes:,} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"{what} is over the limit of {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _transport_error(exc: BaseException, what: str) -> RunPodError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return NotSent(f"{what}: connection timed out")
    if isinstance(exc, TimeoutError):
        return NoAnswer(f"{what}: no answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return NotSent(f"{what}: connection refused or host unreachable")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | aiohttp.ClientPayloadError):
        return NoAnswer(f"{what}: connection reset or closed before a complete answer")
    return NoAnswer(f"{what}: {type(exc).__name__}")
