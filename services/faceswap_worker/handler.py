"""The RunPod handler: ``handler(job)`` for ``runpod.serverless.start`` and for the local endpoint's workers.

Input contract (``job["input"]``):
- ``process_type``: ``single_image`` (or ``single-image``, the default), ``detect_faces``, ``multi_image``;
- ``source_file``, ``target_file``, ``image_file``: http(s) URLs or base64 data URIs;
- ``face_mappings``: ``{"face_0": source, "face_1": source, ...}`` (multi_image), face_i being the
  i-th face of the target in detect_faces order;
- ``options``: ``mouth_mask``, ``use_face_enhancer``, ``many_faces`` (booleans), ``data_uri``
  (overrides FACESWAP_RESULT_DATA_URI), ``colour_strength`` (0..1).
Success returns ``{"result": <base64 JPEG>, ...}``; a failure returns ``{"error": message}``, which the
RunPod SDK turns into status FAILED with that error.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import threading
import time
from typing import Any

import numpy as np

from services.faceswap_worker.engine import NoFaceError, SwapEngine, SwapOptions
from services.faceswap_worker.inputs import InputError, encode_jpeg, load_image
from services.faceswap_worker.settings import WorkerSettings

log = logging.getLogger("faceswap_worker.handler")

SWAP_TYPES = ("single_image", "single-image")
DETECT_TYPES = ("detect_faces", "detect-faces")
MULTI_TYPES = ("multi_image", "multi-image")
_FACE_KEY = re.compile(r"^face_(\d+)$")


def _flag(options: dict[str, Any], name: str, default: bool = False) -> bool:
    value = options.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int | float):
        return bool(value)
    raise InputError(f"options.{name} must be a boolean")


class FaceSwapWorker:
    """Runs one job input at a time with a loaded engine."""

    def __init__(self, settings: WorkerSettings | None = None, engine: SwapEngine | None = None) -> None:
        self.settings = settings or WorkerSettings.from_env()
        self.engine = engine or build_engine(self.settings)

    def warm_up(self) -> None:
        """Run one whole swap so the first job does not pay for graph initialisation and first calls."""
        try:
            from services.faceswap_worker.samples import astronaut

            image = astronaut()
        except ImportError:  # sample packages missing in a slimmed image: warm the detector alone
            image = np.full((64, 64, 3), 128, np.uint8)
        # The grey stand-in has no face (NoFaceError); the detector graphs are initialised all the same.
        with contextlib.suppress(NoFaceError):
            self.engine.swap(image, image, SwapOptions(mouth_mask=True, use_face_enhancer=True))

    def run(self, job_input: Any) -> dict[str, Any]:
        """The handler's output for one job input: a success dict or ``{"error": message}``."""
        started = time.perf_counter()
        try:
            if not isinstance(job_input, dict):
                raise InputError("input must be a JSON object")
            process_type = str(job_input.get("process_type") or "single_image").strip().lower()
            raw_options = job_input.get("options") or {}
            if not isinstance(raw_options, dict):
                raise InputError("options must be a JSON object")
            # Some clients put the switches next to the files instead of under "options".
            options = {**{k: v for k, v in job_input.items() if k in _OPTION_KEYS}, **raw_options}
            if process_type in SWAP_TYPES:
                out = self._single(job_input, options)
            elif process_type in DETECT_TYPES:
                out = self._detect(job_input)
            elif process_type in MULTI_TYPES:
                out = self._multi(job_input, options)
            else:
                allowed = ", ".join((*SWAP_TYPES, DETECT_TYPES[0], MULTI_TYPES[0]))
                raise InputError(f"unknown process_type {process_type!r} (allowed: {allowed})")
        except (InputError, NoFaceError) as exc:
            return {"error": str(exc)}
        except Exception:  # a bug or a broken model: say so plainly, keep the traceback in the log
            log.exception("handler failed")
            return {"error": "internal error in the face-swap worker"}
        out["timings_ms"] = {"total": round((time.perf_counter() - started) * 1000.0, 1)}
        return out

    def _swap_options(self, options: dict[str, Any]) -> SwapOptions:
        strength = options.get("colour_strength", self.settings.colour_strength)
        if not isinstance(strength, int | float) or isinstance(strength, bool) or not 0 <= strength <= 1:
            raise InputError("options.colour_strength must be a number between 0 and 1")
        return SwapOptions(
            mouth_mask=_flag(options, "mouth_mask"),
            use_face_enhancer=_flag(options, "use_face_enhancer"),
            many_faces=_flag(options, "many_faces"),
            colour_strength=float(strength),
        )

    def _result(self, image: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        encoded = base64.b64encode(encode_jpeg(image, self.settings.jpeg_quality)).decode("ascii")
        prefix = _flag(options, "data_uri", self.settings.result_data_uri)
        return {
            "result": f"data:image/jpeg;base64,{encoded}" if prefix else encoded,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "backend": self.engine.renderer.name,
        }

    def _single(self, job_input: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        swap_options = self._swap_options(options)
        source = load_image(job_input.get("source_file"), "source_file", self.settings)
        target = load_image(job_input.get("target_file"), "target_file", self.settings)
        result = self.engine.swap(source, target, swap_options)
        return {
            **self._result(result.image, options),
            "faces_swapped": result.faces_swapped,
            "target_faces": result.target_faces,
        }

    def _detect(self, job_input: dict[str, Any]) -> dict[str, Any]:
        field = "image_file" if job_input.get("image_file") is not None else "target_file"
        image = load_image(job_input.get(field), "image_file", self.settings)
        faces = self.engine.detector.detect(image)
        return {
            "faces": [{"index": i, **f.to_json()} for i, f in enumerate(faces)],
            "face_count": len(faces),
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
        }

    def _multi(self, job_input: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        swap_options = self._swap_options(options)
        mappings = job_input.get("face_mappings")
        if not isinstance(mappings, dict) or not mappings:
            raise InputError('face_mappings is required: {"face_0": source, "face_1": source, ...}')
        indexed: list[tuple[int, str, Any]] = []
        for key, value in mappings.items():
            match = _FACE_KEY.match(str(key))
            if not match:
                raise InputError(f"face_mappings key {key!r} is not of the form face_<n>")
            indexed.append((int(match.group(1)), str(key), value))
        target = load_image(job_input.get("target_file"), "target_file", self.settings)
        faces = self.engine.detector.detect(target)
        if not faces:
            raise NoFaceError("no face found in target image")
        pairs = []
        for index, key, value in sorted(indexed):
            if index >= len(faces):
                raise InputError(f"face_mappings names {key} but the target image has {len(faces)} face(s)")
            if faces[index].mesh is None:
                raise NoFaceError(f"{key} of the target image has no usable landmarks")
            source = load_image(value, f"face_mappings.{key}", self.settings)
            pairs.append((source, self.engine.source_face(source, f"face_mappings.{key}"), faces[index]))
        image = self.engine.paste_all(target, pairs, swap_options)
        return {**self._result(image, options), "faces_swapped": len(pairs), "target_faces": len(faces)}


_OPTION_KEYS = ("mouth_mask", "use_face_enhancer", "many_faces", "data_uri", "colour_strength")


def build_engine(settings: WorkerSettings) -> SwapEngine:
    """The engine FACESWAP_ENGINE chooses: classic, inswapper, or (auto) inswapper when its model is set."""
    from services.faceswap_worker.detect import FaceDetector

    if settings.engine == "inswapper" and not settings.inswapper_model:
        raise ValueError("FACESWAP_ENGINE=inswapper needs FACESWAP_INSWAPPER_MODEL and FACESWAP_ARCFACE_MODEL")
    detector = FaceDetector(max_faces=settings.max_faces)
    if settings.engine != "classic" and settings.inswapper_model:
        from services.faceswap_worker.inswapper import InswapperRenderer

        return SwapEngine(detector, InswapperRenderer(settings.inswapper_model, settings.arcface_model))
    return SwapEngine(detector)


_worker: FaceSwapWorker | None = None
_worker_lock = threading.Lock()


def get_worker() -> FaceSwapWorker:
    """The process-wide worker, built on first use."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = FaceSwapWorker()
        return _worker


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod serverless handler: ``job = {"id": ..., "input": {...}}``."""
    return get_worker().run(job.get("input"))


def main() -> None:
    """Start the RunPod serverless worker loop (the container's entry point)."""
    import runpod

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    get_worker().warm_up()
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
