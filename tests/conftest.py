"""Shared test configuration.

tests/worker/ belongs to the face-swap worker, whose dependencies live in
their own environment (.venv-worker); `make test` runs it there with
FACEGEN_WORKER_TESTS=1, and the main environment leaves it alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.redis_server import RedisServer

collect_ignore = [] if os.environ.get("FACEGEN_WORKER_TESTS") else ["worker"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (tests flush it before use)."""
    # Imported here: the worker's environment, which also reads this file, has no redis client.
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, its spans kept in memory (``tests/spans.py`` reads them)."""
    # Imported here: the worker's environment has no OpenTelemetry.
    from tests.spans import recording

    with recording() as exporter:
        yield exporter
