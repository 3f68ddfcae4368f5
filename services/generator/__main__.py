"""``python -m services.generator``: serve GeneratorService until SIGTERM."""

import sys

from services.common.app import run_service
from services.generator.app import GeneratorApp
from services.generator.settings import Settings

# The guard matters here: the device process's fork server imports the parent's main module.
if __name__ == "__main__":
    sys.exit(run_service(GeneratorApp, Settings, "generator"))
