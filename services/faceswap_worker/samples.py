"""Public-domain portrait photos shipped inside installed packages, and a CLI that writes them out.

    python -m services.faceswap_worker.samples OUT_DIR   # writes astronaut.png and grace_hopper.jpg
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

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
