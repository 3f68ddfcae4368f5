"""Public-domain sample portraits shipped inside installed packages (the ``local`` extra).

- Grace Hopper (matplotlib's ``grace_hopper.jpg`` sample), used as the reference face;
- Eileen Collins (scikit-image's ``astronaut``), used as the template photo.

The demo, the tests and the swapper's doctor use them; no service image ships
them. ``python -m services.stack.samples DIR`` writes both into DIR.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image


def reference_face() -> bytes:
    """JPEG bytes of the Grace Hopper portrait."""
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return Path(str(path)).read_bytes()


def template_photo() -> bytes:
    """PNG bytes of the astronaut portrait (512×512)."""
    from skimage import data

    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, "PNG")
    return out.getvalue()


def write_samples(directory: Path) -> tuple[Path, Path]:
    """Writes both photos into ``directory``; returns (reference, template) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    reference = directory / "grace_hopper.jpg"
    template = directory / "astronaut.png"
    reference.write_bytes(reference_face())
    template.write_bytes(template_photo())
    return reference, template


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m services.stack.samples DIR")
    for path in write_samples(Path(sys.argv[1])):
        print(path)
