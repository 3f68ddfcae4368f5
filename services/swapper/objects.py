"""The hot object requests (PUT, GET and HEAD of images) on aiohttp, signed with botocore's SigV4 signer.

A request through boto3 cost ~1 ms of CPU (parameter validation, endpoint
rules, event hooks, urllib3, a thread hop each way); the same request signed
by botocore's ``S3SigV4Auth`` and sent on a pooled aiohttp session costs a
third of that, on the event loop. It is the request boto3 sends: the same
credentials, region, path-style URL (``<endpoint>/<bucket>/<key>``) and
signed payload hash (boto3 signs it too, as it sends no checksum header), so
any store boto3 works with (R2 included) accepts it. Presigned GET URLs come
from botocore's ``S3SigV4QueryAuth`` the same way (a quarter of boto3's
cost). boto3 keeps what is not hot: bucket setup, lifecycle rules, deletes.

Failures are raised as the exceptions boto3 raises (``ClientError`` with the
store's error code, ``EndpointConnectionError``, ``ReadTimeoutError``...), so
``S3Bucket.describe`` gives them the same sentences. Retries follow boto3's
standard mode: up to ``S3_MAX_ATTEMPTS`` attempts for connection failures,
timeouts, 500/502/503/504 and throttling (429, ``SlowDown``), after
``rand(0, 1) × min(scale × 2^i, 20)`` s (scale 1 s when throttled, else 50 ms).
Each operation is one client span, named and described as OpenTelemetry's
botocore instrumentation describes boto3's (``S3.PutObject``, ``rpc.*``,
``http.status_code``, ``aws.request_id``, ``retry_attempts``, the exception of
a failure).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit

import aiohttp
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.httpsession import get_cert_path
from multidict import CIMultiDictProxy
from opentelemetry.trace import Span, SpanKind
from yarl import URL

from services.common import logs, tracing
from services.swapper.blocking import BlockingPool
from services.swapper.proxies import proxy_for
from services.swapper.settings import StorageSettings

log = logging.getLogger(__name__)

USER_AGENT = "facegen-swapper/0.2"
# Bodies up to this size are hashed for the signature on the event loop (~0.3 ms); larger ones in a thread.
_INLINE_HASH_BYTES = 512 * 1024
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_THROTTLING = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestThrottled",
                         "TooManyRequestsException", "RequestLimitExceeded"})
_TRANSIENT = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "InternalError",
                        "ServiceUnavailable"})
_MAX_BACKOFF_S = 20.0
_ERROR_FIELD = re.compile(r"<(Code|Message)>([^<]{0,500})</\1>")
_ERROR_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """A successful answer: its headers and (for GET) its body."""

    headers: CIMultiDictProxy[str]
    body: bytes


class ObjectClient:
    """Signed object requests for one bucket on one pooled aiohttp session (opened on first use, in the loop
    that uses it)."""

    def __init__(self, settings: StorageSettings, pool: BlockingPool, max_connections: int = 64,
                 rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.pool = pool
        self.max_connections = max_connections
        self._rng = rng
        self._credentials = Credentials(settings.access_key_id.get_secret_value(),
                                        settings.secret_access_key.get_secret_value())
        self._base = f"{settings.endpoint.rstrip('/')}/{settings.bucket}/"
        parts = urlsplit(settings.endpoint)
        self._span_attributes: dict[str, str | int] = {
            "rpc.system": "aws-api", "rpc.service": "S3", "cloud.region": settings.region,
            "server.address": parts.hostname or "", "aws.s3.bucket": settings.bucket}
        if parts.port:
            self._span_attributes["server.port"] = parts.port
        # Read once, as boto3 does when its client is made: the proxy and the CA bundle.
        self._proxy = proxy_for(settings.endpoint)
        self._ssl: ssl.SSLContext | bool = True
        if parts.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=get_cert_path(os.environ.get("AWS_CA_BUNDLE") or True))
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s,
                                              sock_read=settings.read_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def url(self, key: str) -> str:
        """The object's path-style URL (as boto3 quotes it)."""
        return self._base + quote(key, safe="/~")

    def presign(self, key: str, expiry_s: int) -> str:
        """A presigned GET URL, computed locally (what boto3's ``generate_presigned_url`` makes)."""
        request = AWSRequest("GET", self.url(key))
        S3SigV4QueryAuth(self._credentials, "s3", self.settings.region, expires=expiry_s).add_auth(request)
        return str(request.url)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """``PutObject``: stores ``data`` under ``key`` with its Content-Type."""
        await self._request("PutObject", "PUT", key, data, {"Content-Type": content_type})

    async def get(self, key: str) -> bytes:
        """``GetObject``: the object's bytes (``ClientError`` ``NoSuchKey`` when it does not exist)."""
        return (await self._request("GetObject", "GET", key)).body

    async def head(self, key: str) -> CIMultiDictProxy[str]:
        """``HeadObject``: the object's headers (``ClientError`` ``404`` when it does not exist)."""
        return (await self._request("HeadObject", "HEAD", key)).headers

    async def aclose(self) -> None:
        """Closes the pooled connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0, ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  headers={"User-Agent": USER_AGENT},
                                                  cookie_jar=aiohttp.DummyCookieJar(), proxy=self._proxy,
                                                  auto_decompress=False)
        return self._session

    async def _signed(self, method: str, url: str, data: bytes, headers: dict[str, str]) -> dict[str, str]:
        request = AWSRequest(method, url, data=data, headers=headers)
        signer = S3SigV4Auth(self._credentials, "s3", self.settings.region)
        if len(data) > _INLINE_HASH_BYTES:
            await self.pool.run(signer.add_auth, request)
        else:
            signer.add_auth(request)
        return dict(request.headers.items())

    async def _request(self, operation: str, method: str, key: str, data: bytes = b"",
                       headers: dict[str, str] | None = None) -> Answer:
        url = self.url(key)
        signed = await self._signed(method, url, data, headers or {})
        span = tracing.NO_SPAN
        if tracing.enabled():
            span = tracing.start_span(f"S3.{operation}", SpanKind.CLIENT,
                                      attributes={**self._span_attributes, "rpc.method": operation})
        error: str | None = None
        attempt = 0
        try:
            while True:
                try:
                    return await self._send(operation, method, URL(url, encoded=True), data, signed, span)
                except (ClientError, BotoCoreError) as exc:
                    attempt += 1
                    delay = self._retry_delay(exc, attempt)
                    if delay is None:
                        error = str(exc)
                        span.record_exception(exc)
                        raise
                    logs.event(log, "storage.retry", logging.WARNING, operation=operation, key=key,
                               attempt=attempt, cause=_cause(exc), delay_ms=int(delay * 1000))
                await asyncio.sleep(delay)
        finally:
            if span.is_recording():
                span.set_attribute("retry_attempts", attempt - 1 if error else attempt)
            tracing.end(span, error)

    async def _send(self, operation: str, method: str, url: URL, data: bytes, headers: dict[str, str],
                    span: Span) -> Answer:
        try:
            async with self._open().request(method, url, data=data or None, headers=headers,
                                            allow_redirects=False) as response:
                if span.is_recording():
                    span.set_attribute("http.status_code", response.status)
                    request_id = response.headers.get("x-amz-request-id")
                    if request_id:
                        span.set_attribute("aws.request_id", request_id)
                if response.status >= 300:
                    raise await _client_error(operation, response)
                body = await response.read() if method == "GET" else b""
                return Answer(response.headers, body)
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=str(url), error=exc) from None
        except aiohttp.ClientSSLError as exc:
            raise SSLError(endpoint_url=str(url), error=exc) from None
        except aiohttp.ClientConnectorError as exc:
            raise EndpointConnectionError(endpoint_url=str(url), error=exc) from None
        except TimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=str(url), error=exc) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
            raise ConnectionClosedError(endpoint_url=str(url), error=exc) from None
        except aiohttp.ClientError as exc:
            raise HTTPClientError(error=exc) from None

    def _retry_delay(self, exc: BaseException, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when ``exc`` is final (or attempts are spent)."""
        if attempt >= self.settings.max_attempts:
            return None
        scale = 0.05
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if status == 429 or code in _THROTTLING:
                scale = 1.0
            elif status not in _RETRY_STATUS and code not in _TRANSIENT:
                return None
        elif not isinstance(exc, BotoConnectionError | HTTPClientError):  # what boto3 retries: no answer came
            return None
        return self._rng() * min(scale * 2 ** (attempt - 1), _MAX_BACKOFF_S)


async def _client_error(operation: str, response: aiohttp.ClientResponse) -> ClientError:
    """The ``ClientError`` boto3 would raise for an error answer (a HEAD's code is its status, as in boto3)."""
    fields: dict[str, str] = {}
    if response.method != "HEAD":
        text = (await response.content.read(_ERROR_BODY_BYTES)).decode("utf-8", "replace")
        fields = {name: value for name, value in _ERROR_FIELD.findall(text)}
    code = fields.get("Code") or str(response.status)
    error = {"Code": code, "Message": fields.get("Message") or response.reason or ""}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": response.status}}, operation)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return f"{exc.response.get('Error', {}).get('Code')} (HTTP " \
               f"{exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode')})"
    return type(exc).__name__


def last_modified(headers: CIMultiDictProxy[str]) -> datetime | None:
    """The ``Last-Modified`` header as an aware datetime, or None."""
    value = headers.get("Last-Modified")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
