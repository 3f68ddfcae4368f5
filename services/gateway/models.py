"""The generator's model catalog as the gateway sees it: fetched with ListModels, kept a while.

Submit checks each request against its model's limits (services/common/model_limits.py),
so it needs the catalog often and fresh enough: it is kept for ``max_age_s``
and fetched again on the first request after that. While the generator cannot
be reached the last catalog it sent stays in use; before it has ever answered
there is none, and the generator's own check (when the job runs) is the only one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from facegen.v1 import common_pb2
from services.common import logs
from services.common.errors import FacegenError

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE_SECONDS = 30.0


class ModelCatalog:
    """A cached ``ListModels`` answer."""

    def __init__(self, fetch: Callable[[], Awaitable[common_pb2.ListModelsResponse]],
                 max_age_s: float = DEFAULT_MAX_AGE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._clock = clock
        self._models: Sequence[common_pb2.ModelInfo] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def models(self) -> Sequence[common_pb2.ModelInfo] | None:
        """The catalog, fetched again when older than the maximum age; None when never fetched."""
        if self._models is not None and self._clock() - self._fetched_at < self._max_age_s:
            return self._models
        async with self._lock:
            if self._models is None or self._clock() - self._fetched_at >= self._max_age_s:
                await self._refresh()
        return self._models

    async def _refresh(self) -> None:
        try:
            response = await self._fetch()
        except FacegenError as exc:
            logs.event(log, "models.fetch_failed", logging.WARNING, error=exc,
                       using="the last catalog" if self._models is not None else "no catalog")
            # Ask again at the next request, not at every one.
            self._fetched_at = self._clock() - self._max_age_s / 2
            return
        self._models = list(response.models)
        self._fetched_at = self._clock()
