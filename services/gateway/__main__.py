"""``python -m services.gateway``: the public gRPC front door of facegen."""

import sys

from services.common.app import run_service
from services.gateway.app import GatewayApp
from services.gateway.settings import Settings

if __name__ == "__main__":
    sys.exit(run_service(GatewayApp, Settings, "gateway"))
