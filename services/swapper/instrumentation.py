"""Spans for the swapper's boto3 calls (bucket setup, deletes), from OpenTelemetry's botocore instrumentation.

The object requests (``objects.py``) make spans of the same names
themselves; the RunPod calls get theirs from the aiohttp instrumentation's
trace config, which the RunPod client adds to its own sessions
(``runpod.py``). botocore can only be instrumented process-wide, so it is
patched here while tracing is on, and unpatched when the app closes.
"""

from __future__ import annotations

from collections.abc import Callable

from services.common import tracing


def instrument_storage() -> Callable[[], None]:
    """Patches botocore so that each S3 request is a client span; returns how to undo it."""
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

    instrumentor = BotocoreInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        return lambda: None
    instrumentor.instrument(tracer_provider=tracing.provider())
    return instrumentor.uninstrument
