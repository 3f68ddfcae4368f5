"""Where the Node client lives, and its node binary once it is built."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parents[3] / "clients" / "node"


def node_ready() -> str:
    """The node binary, once `make node-client` has installed and built the client (else the test fails)."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "dist" / "index.js").exists():
        pytest.fail("the Node client is not built: run `make node-client` (npm ci and tsc in clients/node)")
    return node
