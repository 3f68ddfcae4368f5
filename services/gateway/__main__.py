"""``python -m services.gateway``: the public gRPC front door of facegen."""

from __future__ import annotations

import asyncio
import logging

from services.common import logs
from services.common.config import ConfigError
from services.common.secrets import mask
from services.common.server import run_until_signal
from services.gateway.app import GatewayApp
from services.gateway.settings import Settings

log = logging.getLogger("services.gateway")


async def main() -> None:
    """Serves until SIGTERM/SIGINT, then drains: running jobs go on, then are handed over or cancelled."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        logs.configure("gateway")
        logs.event(log, "config.invalid", logging.ERROR, error=exc)
        raise SystemExit(2) from None
    logs.configure("gateway", settings.log_level)
    app = GatewayApp(settings)

    async def on_start() -> None:
        logs.event(log, "gateway.config", instance=settings.instance, store=settings.store,
                   redis=settings.redis.display_url if settings.redis else "-",
                   generator=settings.generator_address, swapper=settings.swapper_address,
                   max_running=settings.max_running_jobs, max_queued=settings.max_queued_jobs,
                   drain_s=settings.drain_seconds, auth=mask(settings.auth_token))
        await app.warm_up()

    await run_until_signal(app.server, "gateway", on_start, app.close, on_drain=app.drain)


if __name__ == "__main__":
    asyncio.run(main())
