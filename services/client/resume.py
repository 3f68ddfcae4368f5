"""Following one job across broken streams: which events are new, and when to re-attach.

No I/O here: the sync and asyncio clients drive a JobFollower the same way.
Events carry seq 1, 2, 3, ... per job; after a break the client watches again
from the last seq it handed out, and drops anything at or below it (a replica
may replay an event the broken stream had already delivered). A stream that
delivered the terminal event is finished and never re-attached.
"""

from __future__ import annotations

import grpc

from facegen.v1 import gateway_pb2
from services.client.errors import GatewayError, JobLostError, status_of
from services.client.retry import Retrier

ENDED_EARLY = "the event stream ended before the job's terminal event"


class JobFollower:
    """Where a job stream stands: the job, the last seq handed out, the terminal event once seen."""

    def __init__(self, retrier: Retrier, job_id: str | None = None, after_seq: int = 0) -> None:
        self.retrier = retrier
        self.job_id = job_id
        self.last_seq = after_seq
        self.terminal: gateway_pb2.JobEvent | None = None
        # Times the stream was attached again after a break.
        self.resumes = 0
        # The gateway has shown that it knows the job (it answered Submit, or sent one of its events).
        self._known = False

    @property
    def finished(self) -> bool:
        """True once the terminal event was handed out."""
        return self.terminal is not None

    def submitted(self, job_id: str) -> None:
        """The Submit that created (or found) the job answered with ``job_id``."""
        self.job_id = job_id
        self._known = True
        self.retrier.succeeded()

    def watch_request(self) -> gateway_pb2.WatchRequest:
        """The Watch that continues after the last event handed out."""
        assert self.job_id is not None, "the job id is known before watching"
        return gateway_pb2.WatchRequest(job_id=self.job_id, after_seq=self.last_seq)

    def accept(self, event: gateway_pb2.JobEvent) -> bool:
        """True when ``event`` is new and goes to the caller; False for a replay of one already handed out."""
        if self.terminal is not None or event.seq <= self.last_seq:
            return False
        self.last_seq = event.seq
        self._known = True
        self.retrier.succeeded()
        if event.stage == gateway_pb2.STAGE_TERMINAL:
            self.terminal = event
        return True

    def may_have_live_job(self, error: BaseException) -> bool:
        """Whether a run that stops on ``error`` may leave a job running that it should cancel.

        Not when the gateway refused the submit (no job was made) or forgot the
        job; yes on an interrupt, a deadline, or an outage, even before the
        submit answered (the key finds the job if it was made).
        """
        if self.finished or isinstance(error, JobLostError):
            return False
        if isinstance(error, GatewayError) and self.job_id is None:
            return error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return True

    def reattach_delay(self, error: grpc.RpcError | None) -> float:
        """Seconds to wait before watching again after the stream broke with ``error``.

        ``None`` means the stream ended cleanly without the terminal event,
        which is handled like a lost gateway. Raises JobLostError when the
        gateway no longer knows the job, GatewayError when the failure is not
        one to ride out or the outage budget or deadline is spent.
        """
        code, details = (grpc.StatusCode.UNAVAILABLE, ENDED_EARLY) if error is None else status_of(error)
        if code == grpc.StatusCode.NOT_FOUND and self._known:
            raise JobLostError(code, f"the gateway no longer knows job {self.job_id} after seq {self.last_seq} "
                                     f"(its gateway restarted with the in-memory job store, or it expired): {details}",
                               self.job_id, self.last_seq)
        delay = self.retrier.next_delay(code, details, self.job_id, self.last_seq)
        self.resumes += 1
        return delay


class StreamView:
    """Where a job stream stands, as the sync and asyncio streams show it."""

    def __init__(self, follower: JobFollower, request: gateway_pb2.JobRequest | None) -> None:
        self._follower = follower
        # A run submits first, and owns its job (cancels it when left early). The request, with its
        # photos, is let go once the submit has answered.
        self._owns_job = request is not None
        self._request = request

    @property
    def job_id(self) -> str | None:
        """The job's id, once known (a run knows it when its submit has answered)."""
        return self._follower.job_id

    @property
    def last_seq(self) -> int:
        """The seq of the last event handed out."""
        return self._follower.last_seq

    @property
    def resumes(self) -> int:
        """How many times the stream was attached again after a break."""
        return self._follower.resumes

    @property
    def terminal(self) -> gateway_pb2.JobEvent | None:
        """The terminal event, once handed out."""
        return self._follower.terminal

    @property
    def result(self) -> gateway_pb2.JobResult:
        """The job's result; RuntimeError before the terminal event was handed out."""
        if self._follower.terminal is None:
            raise RuntimeError("the job has not ended yet: read the stream to its end first")
        return self._follower.terminal.result
