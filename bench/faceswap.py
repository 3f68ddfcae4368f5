"""Face-swap quality beside speed, on this CPU (run with the worker venv).

    .venv-worker/bin/python bench/faceswap.py [--runs 30] [--save DIR]

Quality: every ordered pair of the test faces (``samples.quality_faces()``: reference → target,
pairs of one person left out), with and without ``mouth_mask`` / ``use_face_enhancer``, measured
with dlib's face descriptor (``services/faceswap_worker/quality.py``):
- ``d(reference, target)``, the baseline, and ``d(reference, result)``: is the result the reference
  person (under 0.6)? ``d(target, result)``: how far it moved from the target person;
- the largest pixel change outside the swapped faces (must be 0) and the seam (ΔE at the border);
- ``many_faces`` onto the group photo: every face measured.
A pair the engine refuses (a face in profile) is counted as refused, with its message, and left out
of the distances; the targets are judged on the swaps done, with the refusals printed beside them.
Speed: the engine alone and the whole handler (decode two data URIs, swap, JPEG, base64) at 512×512.

Last line: one JSON object with the figures, the targets and whether each is met. ``--save DIR``
writes every result as a JPEG to look at.
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
from PIL import Image

from services.faceswap_worker import samples
from services.faceswap_worker.detect import FACE_OVAL, Face
from services.faceswap_worker.engine import NoFaceError, SwapEngine, SwapOptions
from services.faceswap_worker.handler import FaceSwapWorker
from services.faceswap_worker.quality import (
    SAME_PERSON,
    FaceBox,
    IdentityMetric,
    descriptor_distance,
    outside_change,
    seam_delta_e,
)
from services.faceswap_worker.settings import WorkerSettings

TARGET_MS = 300.0
TARGET_MEDIAN_DISTANCE = 0.45
OPTION_SETS = {
    "plain": SwapOptions(),
    "mouth_mask": SwapOptions(mouth_mask=True),
    "enhancer": SwapOptions(use_face_enhancer=True),
    "mouth_mask+enhancer": SwapOptions(mouth_mask=True, use_face_enhancer=True),
}


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


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Measured:
    """One photo's faces as the engine sees them, and where the identity metric looks at each."""

    photo: samples.FacePhoto
    faces: list[Face]
    boxes: list[FaceBox]
    descriptors: list[np.ndarray | None]

    @property
    def largest(self) -> int:
        return max(range(len(self.faces)), key=lambda i: self.faces[i].area)


def identity_box(metric_faces: list[FaceBox], face: Face) -> FaceBox:
    """dlib's box for the engine's face when dlib found it (its centre inside), else the engine's box."""
    x, y, w, h = face.box
    for box in metric_faces:
        cx, cy = box.x + box.width / 2, box.y + box.height / 2
        if x <= cx <= x + w and y <= cy <= y + h:
            return box
    return FaceBox.around(face.box)


def measure(engine: SwapEngine, metric: IdentityMetric, photo: samples.FacePhoto) -> Measured:
    faces = [f for f in engine.detector.detect(photo.image) if f.mesh is not None]
    found = metric.faces(photo.image)
    boxes = [identity_box(found, f) for f in faces]
    return Measured(photo, faces, boxes, [metric.descriptor(photo.image, b) for b in boxes])


def face_mask(shape: tuple[int, ...], faces: list[Face]) -> np.ndarray:
    """The swapped faces' ovals (where the engine may change pixels), grown 2 px for rounding."""
    mask = np.zeros(shape[:2], np.uint8)
    for face in faces:
        assert face.mesh is not None
        cv2.fillPoly(mask, [np.round(face.mesh[list(FACE_OVAL)]).astype(np.int32)], 255)
    return cv2.dilate(mask, np.ones((5, 5), np.uint8))


def _dist(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    return None if a is None or b is None else descriptor_distance(a, b)


def swap_row(engine: SwapEngine, metric: IdentityMetric, ref: Measured, tgt: Measured, options: SwapOptions,
             save: Path | None, label: str) -> dict[str, Any]:
    """Swap ref onto tgt and measure the largest target face (every face with many_faces)."""
    reference = ref.descriptors[ref.largest]
    started = time.perf_counter()
    try:
        result = engine.swap(ref.photo.image, tgt.photo.image, options).image
    except NoFaceError as exc:
        return {"pair": label, "error": str(exc)}
    swap_ms = (time.perf_counter() - started) * 1000.0
    if save is not None:
        Image.fromarray(result).save(save / f"{label}.jpg", quality=92)
    chosen = list(range(len(tgt.faces))) if options.many_faces else [tgt.largest]
    faces = [tgt.faces[i] for i in chosen]
    mask = face_mask(tgt.photo.image.shape, faces)
    per_face = []
    for i in chosen:
        after = metric.descriptor(result, tgt.boxes[i])
        single = face_mask(tgt.photo.image.shape, [tgt.faces[i]])
        per_face.append({
            "d_ref_target": _round(_dist(reference, tgt.descriptors[i])),
            "d_ref_result": _round(_dist(reference, after)),
            "d_target_result": _round(_dist(tgt.descriptors[i], after)),
            "seam_delta_e": round(seam_delta_e(tgt.photo.image, result, single, float(np.sqrt(tgt.faces[i].area))), 2),
            "face_px": round(float(np.sqrt(tgt.faces[i].area))),
        })
    return {"pair": label, "swap_ms": round(swap_ms, 1),
            "outside_max_abs_diff": outside_change(tgt.photo.image, result, mask), "faces": per_face}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and worst identity distance, share recognised, outside change and seam over rows.

    A refused pair (the engine answered with an error, e.g. a face in profile) has no result to
    measure: it is counted in ``refused``, with its message, and left out of the other figures.
    """
    done = [r for r in rows if "error" not in r]
    faces = [f for r in done for f in r["faces"]]
    d_rr = [f["d_ref_result"] for f in faces]
    measured = [d for d in d_rr if d is not None]

    def median(key: str) -> float | None:
        values = [f[key] for f in faces if f[key] is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "swaps": len(done),
        "refused": len(rows) - len(done),
        "refusals": sorted({r["error"] for r in rows if "error" in r}),
        "median_d_ref_target": median("d_ref_target"),
        "median_d_ref_result": median("d_ref_result"),
        "max_d_ref_result": _round(max(measured)) if measured and len(measured) == len(d_rr) else None,
        "recognised_share": round(sum(1 for d in measured if d < SAME_PERSON) / max(1, len(d_rr)), 3),
        "median_d_target_result": median("d_target_result"),
        "outside_max_abs_diff": max((r["outside_max_abs_diff"] for r in done), default=0),
        "median_seam_delta_e": median("seam_delta_e"),
    }


def quality(engine: SwapEngine, save: Path | None) -> dict[str, Any]:
    metric = IdentityMetric()
    measured = {p.name: measure(engine, metric, p) for p in samples.quality_faces()}
    pairs = [(r, t) for r, t in itertools.permutations(measured.values(), 2) if r.photo.person != t.photo.person]
    by_options: dict[str, Any] = {}
    all_rows: list[dict[str, Any]] = []
    for name, options in OPTION_SETS.items():
        rows = [swap_row(engine, metric, r, t, options, save, f"{r.photo.name}-to-{t.photo.name}-{name}")
                for r, t in pairs]
        all_rows += rows
        by_options[name] = {**summarise(rows), "pairs": rows}
    group = measured["group"]
    many = [swap_row(engine, metric, measured[n], group, SwapOptions(many_faces=True), save, f"{n}-to-group-many")
            for n in ("collins", "hopper", "cameraman")]
    overall = summarise(all_rows)
    return {
        "faces": {m.photo.name: {"person": m.photo.person, "about": m.photo.about, "faces_found": len(m.faces),
                                 "dlib_sees_largest": m.boxes[m.largest].score is not None} for m in measured.values()},
        "overall": overall,
        "by_options": by_options,
        "many_faces_on_group": {**summarise(many), "pairs": many},
    }


def speed(engine: SwapEngine, runs: int) -> dict[str, float]:
    target = samples.astronaut()  # 512×512
    source = np.asarray(Image.fromarray(samples.grace_hopper()).resize((512, 512), Image.Resampling.LANCZOS))
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
    print(f"detect one image (detector + mesh):   {detect_ms:7.1f} ms median")
    print(f"engine swap:                          {engine_ms:7.1f} ms median ({engine_max:.1f} max)")
    print(f"engine swap, mouth mask + enhancer:   {engine_opt_ms:7.1f} ms median")
    print(f"handler (decode, swap, JPEG, base64): {handler_ms:7.1f} ms median ({handler_max:.1f} max)")
    print(f"handler, mouth mask + enhancer:       {handler_opt_ms:7.1f} ms median")
    return {
        "detect_ms": round(detect_ms, 1),
        "engine_swap_ms": round(engine_ms, 1),
        "engine_swap_all_options_ms": round(engine_opt_ms, 1),
        "handler_swap_ms": round(handler_ms, 1),
        "handler_swap_all_options_ms": round(handler_opt_ms, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--save", type=Path, help="write every swapped result here as JPEG")
    args = parser.parse_args()
    runs = max(20, args.runs)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)

    engine = SwapEngine()
    print(f"CPU cores: {os.cpu_count()}, load {os.getloadavg()[0]:.2f}, runs per speed figure: {runs}, image 512x512")
    timings = speed(engine, runs)
    figures = quality(engine, args.save)
    overall = figures["overall"]
    for name, summary in [*figures["by_options"].items(), ("many_faces (group)", figures["many_faces_on_group"])]:
        print(f"{name:22s} d(ref,target) {summary['median_d_ref_target']}  d(ref,result) median "
              f"{summary['median_d_ref_result']} max {summary['max_d_ref_result']}  recognised "
              f"{summary['recognised_share']:.0%}  d(target,result) {summary['median_d_target_result']}  "
              f"outside {summary['outside_max_abs_diff']}  seam ΔE {summary['median_seam_delta_e']}  "
              f"swaps {summary['swaps']} refused {summary['refused']}")
    met = {
        "median_d_ref_result": overall["median_d_ref_result"] is not None
        and overall["median_d_ref_result"] <= TARGET_MEDIAN_DISTANCE,
        "every_swap_recognised": overall["max_d_ref_result"] is not None and overall["max_d_ref_result"] < SAME_PERSON,
        "outside_unchanged": overall["outside_max_abs_diff"] == 0
        and figures["many_faces_on_group"]["outside_max_abs_diff"] == 0,
        "swap_ms": timings["handler_swap_all_options_ms"] <= TARGET_MS,
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items())
          + f" (over the {overall['swaps']} swaps done; {overall['refused']} pairs refused: {overall['refusals']})")
    print(json.dumps({
        "bench": "faceswap",
        "image": "512x512",
        "runs": runs,
        "load_1min": round(os.getloadavg()[0], 2),
        **timings,
        "quality": figures,
        "targets": {"median_d_ref_result_max": TARGET_MEDIAN_DISTANCE, "every_swap_under": SAME_PERSON,
                    "outside_max_abs_diff": 0, "swap_ms": TARGET_MS},
        "targets_met": met,
        "target_ms": TARGET_MS,
        "target_met": timings["handler_swap_all_options_ms"] <= TARGET_MS,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
