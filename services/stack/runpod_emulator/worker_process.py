"""A worker process of the emulator: the real face-swap handler, one job at a time, over JSON lines.

Run by ``workers.WorkerProcess`` with the worker's environment (``.venv-worker``):
it loads and warms up the handler, writes ``{"ready": pid}``, then for each line
``{"id", "action", "input"}`` on stdin writes ``{"id", "output"}`` on its protocol
stream (the original stdout; anything else the process prints goes to stderr).
``action`` is ``run`` (the handler) or ``unchanged`` (fault injection: the target as
it came, reported as a success).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from typing import Any


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the closed stdin still ends the process when idle
        pass


def main() -> None:
    """Serve jobs from stdin until it closes."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the emulator decides when workers stop
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the protocol

    from services.faceswap_worker.handler import FaceSwapWorker
    from services.faceswap_worker.inputs import InputError, fetch_bytes, image_size

    worker = FaceSwapWorker()
    worker.warm_up()

    def unchanged(job_input: Any) -> dict[str, Any]:
        if not isinstance(job_input, dict):
            return {"error": "input must be a JSON object"}
        try:
            data = fetch_bytes(job_input.get("target_file"), "target_file", worker.settings)
            width, height, _fmt = image_size(data, "target_file", worker.settings)
        except InputError as exc:
            return {"error": str(exc)}
        return {"result": base64.b64encode(data).decode("ascii"), "width": width, "height": height,
                "backend": worker.engine.renderer.name, "faces_swapped": 1, "target_faces": 1}

    protocol.write(json.dumps({"ready": os.getpid()}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        message = json.loads(line)
        job_input = message.get("input")
        output = unchanged(job_input) if message.get("action") == "unchanged" else worker.run(job_input)
        protocol.write(json.dumps({"id": message.get("id"), "output": output}) + "\n")
        protocol.flush()


if __name__ == "__main__":
    main()
