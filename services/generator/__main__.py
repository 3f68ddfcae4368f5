"""``python -m services.generator``: serve GeneratorService until SIGTERM."""

from __future__ import annotations

import asyncio
import sys

from services.common import logs
from services.common.config import ConfigError
from services.common.server import run_until_signal
from services.generator.app import build_app
from services.generator.settings import Settings


async def _serve(settings: Settings) -> None:
    app = build_app(settings)
    await app.engine.start()

    async def on_start() -> None:
        await app.engine.load_default(settings.warmup)

    # run_until_signal reports SERVING once on_start (load + warm-up) has finished.
    await run_until_signal(app.server, "generator", on_start, app.engine.stop)


def main() -> int:
    """Entry point; returns the process exit status."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"generator: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure("generator", settings.log_level)
    try:
        asyncio.run(_serve(settings))
    except ConfigError as exc:
        print(f"generator: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
