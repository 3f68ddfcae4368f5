"""Spans recorded in memory: tracing turned on for one test, without an exporter to a collector."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing


@contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """Turns tracing on inside the block; the exporter holds every span ended meanwhile (the ``spans`` fixture)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.shutdown()


def hex_id(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) of a span, as hex."""
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str:
    """The hex id of a span's parent ("" for a root span)."""
    return f"{span.parent.span_id:016x}" if span.parent is not None else ""


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The finished spans called ``name``, in the order they ended."""
    return [span for span in exporter.get_finished_spans() if span.name == name]
