"""The job store shared by every gateway replica, in Redis (``GATEWAY_STORE=redis``).

Layout and atomic steps: ``redis_codec`` and ``redis_scripts``; live events:
``redis_live``. What this module adds:

- Submitting stores the job and its first event, claims its idempotency key
  (``SET NX``), then admits and queues it in one script against the
  deployment-wide limits. Nothing is acknowledged before it is in Redis.
- A job's events go through a per-job outbox: appends return at once and a
  flusher writes them in order (pipelined), retrying while Redis is
  unreachable, so a running job goes on through a Redis restart and its
  events land once Redis is back. The outbox is bounded: past
  ``max_events`` unwritten events the job waits.
- The store reports itself unhealthy while Redis does not answer PING, and
  after an outage it waits one lease period before taking over other
  gateways' jobs, so that their holders can renew first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from facegen.v1 import gateway_pb2
from services.common import logs
from services.common.errors import NotFound, ResourceExhausted
from services.common.redis import REDIS_DOWN, RedisSettings, connect, is_outage
from services.gateway.admission import AdmissionLimits
from services.gateway.redis_codec import (
    SNAPSHOT_FIELDS,
    Keys,
    checkpoint_fields,
    job_fields,
    job_from_snapshot,
    lease_from_fields,
)
from services.gateway.redis_live import RESYNC, LiveEvents
from services.gateway.redis_scripts import Scripts
from services.gateway.redis_writer import ScriptWriter
from services.gateway.store import (
    TERMINAL_STATES,
    CancelListener,
    Created,
    ImageCheckpoint,
    JobStore,
    Lease,
    LeaseLost,
    NewJob,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

# A job that never ends (every gateway gone for good) is dropped after a day.
UNFINISHED_TTL_SECONDS = 86_400
HEALTH_POLL_SECONDS = 1.0
# How long a watcher waits for a live event before checking the Stream itself.
WATCH_CHECK_SECONDS = 5.0
# Writes of one job sent in one round trip.
FLUSH_BATCH = 32
# Positions in the APPEND script's arguments.
STORED_EVENT, LIVE_EVENT, LIVE_CHANNEL = 3, 4, 11


class _Outbox:
    """The unwritten events of one lease, in order."""

    def __init__(self, limit: int, writer: ScriptWriter) -> None:
        self.items: deque[tuple[list[Any], list[Any]]] = deque()
        self.writer = writer
        self.limit = limit
        self.changed = asyncio.Event()
        self.lost = False
        # A write is in flight (only one at a time, to keep the order).
        self.writing = False
        # The last write failed: Redis is unreachable, the flusher retries.
        self.failing = False
        self.flusher: asyncio.Task[None] | None = None

    @property
    def empty(self) -> bool:
        return not self.items

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class RedisJobStore(JobStore):
    """A JobStore in Redis, shared by every gateway replica that points at it."""

    def __init__(self, settings: RedisSettings, limits: AdmissionLimits, ttl_seconds: float, max_events: int,
                 lease_seconds: float, instance: str, prefix: str = "facegen") -> None:
        self.lease_seconds: float = lease_seconds
        self._settings = settings
        self._limits = limits
        self._ttl = max(1, round(ttl_seconds))
        self._max_events = max_events
        self._lease_ms = round(lease_seconds * 1000)
        self._keys = Keys(prefix)
        self._redis = connect(settings, f"facegen-gateway-{instance}")
        self._scripts = Scripts.register(self._redis)
        self._outboxes: dict[str, _Outbox] = {}
        self._work = asyncio.Event()
        self._healthy = False
        self._healthy_since = 0.0
        self._on_cancel: CancelListener = lambda _job, _reason: None
        self._live = LiveEvents(self._redis, {self._keys.wake: self._on_wake,
                                              self._keys.cancel: self._on_cancel_message})
        self._health: asyncio.Task[None] | None = None

    # -- connection and health -------------------------------------------------------

    async def start(self, on_cancel: CancelListener) -> None:
        self._on_cancel = on_cancel
        self._live.start()
        self._health = asyncio.create_task(self._check_health(), name="redis-health")

    async def close(self) -> None:
        for task in (self._health, *(box.flusher for box in self._outboxes.values())):
            if task is not None:
                task.cancel()
        await self._live.close()
        await self._redis.aclose()

    @property
    def healthy(self) -> bool:
        return self._healthy and self._live.connected

    async def _check_health(self) -> None:
        while True:
            try:
                async with asyncio.timeout(max(HEALTH_POLL_SECONDS * 2, 1.0)):
                    await self._redis.ping()
                ok = True
            except (*REDIS_DOWN, TimeoutError) as exc:
                if self._healthy:
                    logs.event(log, "store.unreachable", logging.WARNING, redis=self._settings.display_url,
                               error=exc)
                ok = False
            if ok and not self._healthy:
                self._healthy_since = time.monotonic()
                logs.event(log, "store.reachable", redis=self._settings.display_url)
            self._healthy = ok
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    def _on_wake(self, _data: bytes) -> None:
        self._work.set()

    def _on_cancel_message(self, data: bytes) -> None:
        if data == RESYNC:
            return
        job_id, _, reason = data.decode(errors="replace").partition("\n")
        self._on_cancel(job_id, reason)

    # -- submitting --------------------------------------------------------------------

    async def find(self, idempotency_key: str) -> tuple[str, str] | None:
        async with _reaching_redis():
            value = cast(bytes | None, await self._redis.get(self._keys.idempotency(idempotency_key)))
            if value is None:
                return None
            job_id, _, digest = value.decode().partition(" ")
            if not await self._redis.exists(self._keys.job(job_id)):
                return None
        return job_id, digest

    async def place_for_new_job(self) -> int | None:
        async with _reaching_redis(), self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._keys.active)
            pipe.zcard(self._keys.leases)
            pipe.llen(self._keys.pending)
            admitted, running, waiting = await pipe.execute()
        if int(admitted) >= self._limits.max_admitted:
            return None
        return self._limits.queue_ahead(int(running), int(waiting))

    async def create(self, job: NewJob) -> Created:
        keys, job_id = self._keys, job.job_id
        async with _reaching_redis():
            created = await self._scripts.create(
                keys=[keys.job(job_id), keys.events(job_id)],
                args=[UNFINISHED_TTL_SECONDS, job.first_event.SerializeToString(),
                      *job_fields(job, round(time.time() * 1000))])
            if not created:
                raise RuntimeError(f"job id {job_id} exists already")
            if job.idempotency_key:
                winner = await self._claim_idempotency_key(job)
                if winner is not None:
                    await self._redis.delete(keys.job(job_id), keys.events(job_id))
                    return Created(winner, False)
            admitted, running, waiting = await self._scripts.admit(
                keys=[keys.pending, keys.active, keys.leases],
                args=[job_id, self._limits.max_admitted, keys.wake])
            if not admitted:
                await self._redis.delete(keys.job(job_id), keys.events(job_id))
                if job.idempotency_key:
                    await self._redis.delete(keys.idempotency(job.idempotency_key))
                raise ResourceExhausted(self._limits.refusal(int(running), int(waiting)))
        return Created(job_id, True)

    async def _claim_idempotency_key(self, job: NewJob) -> str | None:
        """Sets the key to this job; returns the job that holds it instead, if one still exists."""
        name = self._keys.idempotency(job.idempotency_key)
        value = f"{job.job_id} {job.fingerprint}"
        for _ in range(3):
            if await self._redis.set(name, value, nx=True, ex=UNFINISHED_TTL_SECONDS):
                return None
            held = cast(bytes | None, await self._redis.get(name))
            if held is None:
                continue
            winner = held.decode().partition(" ")[0]
            if await self._redis.exists(self._keys.job(winner)):
                return winner
            # The job it named has expired: the key is free again.
            await self._redis.delete(name)
        return None

    # -- running -------------------------------------------------------------------------

    async def queue_depth(self) -> int:
        async with _reaching_redis():
            return int(await self._redis.llen(self._keys.pending))

    async def claim(self, owner: str) -> Lease | None:
        take_orphans = self.healthy and time.monotonic() - self._healthy_since >= self.lease_seconds
        keys = self._keys
        async with _reaching_redis():
            for _ in range(5):
                claimed = await self._scripts.claim(
                    keys=[keys.pending, keys.leases],
                    args=[self._limits.max_running, self._lease_ms, 1 if take_orphans else 0])
                if not claimed:
                    return None
                lease = await self._take(claimed[0].decode(), owner)
                if lease is not None:
                    return lease
        return None

    async def _take(self, job_id: str, owner: str) -> Lease | None:
        """Makes ``owner`` the holder of a job it has a running slot for; None if it cannot run."""
        answer = await self._scripts.take(keys=[self._keys.job(job_id)], args=[owner, self._lease_ms])
        outcome = answer[0]
        if outcome == b"held":
            # Its holder renewed meanwhile: put the right expiry back.
            await self._redis.zadd(self._keys.leases, {job_id: int(answer[1])}, xx=True)
            return None
        if outcome != b"ok":
            # Gone or ended: whoever ran it could not tidy up; free its slot.
            await self._forget(job_id)
            return None
        flat = answer[2]
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        lease = lease_from_fields(job_id, owner, (answer[1] or b"").decode(), fields)
        box = self._outboxes[job_id] = _Outbox(self._max_events, ScriptWriter(self._redis, self._scripts.append))
        box.flusher = asyncio.create_task(self._flush(lease, box), name=f"flush-{job_id}")
        await self._live.run_here(self._keys.live(job_id))
        return lease

    async def _forget(self, job_id: str) -> None:
        keys = self._keys
        await self._scripts.forget(keys=[keys.leases, keys.active, keys.pending], args=[job_id, keys.wake])

    async def wait_for_work(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), seconds)
        self._work.clear()

    async def renew(self, leases: Sequence[Lease]) -> dict[str, str | None]:
        changes: dict[str, str | None] = {}
        calls = [(self._scripts.renew, [self._keys.job(lease.job_id)], [lease.owner, lease.epoch, self._lease_ms])
                 for lease in leases]
        async with _reaching_redis():
            answers = await self._run_scripts(calls)
            expiries: dict[str, int] = {}
            for lease, answer in zip(leases, answers, strict=True):
                if isinstance(answer, ResponseError) or int(answer[0]) == 0:
                    changes[lease.job_id] = None
                    await self._lost(lease.job_id)
                    continue
                expiries[lease.job_id] = int(answer[0])
                if answer[1]:
                    changes[lease.job_id] = answer[1].decode()
            if expiries:
                await self._redis.zadd(self._keys.leases, expiries, xx=True)
        return changes

    async def _run_scripts(self, calls: Sequence[tuple[AsyncScript, list[Any], list[Any]]]) -> list[Any]:
        """Runs scripts in one round trip; each answer is its result or its ResponseError."""
        if len(calls) == 1:
            script, keys, args = calls[0]
            try:
                return [await script(keys=keys, args=args)]
            except ResponseError as exc:
                return [exc]
        for _attempt in range(2):
            # EVALSHA directly: a pipeline of Script objects asks SCRIPT EXISTS on every execute.
            async with self._redis.pipeline(transaction=False) as pipe:
                for script, keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                answers: list[Any] = await pipe.execute(raise_on_error=False)
            if not any(isinstance(answer, NoScriptError) for answer in answers):
                return answers
            # Redis restarted: scripts are not kept across restarts.
            for script in {id(script): script for script, _keys, _args in calls}.values():
                await self._redis.script_load(script.script)
        return answers

    async def append(self, lease: Lease, event: gateway_pb2.JobEvent, state: gateway_pb2.JobState,
                     checkpoints: dict[int, ImageCheckpoint] | None = None) -> None:
        box = self._outboxes.get(lease.job_id)
        if box is None or box.lost:
            raise LeaseLost(f"job {lease.job_id} is held by another gateway")
        while len(box.items) >= box.limit:
            await box.changed.wait()
            if box.lost:
                raise LeaseLost(f"job {lease.job_id} is held by another gateway")
        lease.last_seq += 1
        event.seq = lease.last_seq
        box.items.append(self._append_call(lease, event, state, checkpoints or {}))
        if box.writing or box.failing:
            # The write in flight, or the flusher, takes it next.
            box.notify()
            return
        await self._write(lease, box)

    def _append_call(self, lease: Lease, event: gateway_pb2.JobEvent, state: gateway_pb2.JobState,
                     checkpoints: dict[int, ImageCheckpoint]) -> tuple[list[Any], list[Any]]:
        keys = self._keys
        live = event.SerializeToString()
        stored = live
        if event.denoise.preview_png:
            # Previews go to live watchers only; the history keeps events small.
            copy = gateway_pb2.JobEvent()
            copy.CopyFrom(event)
            copy.denoise.preview_png = b""
            stored = copy.SerializeToString()
        terminal = state in TERMINAL_STATES
        pairs: dict[str, bytes | str] = {}
        for index, point in checkpoints.items():
            pairs.update(checkpoint_fields(index, point))
        if terminal:
            pairs["result"] = event.result.SerializeToString()
        return ([keys.job(lease.job_id), keys.events(lease.job_id)],
                [lease.owner, lease.epoch, event.seq, stored, b"" if stored is live else live, state,
                 event.stage, event.percent, 1 if terminal else 0, self._ttl, self._max_events,
                 keys.live(lease.job_id), *(item for pair in pairs.items() for item in pair)])

    async def _write(self, lease: Lease, box: _Outbox) -> None:
        """Writes what waits in the outbox, in order, then hands each event to this gateway's watchers.

        Appends call it at once (no task in between); when Redis is unreachable
        it leaves the events to the flusher, which retries.
        """
        box.writing = True
        try:
            while box.items and not box.lost:
                batch = [box.items[index] for index in range(min(FLUSH_BATCH, len(box.items)))]
                try:
                    answers = await box.writer.run(batch)
                    outage = next((answer for answer in answers if is_outage(answer)), None)
                    if outage is not None:
                        raise StoreUnavailable(f"Redis refused the write: {outage}")
                except (*REDIS_DOWN, StoreUnavailable) as exc:
                    if not box.failing:
                        logs.event(log, "store.write_delayed", logging.WARNING, job=lease.job_id,
                                   pending=len(box.items), error=exc)
                    box.failing = True
                    return
                if box.failing:
                    logs.event(log, "store.write_resumed", job=lease.job_id)
                    box.failing = False
                await self._settle(lease, box, answers)
        finally:
            box.writing = False
            box.notify()

    async def _settle(self, lease: Lease, box: _Outbox, answers: list[Any]) -> None:
        for answer in answers:
            # The scripts' own refusals: another gateway holds the job now (or it is gone).
            if isinstance(answer, ResponseError):
                logs.event(log, "store.lease_lost", logging.WARNING, job=lease.job_id, error=answer)
                box.lost = True
                box.items.clear()
                await self._live.run_elsewhere(self._keys.live(lease.job_id))
                return
            _keys, args = box.items.popleft()
            self._live.deliver(args[LIVE_CHANNEL], args[LIVE_EVENT] or args[STORED_EVENT])

    async def _flush(self, lease: Lease, box: _Outbox) -> None:
        """Retries the outbox while Redis is unreachable, and writes what an interrupted write left."""
        failures = 0
        while not box.lost:
            if box.writing or not box.items:
                await box.changed.wait()
                continue
            await self._write(lease, box)
            if box.failing:
                failures += 1
                await asyncio.sleep(min(0.05 * 2 ** min(failures, 6), 2.0))
            else:
                failures = 0

    async def flushed(self, lease: Lease, within: float | None = None) -> bool:
        box = self._outboxes.get(lease.job_id)
        if box is None:
            return False
        try:
            async with asyncio.timeout(within):
                while box.items and not box.lost:
                    await box.changed.wait()
        except TimeoutError:
            return False
        return not box.lost

    async def release(self, lease: Lease) -> None:
        await self._lost(lease.job_id)
        keys = self._keys
        async with _reaching_redis():
            if await self._scripts.release(keys=[keys.job(lease.job_id)], args=[lease.owner, lease.epoch]):
                await self._scripts.requeue(keys=[keys.leases, keys.pending], args=[lease.job_id, keys.wake])

    async def _lost(self, job_id: str) -> None:
        """This gateway no longer runs the job: its watchers here follow it through Redis."""
        await self._drop_outbox(job_id)
        await self._live.run_elsewhere(self._keys.live(job_id))

    async def finish(self, lease: Lease) -> None:
        await self._drop_outbox(lease.job_id)
        async with _reaching_redis():
            await self._forget(lease.job_id)
            if lease.spec.idempotency_key:
                await self._redis.expire(self._keys.idempotency(lease.spec.idempotency_key), self._ttl)

    async def _drop_outbox(self, job_id: str) -> None:
        box = self._outboxes.pop(job_id, None)
        if box is None:
            return
        if box.flusher is not None and not box.flusher.done():
            box.flusher.cancel()
        if box.writing:
            await box.writer.close()
        else:
            await box.writer.release()

    # -- reading and cancelling ----------------------------------------------------------------

    async def get(self, job_id: str) -> gateway_pb2.Job | None:
        async with _reaching_redis():
            values = await self._redis.hmget(self._keys.job(job_id), list(SNAPSHOT_FIELDS))
        return job_from_snapshot(job_id, values)

    async def watch(self, job_id: str, after_seq: int) -> AsyncGenerator[gateway_pb2.JobEvent]:
        if await self.get(job_id) is None:
            raise NotFound(f"job {job_id!r} not found (ended jobs are kept for {self._ttl} s)")
        async with self._live.listen(self._keys.live(job_id), local=job_id in self._outboxes) as inbox:
            last = after_seq
            for event in await self._events_after(job_id, last):
                yield event
                last = event.seq
                if event.stage == gateway_pb2.STAGE_TERMINAL:
                    return
            while True:
                data = await _next(inbox)
                if data == RESYNC:
                    missed = await self._events_after(job_id, last)
                else:
                    live = gateway_pb2.JobEvent.FromString(data)
                    if live.seq <= last:
                        continue
                    # A gap means messages were lost: the Stream has them all.
                    missed = [live] if live.seq == last + 1 else await self._events_after(job_id, last)
                for event in missed:
                    yield event
                    last = event.seq
                    if event.stage == gateway_pb2.STAGE_TERMINAL:
                        return

    async def _events_after(self, job_id: str, seq: int) -> list[gateway_pb2.JobEvent]:
        async with _reaching_redis():
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                           await self._redis.xrange(self._keys.events(job_id), min=f"({seq}-0"))
        return [gateway_pb2.JobEvent.FromString(fields[b"e"]) for _id, fields in entries]

    async def request_cancel(self, job_id: str, reason: str, owner: str) -> Lease | None:
        keys = self._keys
        async with _reaching_redis():
            answer = await self._scripts.cancel(keys=[keys.job(job_id)], args=[reason])
            if answer[0] == b"missing":
                raise NotFound(f"job {job_id!r} not found (ended jobs are kept for {self._ttl} s)")
            if answer[0] == b"ended":
                return None
            await self._redis.publish(keys.cancel, f"{job_id}\n{answer[1].decode()}")
            if await self._scripts.claim_queued(keys=[keys.pending, keys.leases], args=[job_id, self._lease_ms]):
                return await self._take(job_id, owner)
        return None


async def _next(inbox: asyncio.Queue[bytes]) -> bytes:
    """The next live message, or RESYNC when none came for a while (then the Stream is read)."""
    if not inbox.empty():
        return inbox.get_nowait()
    try:
        async with asyncio.timeout(WATCH_CHECK_SECONDS):
            return await inbox.get()
    except TimeoutError:
        return RESYNC


@contextlib.asynccontextmanager
async def _reaching_redis() -> AsyncGenerator[None]:
    """Turns a lost or refused connection into StoreUnavailable."""
    try:
        yield
    except REDIS_DOWN as exc:
        raise StoreUnavailable(f"Redis cannot be reached: {exc}") from None
    except ResponseError as exc:
        if is_outage(exc):
            raise StoreUnavailable(f"Redis refused the request: {exc}") from None
        raise
