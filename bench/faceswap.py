"""Face-swap time per 512×512 swap on this CPU (run with the worker venv).

    .venv-worker/bin/python bench/faceswap.py [--runs 30]

Measures the engine alone (detect both faces, warp, colour, blend) and the whole handler
(decode two data URIs, swap, encode the JPEG result, base64), with and without the options.
Last line: one JSON object with the medians and the target (≤ 300 ms per swap).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from services.faceswap_worker import samples
from services.faceswap_worker.engine import SwapEngine, SwapOptions
from services.faceswap_worker.handler import FaceSwapWorker
from services.faceswap_worker.settings import WorkerSettings

TARGET_MS = 300.0


def _uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=95)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times), max(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    runs = max(20, args.runs)

    target = samples.astronaut()  # 512×512
    source = np.asarray(Image.fromarray(samples.grace_hopper()).resize((512, 512), Image.Resampling.LANCZOS))
    engine = SwapEngine()
    worker = FaceSwapWorker(WorkerSettings(), engine)
    job = {"source_file": _uri(source), "target_file": _uri(target)}
    all_options = {"mouth_mask": True, "use_face_enhancer": True}

    engine_ms, engine_max = _median_ms(lambda: engine.swap(source, target, SwapOptions()), runs)
    engine_opt_ms, _ = _median_ms(
        lambda: engine.swap(source, target, SwapOptions(mouth_mask=True, use_face_enhancer=True)), runs
    )
    handler_ms, handler_max = _median_ms(lambda: worker.run(job), runs)
    handler_opt_ms, _ = _median_ms(lambda: worker.run({**job, "options": all_options}), runs)
    detect_ms, _ = _median_ms(lambda: engine.detector.detect(target), runs)

    print(f"CPU cores: {os.cpu_count()}, runs per figure: {runs}, image 512x512")
    print(f"detect one image (detector + mesh):   {detect_ms:7.1f} ms median")
    print(f"engine swap:                          {engine_ms:7.1f} ms median ({engine_max:.1f} max)")
    print(f"engine swap, mouth mask + enhancer:   {engine_opt_ms:7.1f} ms median")
    print(f"handler (decode, swap, JPEG, base64): {handler_ms:7.1f} ms median ({handler_max:.1f} max)")
    print(f"handler, mouth mask + enhancer:       {handler_opt_ms:7.1f} ms median")
    print(f"target: handler swap <= {TARGET_MS:.0f} ms -> {'met' if handler_opt_ms <= TARGET_MS else 'MISSED'}")
    print(json.dumps({
        "bench": "faceswap",
        "image": "512x512",
        "runs": runs,
        "detect_ms": round(detect_ms, 1),
        "engine_swap_ms": round(engine_ms, 1),
        "engine_swap_all_options_ms": round(engine_opt_ms, 1),
        "handler_swap_ms": round(handler_ms, 1),
        "handler_swap_all_options_ms": round(handler_opt_ms, 1),
        "target_ms": TARGET_MS,
        "target_met": handler_opt_ms <= TARGET_MS,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
