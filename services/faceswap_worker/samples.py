"""Portrait photos shipped inside installed packages (public domain or CC0), the quality test faces, and a CLI.

    python -m services.faceswap_worker.samples OUT_DIR   # writes astronaut.png and grace_hopper.jpg
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def astronaut_png() -> bytes:
    """scikit-image's astronaut (Eileen Collins, NASA; public domain) as PNG bytes, 512×512."""
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    return buf.getvalue()


def grace_hopper_jpg() -> bytes:
    """matplotlib's grace_hopper.jpg sample (US Navy; public domain) as its original JPEG bytes, 512×600."""
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return Path(str(path)).read_bytes()


def astronaut() -> np.ndarray:
    """The astronaut as an RGB uint8 array."""
    return np.asarray(Image.open(io.BytesIO(astronaut_png())).convert("RGB"))


def grace_hopper() -> np.ndarray:
    """Grace Hopper as an RGB uint8 array."""
    return np.asarray(Image.open(io.BytesIO(grace_hopper_jpg())).convert("RGB"))


def cameraman() -> np.ndarray:
    """scikit-image's ``camera`` (a man filming, in profile; CC0, Lav Varshney) as RGB, 512×512, grey."""
    from skimage import data

    return np.ascontiguousarray(np.repeat(data.camera()[..., None], 3, axis=2))


@dataclass(frozen=True)
class FacePhoto:
    """A photo for the quality benchmark and tests: whose face it shows and what makes it hard."""

    name: str
    person: str  # who the largest face is; pairs of one person are not swaps worth measuring
    image: np.ndarray
    about: str


def _on_canvas(size: tuple[int, int], parts: list[tuple[np.ndarray, float, tuple[int, int]]]) -> np.ndarray:
    """A grey (h, w) canvas with each (image, scale, (x, y)) pasted, scaled with area averaging."""
    canvas = np.full((*size, 3), 150, np.uint8)
    for image, scale, (x, y) in parts:
        h, w = image.shape[:2]
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    return canvas


def side_lit(image: np.ndarray) -> np.ndarray:
    """The photo lit from the left: brightness falls from 115 % to 55 % across it (uneven light at the seam)."""
    ramp = np.linspace(1.15, 0.55, image.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(image.astype(np.float32) * ramp + 0.5, 0, 255).astype(np.uint8)


def tilted(image: np.ndarray, degrees: float) -> np.ndarray:
    """The photo turned ``degrees`` about its centre (a head tilted sideways), edges replicated."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def quality_faces() -> list[FacePhoto]:
    """The quality benchmark's photos: three people, frontal, profile, glasses, a small face, uneven
    light, a tilted head, a group.

    Every photo comes from a package the worker's environment installs (see docs/faceswap_worker.md,
    "Test faces", for sources and licences); the small face, the side light, the tilt and the group
    are made here from them.
    """
    collins, hopper, camera = astronaut(), grace_hopper(), cameraman()
    return [
        FacePhoto("collins", "collins", collins, "frontal, smiling with teeth, 512x512, face ~100 px"),
        FacePhoto("hopper", "hopper", hopper, "frontal, glasses, 512x600, face ~200 px"),
        FacePhoto("cameraman", "cameraman", camera, "profile (dlib's frontal detector misses it), grey, face ~75 px"),
        FacePhoto("collins_small", "collins", _on_canvas((512, 512), [(collins, 0.4, (150, 160))]),
                 "small face, ~40 px across, in a 512x512 image"),
        FacePhoto("collins_side_lit", "collins", side_lit(collins), "lit from the left: 115 % to 55 % across"),
        FacePhoto("hopper_tilted", "hopper", tilted(hopper, 18.0), "head tilted 18°"),
        FacePhoto("group", "hopper", _on_canvas((600, 1024), [
            (hopper, 1.0, (0, 0)), (collins, 0.9, (540, 20)), (camera[60:300, 140:380], 0.75, (560, 400)),
        ]), "several faces: Hopper (largest, ~200 px), Collins (~95 px), the cameraman in profile (~55 px)"),
    ]


def main(argv: list[str]) -> int:
    """Write astronaut.png and grace_hopper.jpg into the given folder."""
    if len(argv) != 1:
        print("usage: python -m services.faceswap_worker.samples OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "astronaut.png").write_bytes(astronaut_png())
    (out / "grace_hopper.jpg").write_bytes(grace_hopper_jpg())
    print(f"wrote {out / 'astronaut.png'} and {out / 'grace_hopper.jpg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
