"""``python -m services.swapper [serve|setup|doctor]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from services.common import logs
from services.common.config import ConfigError
from services.common.server import ServiceServer, run_until_signal
from services.swapper.bucket import BucketSetup
from services.swapper.s3 import StorageUnavailable
from services.swapper.service import SERVICE_NAME, SwapperApp
from services.swapper.settings import Settings

log = logging.getLogger("services.swapper")


async def serve(settings: Settings) -> None:
    """Serves until SIGTERM/SIGINT; NOT_SERVING until storage is ready."""
    app = SwapperApp(settings)
    server = ServiceServer(settings.server, [SERVICE_NAME], app.register)
    await run_until_signal(server, "swapper", app.start, app.stop)


async def setup(settings: Settings) -> int:
    """Checks (or creates) the bucket and installs the lifecycle rules; 0 when both worked."""
    app = SwapperApp(settings)
    try:
        storage = await app.storage_pool.run(app.build_storage)
        notes = await app.storage_pool.run(BucketSetup(storage.s3).ensure_ready, True, True)
    except StorageUnavailable as exc:
        logs.event(log, "storage.setup_failed", logging.ERROR, message=str(exc))
        return 1
    finally:
        await app.stop()
    logs.event(log, "storage.setup_done", bucket=settings.storage.bucket, notes="; ".join(notes))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parses the command, reads the settings, runs; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m services.swapper",
                                     description="facegen swapper: storage and RunPod face swap")
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", "setup", "doctor"),
                        help="serve (default), setup (check the bucket and install its lifecycle rules, "
                             "then exit) or doctor (check the configuration end to end)")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from services.swapper.doctor import main as doctor_main

        return doctor_main()
    logs.configure("swapper")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"swapper: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "setup":
        return asyncio.run(setup(settings))
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
