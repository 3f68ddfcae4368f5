"""A scripted stand-in for the gateway stub, sync and asyncio, for the client's unit tests.

Each Submit answer and each Watch stream is taken from a script in order; a
Watch stream yields its events and then ends, or raises its error (a
broken stream). Everything the client sent is recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc

from facegen.v1 import gateway_pb2

JOB = "job-1"


class RpcError(grpc.RpcError):
    """A gRPC error as the channel raises it (code and details)."""

    def __init__(self, code: grpc.StatusCode, details: str = "scripted") -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def event(seq: int, terminal: bool = False, job_id: str = JOB) -> gateway_pb2.JobEvent:
    """Event ``seq`` of the job; the terminal one carries a COMPLETED result."""
    if terminal:
        return gateway_pb2.JobEvent(job_id=job_id, seq=seq, stage=gateway_pb2.STAGE_TERMINAL, percent=100,
                                    result=gateway_pb2.JobResult(state=gateway_pb2.JOB_STATE_COMPLETED, code="OK"))
    return gateway_pb2.JobEvent(job_id=job_id, seq=seq, stage=gateway_pb2.STAGE_GENERATING, percent=seq)


@dataclass
class Stream:
    """One Watch answer: these events, then ``error`` (None: the stream just ends)."""

    events: list[gateway_pb2.JobEvent]
    error: BaseException | None = None


@dataclass
class Script:
    submits: list[BaseException | str] = field(default_factory=lambda: [JOB])
    streams: list[Stream] = field(default_factory=list)
    submitted: list[gateway_pb2.JobRequest] = field(default_factory=list)
    watched: list[int] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def submit(self, request: gateway_pb2.JobRequest) -> gateway_pb2.SubmitResponse:
        self.submitted.append(request)
        answer = self.submits.pop(0) if len(self.submits) > 1 else self.submits[0]
        if isinstance(answer, BaseException):
            raise answer
        return gateway_pb2.SubmitResponse(job_id=answer, created=len(self.submitted) == 1)

    def watch(self, request: gateway_pb2.WatchRequest) -> Stream:
        assert request.job_id == JOB
        self.watched.append(request.after_seq)
        return self.streams.pop(0)

    def cancel(self, request: gateway_pb2.CancelRequest) -> gateway_pb2.CancelResponse:
        self.cancelled.append(request.job_id)
        return gateway_pb2.CancelResponse(state=gateway_pb2.JOB_STATE_CANCELLED)


class _Call:
    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def cancel(self) -> bool:
        return True

    def __iter__(self) -> Iterator[gateway_pb2.JobEvent]:
        yield from self._stream.events
        if self._stream.error is not None:
            raise self._stream.error

    async def _play(self) -> AsyncIterator[gateway_pb2.JobEvent]:
        for item in self._stream.events:
            yield item
        if self._stream.error is not None:
            raise self._stream.error

    def __aiter__(self) -> AsyncIterator[gateway_pb2.JobEvent]:
        return self._play()


class SyncStub:
    """The blocking stub's methods the client uses."""

    def __init__(self, script: Script) -> None:
        self.script = script

    def Submit(self, request: gateway_pb2.JobRequest, **_: object) -> gateway_pb2.SubmitResponse:
        return self.script.submit(request)

    def Watch(self, request: gateway_pb2.WatchRequest, **_: object) -> _Call:
        return _Call(self.script.watch(request))

    def Cancel(self, request: gateway_pb2.CancelRequest, **_: object) -> gateway_pb2.CancelResponse:
        return self.script.cancel(request)


class AsyncStub(SyncStub):
    """The asyncio stub's methods the client uses."""

    async def Submit(self, request: gateway_pb2.JobRequest, **_: object) -> gateway_pb2.SubmitResponse:  # type: ignore[override]
        return self.script.submit(request)

    async def Cancel(self, request: gateway_pb2.CancelRequest, **_: object) -> gateway_pb2.CancelResponse:  # type: ignore[override]
        return self.script.cancel(request)
