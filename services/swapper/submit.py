"""Submitting a face-swap job: the ``/run`` body, attempts with backoff, failover between endpoints.

Each ``/run`` failure is classified once, in ``_classify``: retry the same
endpoint (the job was certainly not queued), move to the next endpoint
(no point retrying here), or stop at once because the job may have been
queued (reset or timeout after sending, 504, an unreadable answer): such a
job is never submitted again anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.common import logs
from services.swapper.backoff import Backoff
from services.swapper.endpoints import Endpoint
from services.swapper.fallback import (
    CANCELLED,
    ENDPOINT_UNAVAILABLE,
    KEY_REJECTED,
    KEY_REJECTED_MESSAGE,
    PROTOCOL_ERROR,
    RATE_LIMITED,
    TIMED_OUT,
    Reason,
    SwapFallback,
)
from services.swapper.jobs import Journal, RemoteJob, SwapInputs
from services.swapper.ratelimit import RateLimitWouldExceedDeadline
from services.swapper.runpod import (
    BadResponse,
    HttpStatusError,
    NoAnswer,
    NotSent,
    RunPodClient,
    RunPodError,
    SubmitAnswer,
    TooLarge,
)
from services.swapper.settings import RunPodSettings

log = logging.getLogger(__name__)

# 500/502/503 on /run mean the job was not queued; any other 5xx (504...) may hide a queued job.
_SUBMIT_NOT_QUEUED = frozenset({500, 502, 503})
_MAYBE_QUEUED = "the job may have been queued, so it is not submitted again"


@dataclass(frozen=True)
class _Retry:
    """Try this endpoint again (after ``delay`` s when given)."""

    reason: Reason
    message: str
    delay: float | None = None


@dataclass(frozen=True)
class _NextEndpoint:
    """Give up on this endpoint; the next one may work."""

    reason: Reason
    message: str


class CancelledAfterSubmit(Exception):
    """The caller left while ``/run`` was in flight, and the endpoint queued the job anyway."""

    def __init__(self, answer: SubmitAnswer) -> None:
        super().__init__("cancelled while /run was in flight")
        self.answer = answer


def build_payload(settings: RunPodSettings, inputs: SwapInputs, remaining_s: float) -> dict[str, Any]:
    """The ``/run`` body: the worker's input (docs/faceswap_worker.md) plus a policy ending before our deadline.

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


