"""Fake generator and swapper: real grpc.aio servers on loopback that follow a script.

They implement facegen.v1.GeneratorService and facegen.v1.SwapperService the
way the real services do (event order, status codes, cancellation), with
delays and failures set by a script, and they record what they received and
which calls were cancelled. Typical use::

    async with FakeUpstreams(GeneratorScript(steps=4, step_delay=0.01)) as up:
        settings = replace(settings, generator_address=up.generator_address,
                           swapper_address=up.swapper_address)
        ...
        await up.generator.wait_for(lambda g: g.cancelled)

Scripts are plain mutable dataclasses: change them between jobs. Delays are
measured from the start of each call and slept until absolute deadlines, so
they do not drift with the number of steps.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import grpc
from PIL import Image

from facegen.v1 import (
    common_pb2,
    generator_pb2,
    generator_pb2_grpc,
    swapper_pb2,
    swapper_pb2_grpc,
)
from services.common.tls import server_credentials
from services.common.tls_files import TlsFiles

DEFAULT_SIZE = 64
DEFAULT_SEED = 1234
FAKE_ENDPOINT = "fake-endpoint"


@functools.lru_cache(maxsize=32)
def png_bytes(width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE,
              color: tuple[int, int, int] = (120, 90, 60)) -> bytes:
    """A valid PNG of one colour (cached: the fakes send the same bytes again and again)."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height from the image header (0, 0 when it is not an image)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return 0, 0


async def _sleep_until(deadline: float) -> None:
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


