"""``python -m services.swapper [serve|setup|doctor]``: storage, RunPod face swap and fallback."""

import sys

from services.common.app import run_service
from services.swapper.app import SwapperApp
from services.swapper.commands import COMMANDS
from services.swapper.settings import Settings

if __name__ == "__main__":
    sys.exit(run_service(SwapperApp, Settings, "swapper", COMMANDS))
