"""Bucket setup: the bucket exists (or is created) and the lifecycle rules that expire our objects are in place.

Run at start, before the service reports SERVING, and by ``python -m
services.swapper setup`` (for a deployment whose running token may not
manage lifecycle rules: run setup once with an admin token, then serve with
``S3_MANAGE_LIFECYCLE=false``). A lifecycle rule expires ``tmp/`` and
``refs/`` (and optionally ``results/``) in case a delete is ever missed;
rules with other ids are kept.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from services.common import logs
from services.swapper.keys import REFS_PREFIX, RESULTS_PREFIX, TEMP_PREFIX
from services.swapper.s3 import S3Bucket, error_code

log = logging.getLogger(__name__)

_RULE_IDS = {"facegen-tmp": TEMP_PREFIX, "facegen-refs": REFS_PREFIX, "facegen-results": RESULTS_PREFIX}


class BucketSetup:
    """Checks and prepares the bucket (blocking; run it in a thread)."""

    def __init__(self, bucket: S3Bucket) -> None:
        self.s3 = bucket
        self.settings = bucket.settings

    def ensure_ready(self, manage_lifecycle: bool | None = None, strict: bool = False) -> list[str]:
        """Checks (or creates) the bucket and installs the lifecycle rules; returns notes for the log.

        ``manage_lifecycle`` defaults to ``S3_MANAGE_LIFECYCLE``. A store that
        refuses the rules is only noted, unless ``strict``: then it is a
        StorageUnavailable.
        """
        notes: list[str] = []
        client = self.s3.client
        try:
            client.head_bucket(Bucket=self.s3.bucket)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchBucket", "NotFound") and self.settings.create_bucket:
                self._create_bucket()
                notes.append(f"created bucket {self.s3.bucket}")
            else:
                raise self.s3.fail(exc, "check the bucket") from None
        except BotoCoreError as exc:
            raise self.s3.fail(exc, "check the bucket") from None
        if self.settings.manage_lifecycle if manage_lifecycle is None else manage_lifecycle:
            notes.append(self._ensure_lifecycle(strict))
        return notes

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.s3.bucket}
        if self.settings.region not in ("us-east-1", ""):
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        try:
            self.s3.client.create_bucket(**kwargs)
        except ClientError as exc:
            if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self.s3.fail(exc, "create the bucket") from None
        except BotoCoreError as exc:
            raise self.s3.fail(exc, "create the bucket") from None

    def wanted_rules(self) -> list[dict[str, Any]]:
        """The lifecycle rules this service manages."""
        days = {"facegen-tmp": self.settings.temp_expiry_days,
                "facegen-refs": self.settings.reference_expiry_days,
                "facegen-results": self.settings.result_expiry_days}
        return [
            {"ID": rule_id, "Filter": {"Prefix": prefix}, "Status": "Enabled",
             "Expiration": {"Days": days[rule_id]},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
            for rule_id, prefix in _RULE_IDS.items() if days[rule_id] > 0
        ]

    def _ensure_lifecycle(self, strict: bool) -> str:
        """Adds or updates our rules and keeps everyone else's."""
        client, bucket = self.s3.client, self.s3.bucket
        try:
            try:
                current = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
            except ClientError as exc:
                if error_code(exc) != "NoSuchLifecycleConfiguration":
                    raise
                current = []
            wanted = self.wanted_rules()
            ours = sorted(_rule_summary(rule) for rule in current if rule.get("ID") in _RULE_IDS)
            if ours == sorted(_rule_summary(rule) for rule in wanted):
                return "lifecycle rules already in place"
            rules = [rule for rule in current if rule.get("ID") not in _RULE_IDS] + wanted
            if rules:
                client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
            else:
                client.delete_bucket_lifecycle(Bucket=bucket)
            return "lifecycle rules installed: " + ", ".join(
                f"{rule['Filter']['Prefix']} after {rule['Expiration']['Days']} d" for rule in wanted)
        except (ClientError, BotoCoreError) as exc:
            if strict:
                raise self.s3.fail(exc, "manage the lifecycle rules") from None
            message = self.s3.describe(exc, "manage the lifecycle rules")
            logs.event(log, "storage.lifecycle_skipped", logging.WARNING, message=message,
                       hint="set S3_MANAGE_LIFECYCLE=false if another tool manages them")
            return f"lifecycle not managed: {message}"


def _rule_summary(rule: dict[str, Any]) -> tuple[str, str, int]:
    prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", ""))
    return str(rule.get("ID")), str(prefix), int(rule.get("Expiration", {}).get("Days", 0))