class _Recorder:
    """Lets tests wait for a condition on what a fake has seen, without sleeping."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[Self], Any], within: float = 5.0) -> None:
        """Waits until ``predicate(self)`` is true; TimeoutError after ``within`` seconds."""
        async with asyncio.timeout(within):
            while not predicate(self):
                await self._changed.wait()


@dataclass
class GeneratorScript:
    """How the fake generator behaves."""

    # Steps when the request asks for the model's default (0), and the time each one takes.
    steps: int = 4
    step_delay: float = 0.0
    # Queue positions sent before the first step.
    queue_positions: tuple[int, ...] = ()
    # When set, every call waits for this event before its first step (hold calls open).
    gate: asyncio.Event | None = None
    # End the stream with this status after ``fail_after_steps`` steps, or after
    # ``fail_after_images`` images when that is set.
    fail: grpc.StatusCode | None = None
    fail_message: str = "scripted generator failure"
    fail_after_steps: int = 0
    fail_after_images: int | None = None
    # Send only this many images (None: as many as asked for).
    images_sent: int | None = None


@dataclass
class SwapScript:
    """How the fake swapper behaves."""

    put_delay: float = 0.0
    # When set, PutReference waits for this event before answering.
    put_gate: asyncio.Event | None = None
    put_fail: grpc.StatusCode | None = None
    put_fail_message: str = "storage is unavailable (scripted)"
    # Time from the Swap call's start to its result, spread over the remote statuses.
    delay: float = 0.0
    delay_by_index: dict[int, float] = field(default_factory=dict)
    statuses: tuple[str, ...] = ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    method: int = common_pb2.FACE_SWAP_METHOD_EXTERNAL_API
    # Image index -> (fallback reason, message): return the plain image instead.
    fallback: dict[int, tuple[int, str]] = field(default_factory=dict)
    # Image index -> (status code, message): end that image's stream with the status
    # (on its first ``fail_calls`` calls only, when that is set).
    fail: dict[int, tuple[grpc.StatusCode, str]] = field(default_factory=dict)
    fail_calls: int | None = None
    gate: asyncio.Event | None = None


@dataclass(frozen=True)
class SwapCall:
    """What the fake swapper received in one Swap call."""

    job_id: str
    image_index: int
    reference_key: str
    deadline_ms: int
    options: common_pb2.SwapOptions
    target_image: bytes
    target_key: str = ""
    resumable: bool = False


class FakeGenerator(generator_pb2_grpc.GeneratorServiceServicer, _Recorder):
    """GeneratorService that follows a GeneratorScript."""

    def __init__(self, script: GeneratorScript | None = None,
                 models: list[common_pb2.ModelInfo] | None = None) -> None:
        _Recorder.__init__(self)
        self.script = script or GeneratorScript()
        self.models = models if models is not None else [common_pb2.ModelInfo(
            name="tiny-sd", family="sd", loaded=True, is_default=True, default_width=64,
            default_height=64, min_size=64, max_size=512, size_multiple=8, default_steps=4, max_steps=50,
            default_guidance=7.5, max_guidance=20.0, negative_prompt=True, loras=["tiny-style"])]
        self.requests: list[generator_pb2.GenerateRequest] = []
        # The W3C traceparent each Generate call carried ("" when none).
        self.traceparents: list[str] = []
        self.cancelled: list[str] = []
        self.active = 0
        self.calls = 0
        # Job id -> seconds from the call's start to its last image (what the generator "spent").
        self.durations: dict[str, float] = {}

    async def Generate(self, request: generator_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[generator_pb2.GenerateEvent]:
        script = self.script
        started = time.perf_counter()
        self.requests.append(request)
        self.traceparents.append(dict(context.invocation_metadata() or ()).get("traceparent", ""))
        self.calls += 1
        self.active += 1
        self._notify()
        try:
            for position in script.queue_positions:
                yield generator_pb2.GenerateEvent(queued=generator_pb2.QueuePosition(position=position))
            if script.gate is not None:
                await script.gate.wait()
            total = request.steps or script.steps
            start = asyncio.get_running_loop().time()
            for step in range(1, total + 1):
                if script.fail is not None and script.fail_after_images is None \
                        and script.fail_after_steps < step:
                    await context.abort(script.fail, script.fail_message)
                await _sleep_until(start + step * script.step_delay)
                preview = b""
                if request.preview_every and step % request.preview_every == 0:
                    preview = png_bytes(8, 8)
                yield generator_pb2.GenerateEvent(step=generator_pb2.StepProgress(
                    step=step, total_steps=total, preview_png=preview))
            if script.fail is not None and script.fail_after_images is None:
                await context.abort(script.fail, script.fail_message)
            width, height = request.width or DEFAULT_SIZE, request.height or DEFAULT_SIZE
            wanted = request.num_images or 1
            sent = wanted if script.images_sent is None else min(wanted, script.images_sent)
            base_seed = request.seed if request.HasField("seed") and request.seed != -1 else DEFAULT_SEED
            for index in range(sent):
                if script.fail is not None and script.fail_after_images == index:
                    await context.abort(script.fail, script.fail_message)
                self.durations[request.job_id] = time.perf_counter() - started
                yield generator_pb2.GenerateEvent(image=generator_pb2.GeneratedImage(
                    index=index, png=png_bytes(width, height), width=width, height=height,
                    seed=base_seed + index))
            if script.fail is not None and script.fail_after_images is not None:
                await context.abort(script.fail, script.fail_message)
            yield generator_pb2.GenerateEvent(done=generator_pb2.GenerateDone(
                model=request.model or "tiny-sd",
                duration_ms=round(total * script.step_delay * 1000), batch_size=1))
        except asyncio.CancelledError:
            self.cancelled.append(request.job_id)
            raise
        finally:
            self.active -= 1
            self._notify()

    async def ListModels(self, request: common_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> common_pb2.ListModelsResponse:
        return common_pb2.ListModelsResponse(models=self.models)


class FakeSwapper(swapper_pb2_grpc.SwapperServiceServicer, _Recorder):
    """SwapperService that follows a SwapScript.

    ``keep_images=False`` records calls without their image bytes (for benchmarks).
    """

    def __init__(self, script: SwapScript | None = None, keep_images: bool = True) -> None:
        _Recorder.__init__(self)
        self.script = script or SwapScript()
        self.keep_images = keep_images
        # Reference key -> bytes (empty when keep_images is False).
        self.references: dict[str, bytes] = {}
        self.puts: list[str] = []
        self.swaps: list[SwapCall] = []
        self.cancelled_puts: list[str] = []
        self.cancelled_swaps: list[tuple[str, int]] = []
        # Targets stored by PutTarget (key -> bytes), and CancelSwap calls (job id, image index).
        self.targets: dict[str, bytes] = {}
        self.cancel_swap_calls: list[tuple[str, int]] = []
        # Remote jobs submitted per (job id, image index): a resumable swap called again follows its job.
        self.remote_jobs: dict[tuple[str, int], str] = {}
        self.active = 0
        # Most Swap calls seen in flight at once.
        self.max_active = 0
        # Seconds each PutReference (by job id) and each Swap (by job id and image) took.
        self.put_durations: dict[str, float] = {}
        self.swap_durations: dict[tuple[str, int], float] = {}

    async def PutReference(self, request: swapper_pb2.PutReferenceRequest,
                           context: grpc.aio.ServicerContext) -> swapper_pb2.PutReferenceResponse:
        script = self.script
        started = time.perf_counter()
        self.puts.append(request.job_id)
        self._notify()
        try:
            if script.put_gate is not None:
                await script.put_gate.wait()
            await asyncio.sleep(script.put_delay)
        except asyncio.CancelledError:
            self.cancelled_puts.append(request.job_id)
            self._notify()
            raise
        if script.put_fail is not None:
            await context.abort(script.put_fail, script.put_fail_message)
        extension = "png" if request.image.startswith(b"\x89PNG") else "jpg"
        key = f"refs/{hashlib.sha256(request.image).hexdigest()}.{extension}"
        deduplicated = key in self.references
        self.references[key] = request.image if self.keep_images else b""
        self.put_durations[request.job_id] = time.perf_counter() - started
        self._notify()
        return swapper_pb2.PutReferenceResponse(key=key, deduplicated=deduplicated)

    async def CheckReference(self, request: swapper_pb2.CheckReferenceRequest,
                             context: grpc.aio.ServicerContext) -> swapper_pb2.CheckReferenceResponse:
        if not request.key.startswith("refs/"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "reference_key must be a key returned by "
                                "PutReference (refs/<sha256>.<jpg|png|webp>)")
        if request.key not in self.references:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"reference {request.key} not found")
        return swapper_pb2.CheckReferenceResponse()

    async def PutTarget(self, request: swapper_pb2.PutTargetRequest,
                        context: grpc.aio.ServicerContext) -> swapper_pb2.PutTargetResponse:
        key = f"tmp/{request.job_id}/{request.image_index}.png"
        self.targets[key] = request.image
        self._notify()
        return swapper_pb2.PutTargetResponse(key=key)

    async def CancelSwap(self, request: swapper_pb2.CancelSwapRequest,
                         context: grpc.aio.ServicerContext) -> swapper_pb2.CancelSwapResponse:
        self.cancel_swap_calls.append((request.job_id, request.image_index))
        self._notify()
        return swapper_pb2.CancelSwapResponse(remote_cancelled=True)

    async def Swap(self, request: swapper_pb2.SwapRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[swapper_pb2.SwapEvent]:
        script = self.script
        started = time.perf_counter()
        index = request.image_index
        if request.target_key and request.target_key not in self.targets:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"target {request.target_key} not found")
        target = self.targets.get(request.target_key, request.target_image)
        self.swaps.append(SwapCall(
            job_id=request.job_id, image_index=index, reference_key=request.reference_key,
            deadline_ms=request.deadline_ms, options=request.options,
            target_image=target if self.keep_images else b"", target_key=request.target_key,
            resumable=request.resumable))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self._notify()
        try:
            if request.reference_key and request.reference_key not in self.references:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"reference {request.reference_key} not found")
            if script.gate is not None:
                await script.gate.wait()
            start = asyncio.get_running_loop().time()
            key = request.target_key or f"tmp/{request.job_id}/{index}.png"
            self.targets[key] = target
            yield swapper_pb2.SwapEvent(stored=swapper_pb2.SwapStored(key=key))
            calls = sum(call.job_id == request.job_id and call.image_index == index for call in self.swaps)
            if index in script.fail and (script.fail_calls is None or calls <= script.fail_calls):
                code, message = script.fail[index]
                await context.abort(code, message)
            width, height = image_size(target)
            result = swapper_pb2.SwapResult(
                url=f"http://storage.test/results/{request.job_id}/{index}.png",
                key=f"results/{request.job_id}/{index}.png", content_type="image/png",
                width=width, height=height, method=script.method)  # type: ignore[arg-type]
            if not request.reference_key:
                result.method = common_pb2.FACE_SWAP_METHOD_NONE
            elif index in script.fallback:
                reason, message = script.fallback[index]
                result.method = common_pb2.FACE_SWAP_METHOD_NONE
                result.fallback_reason = reason  # type: ignore[assignment]
                result.fallback_message = message
            if request.reference_key:
                known = self.remote_jobs.get((request.job_id, index)) if request.resumable else None
                remote_id = known or f"rp-{request.job_id[:8]}-{index}-{len(self.remote_jobs)}"
                self.remote_jobs[(request.job_id, index)] = remote_id
                yield swapper_pb2.SwapEvent(submitted=swapper_pb2.SwapSubmitted(
                    remote_job_id=remote_id, endpoint=FAKE_ENDPOINT, resumed=known is not None))
                delay = script.delay_by_index.get(index, script.delay)
                count = max(1, len(script.statuses))
                for number, status in enumerate(script.statuses, start=1):
                    await _sleep_until(start + delay * number / count)
                    yield swapper_pb2.SwapEvent(remote_status=common_pb2.RemoteJobStatus(
                        remote_job_id=remote_id, endpoint=FAKE_ENDPOINT, status=status,
                        delay_time_ms=5, execution_time_ms=round(delay * 1000 * number / count)))
                await _sleep_until(start + delay)
            self.swap_durations[(request.job_id, index)] = time.perf_counter() - started
            yield swapper_pb2.SwapEvent(result=result)
        except asyncio.CancelledError:
            self.cancelled_swaps.append((request.job_id, index))
            raise
        finally:
            self.active -= 1
            self._notify()


async def start_server(register: Callable[[grpc.aio.Server], None],
                       credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, str]:
    """Starts an aio server on a free loopback port (TLS with ``credentials``); returns it and its address."""
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 * 1024 * 1024),
                                      ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                      ("grpc.so_reuseport", 0)])
    register(server)
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials is not None
            else server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    return server, f"127.0.0.1:{port}"


class FakeUpstreams:
    """A fake generator and a fake swapper, each on its own loopback port."""

    def __init__(self, generator_script: GeneratorScript | None = None,
                 swap_script: SwapScript | None = None, keep_images: bool = True,
                 tls: TlsFiles | None = None) -> None:
        # TLS files of both servers (mTLS with a CA); each port gets credentials of its own.
        self.tls = tls or TlsFiles()
        self.generator = FakeGenerator(generator_script)
        self.swapper = FakeSwapper(swap_script, keep_images=keep_images)
        self.generator_address = ""
        self.swapper_address = ""
        self._servers: list[grpc.aio.Server] = []

    async def start(self) -> Self:
        """Starts both servers."""
        server, self.generator_address = await start_server(
            lambda s: generator_pb2_grpc.add_GeneratorServiceServicer_to_server(self.generator, s),
            server_credentials(self.tls))
        self._servers.append(server)
        server, self.swapper_address = await start_server(
            lambda s: swapper_pb2_grpc.add_SwapperServiceServicer_to_server(self.swapper, s),
            server_credentials(self.tls))
        self._servers.append(server)
        return self

    async def stop(self) -> None:
        """Stops both servers, cancelling calls in flight."""
        for server in self._servers:
            await server.stop(0)
        self._servers.clear()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
