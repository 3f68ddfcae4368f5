"""Did the endpoint change the target at all? A check of a swap result that needs no model.

A face swap changes one compact region of the target (a face) and leaves the rest as it was. An
endpoint that found nothing to do may return the target itself and call it a success, often
re-encoded (a JPEG of a PNG, another JPEG quality). Re-encoding moves pixels by a few levels,
mostly inside 8×8 blocks and at edges; a swapped face moves them by tens of levels over the face.

So each image is reduced to a *fingerprint*: the mean of every f×f block of pixels, with f at least
4 and large enough that the fingerprint's longest side is at most 512. Averaging 4×4 pixels takes
re-encoding noise below a few levels (JPEG quality 30 of a photo included), while a 40 px face
still covers a 10×10 patch. The result differs from the target where the largest channel
difference of the two fingerprints, averaged over 3×3, exceeds :data:`NOISE_LEVELS`; it is
*unchanged* when fewer than :data:`MIN_CHANGED` fingerprint pixels do. Figures and limits are in
docs/swapper.md ("Checking a result").

The fingerprints are made from pictures that are decoded anyway (the target's check when it
arrives, the result's check when it comes back), so the comparison itself handles at most
512×512 pixels. Pillow only: the default swapper image has no numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageFilter

MIN_FACTOR = 4
MAX_SIDE = 1024
# Change per channel, after averaging, that re-encoding does not reach (measured up to 3 levels).
NOISE_LEVELS = 16
# Fingerprint pixels that must change: a 40 px face swapped in a 512 px photo changes 31-43.
MIN_CHANGED = 8
# Aspect ratios further apart than this are different pictures, not one rescaled.
_ASPECT_TOLERANCE = 0.02
_OVER_NOISE = [255 if level > NOISE_LEVELS else 0 for level in range(256)]


@dataclass(frozen=True)
class Fingerprint:
    """A picture reduced to the mean of every ``factor``×``factor`` block (RGB), and its own size."""

    image: Image.Image
    factor: int
    width: int
    height: int


@dataclass(frozen=True)
class Change:
    """How a result differs from its target."""

    # Fingerprint pixels that differ beyond re-encoding noise.
    changed: int
    # Where, in the target's pixels (left, top, right, bottom); None when nothing did.
    region: tuple[int, int, int, int] | None
    # False when the two pictures cannot be compared (another aspect ratio): nothing is claimed.
    comparable: bool = True

    @property
    def unchanged(self) -> bool:
        """True when the result is the target, within re-encoding noise."""
        return self.comparable and self.changed < MIN_CHANGED


def fingerprint(image: Image.Image) -> Fingerprint:
    """The fingerprint of a decoded picture (any mode; alpha is dropped)."""
    width, height = image.size
    factor = max(MIN_FACTOR, math.ceil(max(width, height) / MAX_SIDE))
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    small = image.reduce(factor)
    return Fingerprint(small if small.mode == "RGB" else small.convert("RGB"), factor, width, height)


def compare(target: Fingerprint, result: Fingerprint) -> Change:
    """Where ``result`` differs from ``target`` beyond re-encoding noise (a millisecond on a 1024² photo)."""
    reference, other = target.image, result.image
    if reference.size != other.size:
        # A result of another size (rescaled by the endpoint) is compared at the coarser fingerprint's size.
        if abs((result.width / result.height) / (target.width / target.height) - 1) > _ASPECT_TOLERANCE:
            return Change(changed=0, region=None, comparable=False)
        size = min(reference.size, other.size, key=lambda side: side[0] * side[1])
        reference = reference.resize(size, Image.Resampling.BOX)
        other = other.resize(size, Image.Resampling.BOX)
    red, green, blue = ImageChops.difference(reference, other).split()
    largest = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    over = largest.filter(ImageFilter.BoxBlur(1)).point(_OVER_NOISE)
    changed = over.histogram()[255]
    box = over.getbbox()
    if box is None:
        return Change(changed=changed, region=None)
    scale_x, scale_y = target.width / reference.width, target.height / reference.height
    left, top, right, bottom = box
    region = (int(left * scale_x), int(top * scale_y), min(target.width, math.ceil(right * scale_x)),
              min(target.height, math.ceil(bottom * scale_y)))
    return Change(changed=changed, region=region)
