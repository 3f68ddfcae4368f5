"""Real portraits for the swapper's result checks, and a stand-in swap: one face pasted over another.

The photos are the stack's samples (``services/stack/samples.py``: the astronaut, Grace Hopper).
``pasted_face`` blends Hopper's face into a box through a feathered oval, as a worker blends a
swapped face: the pixels change inside the face only, and dlib recognises Hopper in the result.
"""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageDraw, ImageFilter

from services.stack.samples import reference_face, template_photo

# The astronaut's face in scikit-image's 512×512 photo (left, top, right, bottom), and Hopper's in hers.
ASTRONAUT_FACE = (170, 60, 300, 230)
HOPPER_FACE = (170, 120, 380, 345)


def decode(data: bytes) -> Image.Image:
    """The picture in ``data``, as RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """``image`` as ``fmt`` bytes (Pillow's save options)."""
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@functools.cache
def astronaut() -> Image.Image:
    """The astronaut (Eileen Collins), 512×512."""
    return decode(template_photo())


@functools.cache
def hopper() -> Image.Image:
    """Grace Hopper, 512×600."""
    return decode(reference_face())


def pasted_face(target: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``target`` with Hopper's face pasted into ``box``, blended through a feathered oval."""
    left, top, right, bottom = box
    size = (right - left, bottom - top)
    face = hopper().crop(HOPPER_FACE).resize(size, Image.Resampling.LANCZOS)
    mask = Image.new("L", size, 0)
    inset = max(1, size[0] // 10)
    ImageDraw.Draw(mask).ellipse((inset, inset, size[0] - inset, size[1] - inset), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(max(1, size[0] // 20)))
    result = target.copy()
    result.paste(face, (left, top), mask)
    return result
