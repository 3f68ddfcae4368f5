"""What ``python -m services.swapper`` does besides serving: ``setup`` and ``doctor``."""

from __future__ import annotations

import logging

from services.common import logs
from services.common.app import Command
from services.swapper.app import SwapperApp
from services.swapper.bucket import BucketSetup
from services.swapper.doctor import doctor_command
from services.swapper.s3 import StorageUnavailable
from services.swapper.settings import Settings

log = logging.getLogger(__name__)


async def setup(settings: Settings, args: list[str]) -> int:
    """``setup``: checks (or creates) the bucket and installs the lifecycle rules; 0 when both worked."""
    if args:
        raise SystemExit(f"setup takes no arguments, not {' '.join(args)}")
    app = SwapperApp(settings)
    try:
        storage = await app.storage_pool.run(app.build_storage)
        notes = await app.storage_pool.run(BucketSetup(storage.s3).ensure_ready, True, True)
    except StorageUnavailable as exc:
        logs.event(log, "storage.setup_failed", logging.ERROR, message=str(exc))
        return 1
    finally:
        await app.close()
    logs.event(log, "storage.setup_done", bucket=settings.storage.bucket, notes="; ".join(notes))
    return 0


COMMANDS: dict[str, Command[Settings]] = {
    "setup": Command(setup, "check (or create) the bucket and install its lifecycle rules, then exit"),
    "doctor": Command(doctor_command, "check the configuration end to end (--reference FACE --target PHOTO "
                      "for a real swap)", log_level="WARNING"),
}
