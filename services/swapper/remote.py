"""One face swap on RunPod: submit with failover, follow to a terminal state, fetch and check the result.

Nothing here hangs: every wait is bounded by the swap's deadline, every
HTTP call has a timeout no longer than the time left, and on the deadline or
when the caller cancels, the remote job gets exactly one ``POST /cancel``.
Nothing here lies: every way the swap can fail ends in ``SwapFallback`` with
a reason from the fixed enum and a message that says what happened.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from services.common import logs
from services.common.images import ImageInfo
from services.swapper.backoff import Backoff
from services.swapper.blocking import BlockingPool, CallScope
from services.swapper.endpoints import Endpoint
from services.swapper.fallback import (
    CANCELLED,
    ENDPOINT_UNAVAILABLE,
    JOB_EXPIRED,
    KEY_REJECTED,
    KEY_REJECTED_MESSAGE,
    PROTOCOL_ERROR,
    RATE_LIMITED,
    TIMED_OUT,
    UNDECODABLE_RESULT,
    Reason,
    SwapFallback,
    clip,
)
from services.swapper.polling import PollSchedule
from services.swapper.ratelimit import RateLimitWouldExceedDeadline
from services.swapper.results import UrlResult, failure_from_error, interpret_output, validate_image
from services.swapper.runpod import (
    BadResponse,
    HttpStatusError,
    NoAnswer,
    NotSent,
    RunPodClient,
    RunPodError,
    StatusAnswer,
    SubmitAnswer,
)
from services.swapper.settings import RunPodSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

RUNNING = frozenset({"IN_QUEUE", "IN_PROGRESS"})
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
# Statuses that are odd but not worth giving up over straight away.
_PATIENCE = 3
# 500/502/503 on /run mean the job was not queued; any other 5xx (504...) may hide a queued job.
_SUBMIT_NOT_QUEUED = frozenset({500, 502, 503})
# Below this a long-poll is not worth a thread.
_MIN_WAIT_MS = 100


@dataclass(frozen=True)
class SwapInputs:
    """What the worker gets: two URLs it can fetch, and the options."""

    source_url: str
    target_url: str
    mouth_mask: bool = False
    use_face_enhancer: bool = False
    many_faces: bool = False


@dataclass(frozen=True)
class Submitted:
    """The endpoint accepted the job."""

    job_id: str
    endpoint: str


@dataclass(frozen=True)
class StatusChanged:
    """The remote job's status changed (or was first seen)."""

    job_id: str
    endpoint: str
    status: str
    delay_ms: int
    execution_ms: int


@dataclass(frozen=True)
class SwapSuccess:
    """The swapped image, checked."""

    data: bytes
    info: ImageInfo
    job_id: str
    endpoint: str


RemoteEvent = Submitted | StatusChanged
Emit = Callable[[RemoteEvent], Awaitable[None]]


class _CancelledAfterSubmit(Exception):
    def __init__(self, answer: SubmitAnswer) -> None:
        super().__init__("cancelled while /run was in flight")
        self.answer = answer


@dataclass
class _Job:
    endpoint: Endpoint | None = None
    job_id: str | None = None
    status: str = ""
    # The endpoint no longer runs it (terminal, expired) or will not let us cancel it (key rejected).
    settled: bool = False
    cancel_sent: bool = False


