"""Following a remote job to a terminal status: long-polls or polls ``/status`` until the deadline.

Each ``/status`` failure is classified once, in ``_after_failure``: retried
(5xx, 429, resets, timeouts, a few unreadable answers), each retry logged,
or final (404: expired; 401/403; an answer refused for its size, which only
a finished job's output can make). Every request's timeout ends by the
swap's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from services.common import logs
from services.swapper.backoff import Backoff
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
from services.swapper.jobs import RUNNING, TERMINAL, Emit, RemoteJob, StatusChanged
from services.swapper.polling import PollSchedule
from services.swapper.ratelimit import RateLimitWouldExceedDeadline
from services.swapper.results import failure_from_error
from services.swapper.runpod import (
    BadResponse,
    HttpStatusError,
    RunPodClient,
    RunPodError,
    StatusAnswer,
    TooLarge,
)
from services.swapper.settings import RunPodSettings

log = logging.getLogger(__name__)

# Odd answers (unknown statuses, unreadable bodies) in a row before giving up.
_PATIENCE = 3
# Below this a long-poll is not worth a connection.
_MIN_WAIT_MS = 100
# A long-poll asks for this much less than the time left, so that its answer arrives in time.
_WAIT_MARGIN_S = 0.25


@dataclass
class _Trouble:
    """Why the last status requests failed, for a deadline that passes meanwhile."""

    failures: int = 0
    unreadable: int = 0
    odd: int = 0
    cause: tuple[Reason, str] | None = None

    def clear(self) -> None:
        self.failures = self.unreadable = 0
        self.cause = None


class Follower:
    """Asks ``/status`` until the job ends; shared by every job (it counts the long-polls in flight)."""

    def __init__(self, settings: RunPodSettings, client: RunPodClient, clock: Callable[[], float],
                 rng: random.Random, max_long_polls: int) -> None:
        self.settings = settings
        self.client = client
        self._metrics = client.metrics
        self.schedule = PollSchedule(settings.poll_min_s, settings.poll_max_s, settings.poll_ratio)
        self.backoff = Backoff()
        self._clock = clock
        self._rng = rng
        self._max_long_polls = max_long_polls
        self._long_polls = 0
        # A status answer carries the whole base64 result, plus some JSON around it.
        self._max_answer_bytes = settings.result_limits.max_bytes * 4 // 3 + 1024 * 1024

    async def follow(self, job: RemoteJob, deadline: float, budget: float, emit: Emit) -> StatusAnswer:
        """Returns the COMPLETED answer; raises SwapFallback for every other ending."""
        endpoint, job_id = job.endpoint, job.job_id
        assert endpoint is not None and job_id is not None
        started = self._clock()
        if job.status:
            await emit(StatusChanged(job_id, endpoint.id, job.status, 0, 0))
        trouble = _Trouble()
        gap = 0.0 if endpoint.long_polls else self.schedule.gap(0.0)
        while True:
            await self._sleep(gap, deadline)
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise _at_deadline(trouble, budget, job.status)
            wait_ms = self._wait_ms(endpoint, remaining)
            try:
                await endpoint.limiter.acquire("status", deadline)
            except RateLimitWouldExceedDeadline:
                raise SwapFallback(TIMED_OUT, f"no result within the {budget:.3g} s deadline "
                                   f"(status requests rate limited; remote status {job.status})") from None
            asked = self._clock()
            gap = self.schedule.gap(asked - started)
            try:
                answer = await self._ask(endpoint, job_id, deadline, wait_ms)
            except RunPodError as exc:
                gap = self._after_failure(job, exc, wait_ms, trouble)
                continue
            endpoint.breaker.record_success()
            trouble.clear()
            changed = answer.status != job.status
            endpoint.observe_long_poll(wait_ms, self._clock() - asked, changed)
            if changed:
                job.status = answer.status
                logs.event(log, "runpod.status", endpoint=endpoint.id, remote_id=job_id, status=answer.status,
                           delay_ms=answer.delay_ms, execution_ms=answer.execution_ms)
                await emit(StatusChanged(job_id, endpoint.id, answer.status, answer.delay_ms, answer.execution_ms))
            if answer.status in TERMINAL:
                job.settled = True
                self._record(endpoint.id, answer)
                return _terminal(answer, endpoint)
            if answer.status not in RUNNING:
                trouble.odd += 1
                if trouble.odd >= _PATIENCE:
                    raise SwapFallback(PROTOCOL_ERROR, f"{endpoint.id} reported the unknown job status "
                                       f"{clip(answer.status, 40)!r}")
            elif wait_ms and (changed or self._clock() - asked >= wait_ms / 2000):
                gap = 0.0  # the endpoint long-polls: ask again at once

    def _record(self, endpoint: str, answer: StatusAnswer) -> None:
        """A remote job ended: its status, and how long it queued and ran on the endpoint."""
        metrics = self._metrics
        metrics.remote_jobs.labels(endpoint=endpoint, status=answer.status).inc()
        metrics.remote_queue_seconds.labels(endpoint=endpoint).observe(answer.delay_ms / 1000)
        metrics.remote_execution_seconds.labels(endpoint=endpoint).observe(answer.execution_ms / 1000)

    async def _ask(self, endpoint: Endpoint, job_id: str, deadline: float, wait_ms: int) -> StatusAnswer:
        timeout = max(0.001, min(self.settings.http_timeout_s + wait_ms / 1000, deadline - self._clock()))
        if wait_ms:
            self._long_polls += 1
        try:
            return await self.client.status(endpoint.id, job_id, timeout, wait_ms, self._max_answer_bytes)
        finally:
            if wait_ms:
                self._long_polls -= 1

    def _after_failure(self, job: RemoteJob, exc: RunPodError, wait_ms: int, trouble: _Trouble) -> float:
        """The gap before the next request after a failed one; raises SwapFallback when it was final."""
        endpoint = job.endpoint
        assert endpoint is not None
        where = endpoint.id
        if isinstance(exc, TooLarge):
            job.settled = True  # only a finished job's output makes an answer that large
            raise SwapFallback(UNDECODABLE_RESULT, f"the result is too large: {exc}")
        if isinstance(exc, HttpStatusError) and exc.status == 404:
            job.settled = True
            raise SwapFallback(JOB_EXPIRED, f"{where} no longer knows job {job.job_id} (HTTP 404 on /status): "
                               "it expired or was purged")
        if isinstance(exc, HttpStatusError) and exc.key_rejected:
            job.settled = True
            raise SwapFallback(KEY_REJECTED, f"{KEY_REJECTED_MESSAGE} (HTTP {exc.status} on /status from {where})")
        if isinstance(exc, HttpStatusError) and exc.status == 400 and wait_ms:
            endpoint.disable_long_poll(str(exc))
            return 0.0
        if isinstance(exc, HttpStatusError) and not (exc.rate_limited or exc.server_error):
            raise SwapFallback(PROTOCOL_ERROR, f"{where}: {exc}")
        if isinstance(exc, BadResponse):
            trouble.unreadable += 1
            if trouble.unreadable >= _PATIENCE:
                raise SwapFallback(PROTOCOL_ERROR, f"{where}: {exc}")
            gap = self.backoff.delay(trouble.unreadable, self._rng)
        else:
            trouble.failures += 1
            if isinstance(exc, HttpStatusError) and exc.rate_limited:
                trouble.cause = RATE_LIMITED, f"{where} answered HTTP 429 on /status"
                gap = exc.retry_after if exc.retry_after is not None else self.backoff.delay(trouble.failures)
            else:
                endpoint.breaker.record_failure()
                trouble.cause = ENDPOINT_UNAVAILABLE, f"{where}: {exc}"
                gap = self.backoff.delay(trouble.failures, self._rng)
        logs.event(log, "runpod.status_retry", logging.WARNING, endpoint=where, remote_id=job.job_id,
                   message=str(exc), retry_in_ms=int(gap * 1000))
        return gap

    def _wait_ms(self, endpoint: Endpoint, remaining: float) -> int:
        if not endpoint.long_polls or self._long_polls >= self._max_long_polls:
            return 0
        wait_ms = min(endpoint.wait_ms, int((remaining - _WAIT_MARGIN_S) * 1000))
        return wait_ms if wait_ms >= _MIN_WAIT_MS else 0

    async def _sleep(self, seconds: float, deadline: float) -> None:
        seconds = min(seconds, deadline - self._clock())
        if seconds > 0:
            await asyncio.sleep(seconds)


def _at_deadline(trouble: _Trouble, budget: float, status: str) -> SwapFallback:
    if trouble.cause is not None:
        return SwapFallback(trouble.cause[0], f"{trouble.cause[1]}, until the {budget:.3g} s deadline passed")
    return SwapFallback(TIMED_OUT, f"no result within the {budget:.3g} s deadline (remote status {status})")


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
    raise SwapFallback(TIMED_OUT, f"the remote job ran past its execution timeout on {endpoint.id} (TIMED_OUT)")
