"""OpenTelemetry traces: one trace per job across every service, configured the standard way.

Tracing is on when an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, gRPC), unless
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. The service name
is ``OTEL_SERVICE_NAME`` (``facegen-<service>`` by default), the sampler
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (parent-based, always on,
by default), extra resource attributes ``OTEL_RESOURCE_ATTRIBUTES``; the
exporter reads its other ``OTEL_EXPORTER_OTLP_*`` variables (headers,
certificates, timeout, compression) itself. A bad value stops the service at
start like any other setting.

Off, nothing is exported and next to nothing is spent: every helper here
checks one flag first, the gRPC interceptor adds no span, and no library is
instrumented. On, each gRPC call gets a server span that continues the
caller's trace from the W3C ``traceparent`` metadata, and the gateway starts
each job's span under the span of the call that submitted it, keeping its
``traceparent`` with the job so that a gateway that resumes the job continues
the same trace.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common import logs
from services.common.config import TracingSettings

log = logging.getLogger(__name__)

JOB_ID = "facegen.job_id"
TRACEPARENT = "traceparent"
# A span that records nothing: what a part holds until (or unless) it starts a real one.
NO_SPAN: Span = trace.INVALID_SPAN
def sampler_for(settings: TracingSettings) -> Sampler:
    """The sampler the settings name."""
    ratio = 1.0 if settings.sampler_arg is None else settings.sampler_arg
    return {
        "always_on": lambda: ALWAYS_ON, "always_off": lambda: ALWAYS_OFF,
        "traceidratio": lambda: TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: ParentBased(ALWAYS_ON),
        "parentbased_always_off": lambda: ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": lambda: ParentBasedTraceIdRatio(ratio),
    }[settings.sampler]()


_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_hooks_installed = False


def enabled() -> bool:
    """True while spans are recorded and exported (the one check every hot path makes first)."""
    return _provider is not None


def provider() -> TracerProvider | None:
    """The tracer provider while tracing is on (for instrumentations of client libraries)."""
    return _provider


def configure(service: str, settings: TracingSettings, exporter: SpanExporter | None = None) -> bool:
    """Turns tracing on when the settings say so (or ``exporter`` is given); returns whether it is on.

    Called once at start by ``run_service``; tests pass their own exporter.
    """
    if exporter is None and not settings.enabled:
        return False
    attributes: dict[str, str] = {"service.namespace": "facegen"}
    for item in (settings.resource_attributes or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = value.strip()
    attributes["service.name"] = settings.service_name or f"facegen-{service}"
    tracer_provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler_for(settings))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        headers = settings.headers.get_secret_value() if settings.headers is not None else None
        exporter = OTLPSpanExporter(endpoint=settings.endpoint, insecure=settings.insecure, headers=headers)
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    use(tracer_provider)
    return True


def use(tracer_provider: TracerProvider) -> None:
    """Records spans through ``tracer_provider`` from now on (``configure`` calls it; so do tests)."""
    global _provider, _tracer, _hooks_installed
    _provider = tracer_provider
    _tracer = tracer_provider.get_tracer("facegen")
    if not _hooks_installed:
        _hooks_installed = True
        logs.set_trace_source(_current_ids)
        logs.on_job_context(_tag_job)


def shutdown() -> None:
    """Exports what is left and turns tracing off."""
    global _provider, _tracer
    tracer_provider, _provider, _tracer = _provider, None, trace.NoOpTracer()
    if tracer_provider is not None:
        tracer_provider.shutdown()


def _current_ids() -> tuple[str, str] | None:
    if _provider is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _tag_job(job_id: str) -> None:
    if _provider is not None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(JOB_ID, job_id)


# --- spans --------------------------------------------------------------------------------------

@contextmanager
def server_span(name: str, metadata: Iterable[tuple[str, Any]] | None,
                attributes: Mapping[str, str]) -> Iterator[Span]:
    """The span of one incoming gRPC call, current inside the block, continuing the caller's trace."""
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    with _tracer.start_as_current_span(name, context=propagate.extract(carrier), kind=SpanKind.SERVER,
                                       attributes=attributes, record_exception=False,
                                       set_status_on_exception=False) as span:
        yield span


def start_span(name: str, kind: SpanKind = SpanKind.INTERNAL, parent: Context | None = None,
               attributes: Mapping[str, str | int | bool] | None = None) -> Span:
    """A span that the caller ends (``span.end()``); not made current."""
    return _tracer.start_span(name, context=parent, kind=kind, attributes=attributes)


def current_span() -> Span:
    """The span current in this context (``NO_SPAN`` when tracing is off)."""
    return trace.get_current_span() if _provider is not None else NO_SPAN


def inject(span: Span) -> list[tuple[str, str]]:
    """gRPC metadata that carries ``span``'s context (``traceparent``) to the callee."""
    carrier: dict[str, str] = {}
    if span.get_span_context().is_valid:
        propagate.inject(carrier, context=trace.set_span_in_context(span))
    return list(carrier.items())


def end(span: Span, error: str | None = None) -> None:
    """Ends ``span``, with an error status when ``error`` says what failed."""
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def current_traceparent() -> str:
    """The W3C ``traceparent`` of the current span ("" when tracing is off or no span is current)."""
    if _provider is None:
        return ""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def context_of(traceparent: str) -> Context | None:
    """The context a ``traceparent`` names, to continue its trace (None for "")."""
    if not traceparent:
        return None
    return propagate.extract({TRACEPARENT: traceparent})


def trace_id(span: Span) -> str:
    """``span``'s trace id (32 hex digits), or "" for a span that is not traced."""
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


def trace_id_of(traceparent: str) -> str:
    """The trace id (32 hex digits) in a ``traceparent`` ("" when there is none)."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


@contextmanager
def use_span(span: Span) -> Iterator[None]:
    """Makes ``span`` current inside the block (children and log lines take it as theirs)."""
    if _provider is None:
        yield
        return
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield

