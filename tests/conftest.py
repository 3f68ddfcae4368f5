"""Shared test configuration.

tests/worker/ belongs to the face-swap worker, whose dependencies live in
their own environment (.venv-worker); `make test` runs it there with
FACEGEN_WORKER_TESTS=1, and the main environment leaves it alone.
"""

import os

collect_ignore = [] if os.environ.get("FACEGEN_WORKER_TESTS") else ["worker"]
