"""The record of a resumable swap in Redis, so that any swapper call can pick it up again.

One HASH per (job id, image index), ``facegen:swap:{<job_id>}:<index>`` (the
job id is the hash tag: every key of one job lands on one Redis Cluster
slot), expiring a little after the swap's deadline:

- ``target_key``: the stored temporary target, written as soon as it is stored;
- ``state``: ``submitting`` (written before ``/run``, by one call only),
  ``submitted`` (with ``remote_job_id`` and ``endpoint``, written as soon as
  ``/run`` answers) or ``cancelled`` (CancelSwap; a tombstone that keeps any
  later call from submitting the swap again until it expires, also made when
  CancelSwap comes before the Swap it cancels).

Every operation fails fast with ``Unavailable`` while Redis is down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from services.common.errors import Unavailable
from services.common.redis import REDIS_DOWN

T = TypeVar("T")

SUBMITTING = "submitting"
SUBMITTED = "submitted"
CANCELLED = "cancelled"
_POLL_S = 0.05

# Records the remote job unless CancelSwap came first; returns 1 when it did.
_SUBMITTED = """
if redis.call('HGET', KEYS[1], 'state') == 'cancelled' then return 1 end
redis.call('HSET', KEYS[1], 'state', 'submitted', 'remote_job_id', ARGV[1], 'endpoint', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 0
"""
# Forgets a finished swap, but keeps a CancelSwap tombstone until it expires.
_FORGET = """
if redis.call('HGET', KEYS[1], 'state') ~= 'cancelled' then redis.call('DEL', KEYS[1]) end
return 0
"""
# Leaves a tombstone in place of the record, also where there is none yet (a Swap still on its way
# must not submit: it finds the tombstone when it claims); returns what the record held before.
_CANCEL = """
local before = redis.call('HGETALL', KEYS[1])
redis.call('HDEL', KEYS[1], 'target_key', 'remote_job_id', 'endpoint')
redis.call('HSET', KEYS[1], 'state', 'cancelled')
if #before == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return before
"""


@dataclass(frozen=True)
class SwapRecord:
    """What Redis holds about one resumable swap."""

    target_key: str = ""
    state: str = ""
    remote_job_id: str = ""
    endpoint: str = ""

    @classmethod
    def parse(cls, fields: dict[Any, Any] | list[Any]) -> SwapRecord | None:
        """From HGETALL's answer (a dict, or the flat list a script returns); None when empty."""
        if isinstance(fields, list):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        if not fields:
            return None
        text = {_text(name): _text(value) for name, value in fields.items()}
        return cls(target_key=text.get("target_key", ""), state=text.get("state", ""),
                   remote_job_id=text.get("remote_job_id", ""), endpoint=text.get("endpoint", ""))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SwapRecords:
    """The records of resumable swaps; ``ttl_s`` beyond each swap's deadline."""

    def __init__(self, redis: aioredis.Redis, grace_s: float) -> None:
        self.redis = redis
        self.grace_s = grace_s
        self._submitted = redis.register_script(_SUBMITTED)
        self._cancel = redis.register_script(_CANCEL)
        self._forget = redis.register_script(_FORGET)

    @staticmethod
    def key(job_id: str, index: int) -> str:
        """The record's key; the job id is its hash tag."""
        return f"facegen:swap:{{{job_id}}}:{index}"

    def _ttl_ms(self, budget_s: float) -> int:
        return int((budget_s + self.grace_s) * 1000)

    async def read(self, job_id: str, index: int, budget_s: float | None = None) -> SwapRecord | None:
        """The record, or None; with ``budget_s``, it is made to last past this call's deadline too."""
        if budget_s is None:
            return SwapRecord.parse(await self._call(self.redis.hgetall(self.key(job_id, index))))
        key = self.key(job_id, index)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.pexpire(key, self._ttl_ms(budget_s))
            fields, _ = await self._call(pipe.execute())
        return SwapRecord.parse(fields)

    async def note_target(self, job_id: str, index: int, target_key: str, budget_s: float) -> None:
        """Records where the target is stored (and makes the record last past this call's deadline)."""
        key = self.key(job_id, index)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "target_key", target_key)
            pipe.pexpire(key, self._ttl_ms(budget_s))
            await self._call(pipe.execute())

    async def claim_submit(self, job_id: str, index: int, budget_s: float) -> bool:
        """Marks the swap ``submitting`` unless another call has; True when this call may send ``/run``."""
        key = self.key(job_id, index)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "state", SUBMITTING)
            pipe.pexpire(key, self._ttl_ms(budget_s))
            claimed, _ = await self._call(pipe.execute())
        return bool(claimed)

    async def submitted(self, job_id: str, index: int, endpoint: str, remote_job_id: str,
                        budget_s: float) -> bool:
        """Records the accepted remote job; True when the swap was cancelled (CancelSwap) meanwhile."""
        cancelled = await self._call(self._submitted(keys=[self.key(job_id, index)],
                                                     args=[remote_job_id, endpoint, self._ttl_ms(budget_s)]))
        return bool(cancelled)

    async def cancel(self, job_id: str, index: int, budget_s: float) -> SwapRecord | None:
        """Turns the record into a tombstone; returns what it held (None: there was no record).

        A tombstone made where there was no record lasts ``budget_s`` (the longest a Swap of it could
        still be on its way) plus the grace period.
        """
        return SwapRecord.parse(await self._call(self._cancel(keys=[self.key(job_id, index)],
                                                              args=[self._ttl_ms(budget_s)])))

    async def forget(self, job_id: str, index: int) -> None:
        """Forgets a finished swap (a CancelSwap tombstone stays until it expires)."""
        await self._call(self._forget(keys=[self.key(job_id, index)]))

    async def wait_for_job(self, job_id: str, index: int, within_s: float) -> SwapRecord | None:
        """Polls until the record names a remote job or is cancelled; the last record read after ``within_s``."""
        until = time.monotonic() + within_s
        while True:
            record = await self.read(job_id, index)
            if record is None or record.remote_job_id or record.state != SUBMITTING:
                return record
            if time.monotonic() >= until:
                return record
            await asyncio.sleep(_POLL_S)

    @staticmethod
    async def _call(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except REDIS_DOWN as exc:
            raise Unavailable(f"the swap records (Redis) cannot be reached: {type(exc).__name__}; "
                              "resumable swaps are refused until it is back") from None
