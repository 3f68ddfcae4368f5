"""A boto3 S3 client bound to the swapper's bucket, and caller-safe sentences for its failures.

Clients use SigV4, path-style addressing and the configured region (R2
wants ``auto``), and send checksums only where the S3 API requires them.
Every failure becomes a ``StorageUnavailable`` whose message says what is
wrong (missing bucket, rejected credentials, unreachable endpoint) without
showing a secret.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from services.common import logs
from services.common.errors import Unavailable
from services.common.secrets import mask
from services.swapper.settings import StorageSettings

log = logging.getLogger(__name__)

# One boto3 session for the process: each new session parses the S3 service model
# again (~0.3 s); client creation from a session is not thread-safe, hence the lock.
_SESSION_LOCK = threading.Lock()
_SESSION: boto3.session.Session | None = None
_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden",
                               "403", "401", "Unauthorized", "InvalidToken"})


class StorageUnavailable(Unavailable):
    """The store cannot be used; the message is safe to show callers."""


def error_code(exc: ClientError) -> str:
    """The S3 error code of a failed call (``NoSuchKey``, ``404``...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Bucket:
    """A thread-safe boto3 client for one bucket."""

    def __init__(self, settings: StorageSettings, endpoint_url: str, access_key_id: str,
                 secret_access_key: str, pool_size: int = 32) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.endpoint_url = endpoint_url
        self._key_id = access_key_id
        global _SESSION
        with _SESSION_LOCK:
            if _SESSION is None:
                _SESSION = boto3.session.Session()
            self.client: Any = _SESSION.client(
                "s3",
                endpoint_url=endpoint_url,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                region_name=settings.region,
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    max_pool_connections=pool_size,
                    connect_timeout=settings.connect_timeout_s,
                    read_timeout=settings.read_timeout_s,
                    retries={"max_attempts": settings.max_attempts, "mode": "standard"},
                    # Checksums only where the API requires them: some S3-compatible stores
                    # reject the CRC headers newer boto3 adds to every upload.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )

    def describe(self, exc: BaseException, action: str) -> str:
        """A caller-safe sentence for a boto3 failure during ``action``."""
        where = f"bucket {self.bucket!r} at {self.endpoint_url}"
        if isinstance(exc, ClientError):
            code = error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and action == "check the bucket"):
                return f"cannot {action}: {where} does not exist (create it, or set S3_CREATE_BUCKET=true)"
            if code in _CREDENTIAL_CODES or status in (401, 403):
                return (f"cannot {action}: the storage credentials (access key {mask(self._key_id)}) were "
                        f"rejected for {where} ({code or status})")
            return f"cannot {action}: {where} answered {code or 'an error'} (HTTP {status})"
        if isinstance(exc, NoCredentialsError):
            return f"cannot {action}: no storage credentials are configured"
        if isinstance(exc, BotoCoreError):
            return f"cannot {action}: {where} cannot be reached ({type(exc).__name__})"
        return f"cannot {action}: {type(exc).__name__}"

    def fail(self, exc: BaseException, action: str) -> StorageUnavailable:
        """Logs the failure and returns the error to raise."""
        message = self.describe(exc, action)
        logs.event(log, "storage.error", logging.WARNING, action=action, message=message)
        return StorageUnavailable(message)
