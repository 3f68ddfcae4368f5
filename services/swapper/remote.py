"""One face swap on RunPod: submit, follow to a terminal state, fetch and check the result, cancel.

Nothing here hangs: every wait is bounded by the swap's deadline, every
HTTP call has a timeout no longer than the time left, and on the deadline or
when the caller cancels, the remote job gets exactly one ``POST /cancel``
(except a resumable swap whose caller left: its job is left running for the
next call to follow). Nothing here lies: every way the swap can fail ends in
``SwapFallback`` with a reason from the fixed enum and a message that says
what happened.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

from services.common import logs
from services.swapper.blocking import BlockingPool, CallScope
from services.swapper.endpoints import Endpoint
from services.swapper.fallback import TIMED_OUT, UNDECODABLE_RESULT, SwapFallback
from services.swapper.follow import Follower
from services.swapper.jobs import CallerGone, Emit, Journal, RemoteJob, Submitted, SwapInputs, SwapSuccess
from services.swapper.ratelimit import RateLimitWouldExceedDeadline
from services.swapper.results import UrlResult, interpret_output, validate_image
from services.swapper.runpod import RunPodClient, RunPodError, StatusAnswer
from services.swapper.settings import RunPodSettings
from services.swapper.submit import Submitter

log = logging.getLogger(__name__)

T = TypeVar("T")


class RemoteSwapper:
    """Drives face-swap jobs on the configured endpoints; one instance serves every job."""

    def __init__(self, settings: RunPodSettings, client: RunPodClient, endpoints: list[Endpoint],
                 work_pool: BlockingPool, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.client = client
        self.endpoints = endpoints
        self.work_pool = work_pool
        self._clock = clock
        rng = rng or random.Random()
        self.submitter = Submitter(settings, client, endpoints, clock, rng)
        # Long-polls hold a connection each; keep some connections for submits, cancels and downloads.
        reserve = max(4, client.max_connections // 8)
        self.follower = Follower(settings, client, clock, rng, max(1, client.max_connections - reserve))

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        """The configured endpoint with this id."""
        return next((endpoint for endpoint in self.endpoints if endpoint.id == endpoint_id), None)

    async def swap(self, inputs: SwapInputs, deadline: float, emit: Emit, scope: CallScope,
                   journal: Journal | None = None, resume: tuple[Endpoint, str] | None = None) -> SwapSuccess:
        """Runs one swap to a checked image; raises SwapFallback with the reason otherwise.

        ``deadline`` is on this instance's clock. ``resume`` (endpoint, job id)
        follows a job an earlier call submitted instead of submitting one.
        With a ``journal`` (a resumable swap) a caller that goes away leaves
        the remote job running; otherwise it is cancelled.
        """
        job = RemoteJob()
        budget = max(0.0, deadline - self._clock())
        caller_left = False
        try:
            if resume is None:
                await self.submitter.submit(job, inputs, deadline, journal)
            else:
                job.endpoint, job.job_id = resume
            assert job.endpoint is not None and job.job_id is not None
            await emit(Submitted(job.job_id, job.endpoint.id, resumed=resume is not None))
            answer = await self.follower.follow(job, deadline, budget, emit)
            return await self._collect(job, answer, deadline, scope)
        except (asyncio.CancelledError, CallerGone):
            caller_left = True
            raise
        finally:
            keep = caller_left and journal is not None and not job.cancel_requested
            if job.job_id is not None and not job.settled and not job.cancel_sent and not keep:
                await finish(self.cancel(job))

    async def _collect(self, job: RemoteJob, answer: StatusAnswer, deadline: float,
                       scope: CallScope) -> SwapSuccess:
        assert job.endpoint is not None and job.job_id is not None
        limits = self.settings.result_limits
        result = interpret_output(answer.output, limits.max_bytes)
        data = await self._download(result.url, deadline) if isinstance(result, UrlResult) else result.data
        info, fingerprint = await scope.run(self.work_pool, validate_image, data, limits)
        return SwapSuccess(data=data, info=info, job_id=job.job_id, endpoint=job.endpoint.id,
                           fingerprint=fingerprint)

    async def _download(self, url: str, deadline: float) -> bytes:
        host = urlsplit(url).hostname or "?"
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise SwapFallback(TIMED_OUT, "the deadline passed before the result could be downloaded")
        timeout = min(self.settings.download_timeout_s, remaining)
        try:
            return await self.client.download(url, self.settings.result_limits.max_bytes, timeout)
        except RunPodError as exc:
            raise SwapFallback(UNDECODABLE_RESULT,
                               f"the result could not be downloaded from {host}: {exc}") from None

    async def cancel(self, job: RemoteJob) -> bool:
        """Sends the job its one ``POST /cancel``; True when the endpoint answered."""
        assert job.endpoint is not None and job.job_id is not None
        job.cancel_sent = True
        endpoint = job.endpoint
        timeout = self.settings.cancel_timeout_s
        try:
            await endpoint.limiter.acquire("cancel", self._clock() + timeout)
            status = await self.client.cancel(endpoint.id, job.job_id, timeout)
        except (RunPodError, RateLimitWouldExceedDeadline) as exc:
            logs.event(log, "runpod.cancel_failed", logging.WARNING, endpoint=endpoint.id,
                       remote_id=job.job_id, message=str(exc))
            return False
        logs.event(log, "runpod.cancelled", endpoint=endpoint.id, remote_id=job.job_id, status=status)
        return True


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