def build_payload(settings: RunPodSettings, inputs: SwapInputs, remaining_s: float) -> dict[str, Any]:
    """The ``/run`` body: the original system's input plus a policy that ends before our deadline.

    ``executionTimeout`` leaves a margin (10 % of the time left, 1-15 s) for
    queueing and for us to fetch the result; ``ttl`` drops the job from the
    queue once our deadline has passed (RunPod's minimum ttl is 10 s).
    """
    remaining_ms = max(0, int(remaining_s * 1000))
    margin_ms = min(max(1000, remaining_ms // 10), 15_000)
    options: dict[str, bool] = {"mouth_mask": inputs.mouth_mask,
                                "use_face_enhancer": inputs.use_face_enhancer}
    if inputs.many_faces:
        options["many_faces"] = True
    return {
        "input": {
            "process_type": settings.process_type,
            "source_file": inputs.source_url,
            "target_file": inputs.target_url,
            "options": options,
        },
        "policy": {
            "executionTimeout": max(1000, remaining_ms - margin_ms),
            "ttl": max(10_000, remaining_ms),
        },
    }


class RemoteSwapper:
    """Drives face-swap jobs on the configured endpoints; one instance serves every job."""

    def __init__(self, settings: RunPodSettings, client: RunPodClient, endpoints: list[Endpoint],
                 http_pool: BlockingPool, work_pool: BlockingPool,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.client = client
        self.endpoints = endpoints
        self.http_pool = http_pool
        self.work_pool = work_pool
        self.schedule = PollSchedule(settings.poll_min_s, settings.poll_max_s, settings.poll_ratio)
        self.backoff = Backoff()
        self._clock = clock
        self._rng = rng or random.Random()
        # Long-polls hold a thread each; keep some threads for submits, cancels and downloads.
        self._long_poll_limit = max(1, http_pool.max_workers - max(4, http_pool.max_workers // 8))
        self._long_polls = 0
        self._status_max_bytes = settings.result_limits.max_bytes * 4 // 3 + 4096

    async def swap(self, inputs: SwapInputs, deadline: float, emit: Emit, scope: CallScope) -> SwapSuccess:
        """Runs one swap to a checked image; raises SwapFallback with the reason otherwise.

        ``deadline`` is on this instance's clock. Cancelling the caller sends
        ``POST /cancel`` for a job still running and then re-raises.
        """
        job = _Job()
        budget = max(0.0, deadline - self._clock())
        try:
            await self._submit(job, inputs, deadline, scope)
            assert job.endpoint is not None and job.job_id is not None
            await emit(Submitted(job.job_id, job.endpoint.id))
            answer = await self._follow(job, deadline, budget, emit, scope)
            return await self._collect(job, answer, deadline, scope)
        finally:
            if job.job_id is not None and not job.settled and not job.cancel_sent:
                await finish(self._cancel(job, scope))

    async def _submit(self, job: _Job, inputs: SwapInputs, deadline: float, scope: CallScope) -> None:
        failures: list[tuple[Reason, str]] = []
        for endpoint in self.endpoints:
            if not endpoint.breaker.allow():
                failures.append((ENDPOINT_UNAVAILABLE, f"{endpoint.id}: circuit open after "
                                 f"{endpoint.breaker.consecutive_failures} consecutive failures"))
                continue
            outcome = await self._submit_to(job, endpoint, inputs, deadline, scope)
            if isinstance(outcome, SubmitAnswer):
                logs.event(log, "runpod.submitted", endpoint=endpoint.id, remote_id=outcome.job_id,
                           status=outcome.status)
                return
            failures.append(outcome)
            logs.event(log, "runpod.submit_failed", logging.WARNING, endpoint=endpoint.id,
                       message=outcome[1])
        raise _combine(failures)

    async def _submit_to(self, job: _Job, endpoint: Endpoint, inputs: SwapInputs, deadline: float,
                         scope: CallScope) -> SubmitAnswer | tuple[Reason, str]:
        last: tuple[Reason, str] = (ENDPOINT_UNAVAILABLE, f"{endpoint.id}: not tried")
        for attempt in range(self.settings.submit_attempts):
            remaining = deadline - self._clock()
            if remaining <= 0:
                return TIMED_OUT, f"{endpoint.id}: the deadline passed before the job was accepted"
            try:
                await endpoint.limiter.acquire("run", deadline)
            except RateLimitWouldExceedDeadline as exc:
                return RATE_LIMITED, f"{endpoint.id}: {exc}"
            payload = build_payload(self.settings, inputs, deadline - self._clock())
            timeout = min(self.settings.http_timeout_s, max(0.1, deadline - self._clock()))
            delay = self.backoff.delay(attempt, self._rng)
            try:
                answer = await self._send_submit(endpoint, payload, timeout, scope)
                job.endpoint, job.job_id, job.status = endpoint, answer.job_id, answer.status
                endpoint.breaker.record_success()
                return answer
            except _CancelledAfterSubmit as late:
                # The caller left while /run was in flight and the job was queued anyway:
                # remember it, so that it gets its /cancel.
                job.endpoint, job.job_id, job.status = endpoint, late.answer.job_id, late.answer.status
                raise asyncio.CancelledError from None
            except NotSent as exc:
                endpoint.breaker.record_failure()
                last = ENDPOINT_UNAVAILABLE, f"{endpoint.id}: {exc}"
            except HttpStatusError as exc:
                if exc.key_rejected:
                    return KEY_REJECTED, f"{endpoint.id}: {exc}"
                if exc.rate_limited:
                    last = RATE_LIMITED, f"{endpoint.id}: /run answered HTTP 429 (queue full or rate limited)"
                    delay = exc.retry_after if exc.retry_after is not None else delay
                elif exc.status in _SUBMIT_NOT_QUEUED:
                    endpoint.breaker.record_failure()
                    last = ENDPOINT_UNAVAILABLE, f"{endpoint.id}: {exc}"
                elif exc.server_error:
                    endpoint.breaker.record_failure()
                    raise SwapFallback(ENDPOINT_UNAVAILABLE, f"{endpoint.id}: {exc}; the job may have been "
                                       "queued, so it is not submitted again") from None
                elif exc.status == 404:
                    return ENDPOINT_UNAVAILABLE, f"{endpoint.id}: /run answered HTTP 404 (no such endpoint)"
                else:
                    return PROTOCOL_ERROR, f"{endpoint.id}: {exc}"
            except NoAnswer as exc:
                endpoint.breaker.record_failure()
                raise SwapFallback(ENDPOINT_UNAVAILABLE, f"{endpoint.id}: {exc}; the job may have been "
                                   "queued, so it is not submitted again") from None
            except BadResponse as exc:
                raise SwapFallback(PROTOCOL_ERROR, f"{endpoint.id}: {exc}; the job may have been queued, "
                                   "so it is not submitted again") from None
            if attempt + 1 < self.settings.submit_attempts:
                if self._clock() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
        return last

    async def _send_submit(self, endpoint: Endpoint, payload: dict[str, Any], http_timeout_s: float,
                           scope: CallScope) -> SubmitAnswer:
        sending = asyncio.ensure_future(
            scope.run(self.http_pool, self.client.submit, endpoint.id, payload, http_timeout_s))
        try:
            return await asyncio.shield(sending)
        except asyncio.CancelledError:
            # Wait for the answer (bounded by the request's timeout) to learn whether a job was queued.
            while not sending.done():
                try:
                    await asyncio.shield(sending)
                except asyncio.CancelledError:
                    continue
                except Exception:
                    break
            if sending.cancelled() or sending.exception() is not None:
                raise
            raise _CancelledAfterSubmit(sending.result()) from None

    async def _follow(self, job: _Job, deadline: float, budget: float, emit: Emit,
                      scope: CallScope) -> StatusAnswer:
        endpoint, job_id = job.endpoint, job.job_id
        assert endpoint is not None and job_id is not None
        submitted_at = self._clock()
        await emit(StatusChanged(job_id, endpoint.id, job.status, 0, 0))
        failures = unparsable = odd = 0
        # Why the last status request failed, if it did: a deadline that passes while the
        # endpoint keeps failing is reported with that cause rather than as a plain timeout.
        trouble: tuple[Reason, str] | None = None
        gap = 0.0 if endpoint.long_polls else self.schedule.gap(0.0)
        while True:
            await self._sleep(gap, deadline)
            remaining = deadline - self._clock()
            if remaining <= 0:
                if trouble is not None:
                    raise SwapFallback(trouble[0], f"{trouble[1]}, until the {budget:.3g} s deadline passed")
                raise SwapFallback(TIMED_OUT, f"no result within the {budget:.3g} s deadline "
                                   f"(remote status {job.status})")
            wait_ms = self._wait_ms(endpoint, remaining)
            try:
                await endpoint.limiter.acquire("status", deadline)
            except RateLimitWouldExceedDeadline:
                raise SwapFallback(TIMED_OUT, f"no result within the {budget:.3g} s deadline "
                                   f"(status requests rate limited; remote status {job.status})") from None
            timeout = min(self.settings.http_timeout_s + wait_ms / 1000,
                          max(0.1, deadline - self._clock() + 0.5))
            started = self._clock()
            gap = self.schedule.gap(started - submitted_at)
            if wait_ms:
                self._long_polls += 1
            try:
                answer = await scope.run(self.http_pool, self.client.status, endpoint.id, job_id, timeout,
                                         wait_ms, self._status_max_bytes)
            except HttpStatusError as exc:
                if exc.status == 404:
                    job.settled = True
                    raise SwapFallback(JOB_EXPIRED, f"{endpoint.id} no longer knows job {job_id} "
                                       "(HTTP 404 on /status): it expired or was purged") from None
                if exc.key_rejected:
                    job.settled = True
                    raise SwapFallback(KEY_REJECTED, f"{KEY_REJECTED_MESSAGE} (HTTP {exc.status} on /status "
                                       f"from {endpoint.id})") from None
                if exc.rate_limited:
                    failures += 1
                    trouble = RATE_LIMITED, f"{endpoint.id} answered HTTP 429 on /status"
                    gap = exc.retry_after if exc.retry_after is not None else self.backoff.delay(failures)
                elif exc.server_error:
                    endpoint.breaker.record_failure()
                    failures += 1
                    trouble = ENDPOINT_UNAVAILABLE, f"{endpoint.id}: {exc}"
                    gap = self.backoff.delay(failures, self._rng)
                elif exc.status == 400 and wait_ms:
                    endpoint.disable_long_poll(str(exc))
                    gap = 0.0
                else:
                    raise SwapFallback(PROTOCOL_ERROR, f"{endpoint.id}: {exc}") from None
                continue
            except (NotSent, NoAnswer) as exc:
                endpoint.breaker.record_failure()
                failures += 1
                trouble = ENDPOINT_UNAVAILABLE, f"{endpoint.id}: {exc}"
                gap = self.backoff.delay(failures, self._rng)
                logs.event(log, "runpod.status_retry", logging.WARNING, endpoint=endpoint.id,
                           remote_id=job_id, message=str(exc))
                continue
            except BadResponse as exc:
                unparsable += 1
                if unparsable >= _PATIENCE:
                    raise SwapFallback(PROTOCOL_ERROR, f"{endpoint.id}: {exc}") from None
                gap = self.backoff.delay(unparsable, self._rng)
                continue
            finally:
                if wait_ms:
                    self._long_polls -= 1
            endpoint.breaker.record_success()
            failures = unparsable = 0
            trouble = None
            changed = answer.status != job.status
            endpoint.observe_long_poll(wait_ms, self._clock() - started, changed)
            if changed:
                job.status = answer.status
                logs.event(log, "runpod.status", endpoint=endpoint.id, remote_id=job_id,
                           status=answer.status, delay_ms=answer.delay_ms, execution_ms=answer.execution_ms)
                await emit(StatusChanged(job_id, endpoint.id, answer.status, answer.delay_ms,
                                         answer.execution_ms))
            if answer.status in TERMINAL:
                job.settled = True
                return self._terminal(answer, endpoint)
            if answer.status not in RUNNING:
                odd += 1
                if odd >= _PATIENCE:
                    raise SwapFallback(PROTOCOL_ERROR, f"{endpoint.id} reported the unknown job status "
                                       f"{clip(answer.status, 40)!r}")
            elif wait_ms and (changed or self._clock() - started >= wait_ms / 2000):
                gap = 0.0  # the endpoint long-polls: ask again at once

    def _wait_ms(self, endpoint: Endpoint, remaining: float) -> int:
        if not endpoint.long_polls or self._long_polls >= self._long_poll_limit:
            return 0
        wait_ms = min(endpoint.wait_ms, int((remaining - 0.25) * 1000))
        return wait_ms if wait_ms >= _MIN_WAIT_MS else 0

    @staticmethod
    def _terminal(answer: StatusAnswer, endpoint: Endpoint) -> StatusAnswer:
        if answer.status == "COMPLETED":
            return answer
        if answer.status == "FAILED":
            error = answer.error
            if not error and isinstance(answer.output, dict):
                error = answer.output.get("error")
            raise failure_from_error(error, "the remote job FAILED without an error message")
        if answer.status == "CANCELLED":
            raise SwapFallback(CANCELLED, f"the remote job was cancelled on {endpoint.id}")
        raise SwapFallback(TIMED_OUT, f"the remote job ran past its execution timeout on {endpoint.id} "
                           "(TIMED_OUT)")

    async def _collect(self, job: _Job, answer: StatusAnswer, deadline: float,
                       scope: CallScope) -> SwapSuccess:
        assert job.endpoint is not None and job.job_id is not None
        limits = self.settings.result_limits
        result = interpret_output(answer.output, limits.max_bytes)
        if isinstance(result, UrlResult):
            data = await self._download(result.url, deadline, scope)
        else:
            data = result.data
        info = await scope.run(self.work_pool, validate_image, data, limits)
        return SwapSuccess(data=data, info=info, job_id=job.job_id, endpoint=job.endpoint.id)

    async def _download(self, url: str, deadline: float, scope: CallScope) -> bytes:
        host = urlsplit(url).hostname or "?"
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise SwapFallback(TIMED_OUT, "the deadline passed before the result could be downloaded")
        timeout = min(self.settings.download_timeout_s, remaining)
        try:
            return await scope.run(self.http_pool, self.client.download, url,
                                   self.settings.result_limits.max_bytes, timeout)
        except RunPodError as exc:
            raise SwapFallback(UNDECODABLE_RESULT,
                               f"the result could not be downloaded from {host}: {exc}") from None

    async def _cancel(self, job: _Job, scope: CallScope) -> None:
        assert job.endpoint is not None and job.job_id is not None
        job.cancel_sent = True
        endpoint = job.endpoint
        timeout = self.settings.cancel_timeout_s
        try:
            await endpoint.limiter.acquire("cancel", self._clock() + timeout)
            status = await scope.run(self.http_pool, self.client.cancel, endpoint.id, job.job_id, timeout)
        except (RunPodError, RateLimitWouldExceedDeadline) as exc:
            logs.event(log, "runpod.cancel_failed", logging.WARNING, endpoint=endpoint.id,
                       remote_id=job.job_id, message=str(exc))
            return
        logs.event(log, "runpod.cancelled", endpoint=endpoint.id, remote_id=job.job_id, status=status)

    async def _sleep(self, seconds: float, deadline: float) -> None:
        seconds = min(seconds, deadline - self._clock())
        if seconds > 0:
            await asyncio.sleep(seconds)


def _combine(failures: list[tuple[Reason, str]]) -> SwapFallback:
    """One fallback for the failures of every endpoint tried."""
    if not failures:
        return SwapFallback(ENDPOINT_UNAVAILABLE, "no face-swap endpoint could be tried")
    reasons = {reason for reason, _ in failures}
    detail = "; ".join(message for _, message in failures)
    if reasons == {KEY_REJECTED}:
        return SwapFallback(KEY_REJECTED, f"{KEY_REJECTED_MESSAGE} ({detail})")
    if len(reasons) == 1:
        reason = reasons.pop()
    elif TIMED_OUT in reasons:
        reason = TIMED_OUT
    else:
        reason = ENDPOINT_UNAVAILABLE
    prefix = "every face-swap endpoint failed" if len(failures) > 1 else "the face-swap endpoint failed"
    return SwapFallback(reason, f"{prefix}: {detail}")


async def finish(awaitable: Awaitable[T]) -> T:
    """Runs ``awaitable`` to its end even if the caller is cancelled meanwhile, then re-raises that.

    Clean-up (cancelling the remote job, deleting temporary objects) must
    not be cut short by the very cancellation that triggered it.
    """
    task = asyncio.ensure_future(awaitable)
    interrupted = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    return result