class Submitter:
    """Queues a job on the first endpoint that takes it."""

    def __init__(self, settings: RunPodSettings, client: RunPodClient, endpoints: list[Endpoint],
                 clock: Callable[[], float], rng: random.Random) -> None:
        self.settings = settings
        self.client = client
        self.endpoints = endpoints
        self.backoff = Backoff()
        self._clock = clock
        self._rng = rng

    async def submit(self, job: RemoteJob, inputs: SwapInputs, deadline: float, journal: Journal | None) -> None:
        """Fills ``job`` with the accepted job's endpoint and id; raises SwapFallback when no endpoint took it.

        ``journal`` (resumable swaps) hears of the job id as soon as it is known.
        """
        failures: list[tuple[Reason, str]] = []
        for endpoint in self.endpoints:
            outcome = await self._submit_to(job, endpoint, inputs, deadline, journal)
            if outcome is None:
                logs.event(log, "runpod.submitted", endpoint=endpoint.id, remote_id=job.job_id, status=job.status)
                return
            failures.append(outcome)
            logs.event(log, "runpod.submit_failed", logging.WARNING, endpoint=endpoint.id, message=outcome[1])
        raise combine(failures)

    async def _submit_to(self, job: RemoteJob, endpoint: Endpoint, inputs: SwapInputs, deadline: float,
                         journal: Journal | None) -> tuple[Reason, str] | None:
        last: tuple[Reason, str] = (ENDPOINT_UNAVAILABLE, f"{endpoint.id}: not tried")
        for attempt in range(self.settings.submit_attempts):
            if not endpoint.breaker.allow():
                return ENDPOINT_UNAVAILABLE, (f"{endpoint.id}: circuit open after "
                                              f"{endpoint.breaker.consecutive_failures} consecutive failures")
            if deadline - self._clock() <= 0:
                return TIMED_OUT, f"{endpoint.id}: the deadline passed before the job was accepted"
            try:
                await endpoint.limiter.acquire("run", deadline)
            except RateLimitWouldExceedDeadline as exc:
                return RATE_LIMITED, f"{endpoint.id}: {exc}"
            payload = build_payload(self.settings, inputs, deadline - self._clock())
            timeout = min(self.settings.http_timeout_s, max(0.001, deadline - self._clock()))
            try:
                answer = await self._send(endpoint, payload, timeout)
            except CancelledAfterSubmit as late:
                # Remember the job the endpoint queued anyway: it gets its /cancel, or is recorded.
                job.accepted(endpoint, late.answer.job_id, late.answer.status)
                if journal is not None:
                    job.cancel_requested = await journal.submitted(endpoint.id, late.answer.job_id)
                raise asyncio.CancelledError from None
            except RunPodError as exc:
                decision = self._classify(endpoint, exc)
                if isinstance(decision, _NextEndpoint):
                    return decision.reason, decision.message
                last = decision.reason, decision.message
                delay = decision.delay if decision.delay is not None else self.backoff.delay(attempt, self._rng)
                if attempt + 1 < self.settings.submit_attempts:
                    if self._clock() + delay >= deadline:
                        break
                    logs.event(log, "runpod.submit_retry", logging.WARNING, endpoint=endpoint.id,
                               message=decision.message, retry_in_ms=int(delay * 1000))
                    await asyncio.sleep(delay)
                continue
            endpoint.breaker.record_success()
            job.accepted(endpoint, answer.job_id, answer.status)
            if journal is not None and await journal.submitted(endpoint.id, answer.job_id):
                # CancelSwap came while /run was in flight: the job is cancelled as it is accepted.
                raise SwapFallback(CANCELLED, "the swap was cancelled (CancelSwap) while its job was submitted")
            return None
        return last

    @staticmethod
    def _classify(endpoint: Endpoint, exc: RunPodError) -> _Retry | _NextEndpoint:
        """What one failed ``/run`` means; raises SwapFallback when the job may have been queued."""
        where = endpoint.id
        if isinstance(exc, NotSent):
            endpoint.breaker.record_failure()
            return _Retry(ENDPOINT_UNAVAILABLE, f"{where}: {exc}")
        if isinstance(exc, HttpStatusError):
            if exc.key_rejected:
                return _NextEndpoint(KEY_REJECTED, f"{where}: {exc}")
            if exc.rate_limited:
                return _Retry(RATE_LIMITED, f"{where}: /run answered HTTP 429 (queue full or rate limited)",
                              exc.retry_after)
            if exc.status in _SUBMIT_NOT_QUEUED:
                endpoint.breaker.record_failure()
                return _Retry(ENDPOINT_UNAVAILABLE, f"{where}: {exc}")
            if exc.server_error:
                endpoint.breaker.record_failure()
                raise SwapFallback(ENDPOINT_UNAVAILABLE, f"{where}: {exc}; {_MAYBE_QUEUED}")
            if exc.status == 404:
                return _NextEndpoint(ENDPOINT_UNAVAILABLE, f"{where}: /run answered HTTP 404 (no such endpoint)")
            return _NextEndpoint(PROTOCOL_ERROR, f"{where}: {exc}")
        if isinstance(exc, NoAnswer):
            endpoint.breaker.record_failure()
            raise SwapFallback(ENDPOINT_UNAVAILABLE, f"{where}: {exc}; {_MAYBE_QUEUED}")
        if isinstance(exc, BadResponse | TooLarge):
            raise SwapFallback(PROTOCOL_ERROR, f"{where}: {exc}; {_MAYBE_QUEUED}")
        raise SwapFallback(PROTOCOL_ERROR, f"{where}: {exc}")

    async def _send(self, endpoint: Endpoint, payload: dict[str, Any], timeout_s: float) -> SubmitAnswer:
        sending = asyncio.ensure_future(self.client.submit(endpoint.id, payload, timeout_s))
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
            raise CancelledAfterSubmit(sending.result()) from None


def combine(failures: list[tuple[Reason, str]]) -> SwapFallback:
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
