"""The one image-limit table of the whole system.

Every service that accepts an image takes its limits from here: the gateway
(a caller's reference and target photos), the swapper (the images it stores
and sends to a face-swap worker, and the results it gets back) and the
face-swap worker (the images it downloads). Each stage accepts at least what
the stage before can pass on (the same sides and pixel counts, at least as
many bytes), so the gateway refuses at ``Submit`` whatever a later
stage would refuse, instead of a job paying for generation and then falling
back. Width and height are checked from the image header, before decoding.

Why a module with no imports beyond the standard library: the worker runs in
its own environment (mediapipe pins protobuf < 5; no gRPC), and its container
image copies only its own package, this file and ``config.py`` (the settings
base, pydantic-settings only), so it imports them without pulling in
anything else of ``services.common`` (whose ``__init__`` must stay
import-free for that reason). A Python module rather than a data file: typed, checked by mypy,
and read without a parser in either environment.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024

# The worker's face detector has nothing to work with below this.
MIN_SIDE = 16
MAX_SIDE = 10_000
MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ImageLimits:
    """Size limits for one kind of image."""

    max_bytes: int = 10 * MiB
    max_pixels: int = MAX_PIXELS
    max_side: int = MAX_SIDE
    min_side: int = MIN_SIDE


# What a caller may send the gateway (reference and target photos).
CALLER_PHOTO = ImageLimits(max_bytes=10 * MiB)
# What the swapper accepts and stores and a worker downloads: a caller's photo once re-encoded
# without metadata (re-encoding can make it bigger), or a generated image (a 2048x2048 PNG of
# noise is ~12.6 MB).
STORED_IMAGE = ImageLimits(max_bytes=20 * MiB)
# What the swapper accepts back from a worker: the target photo with a face swapped in
# (any endpoint's, so no minimum beyond one pixel: nothing downstream needs one).
SWAP_RESULT = ImageLimits(max_bytes=25 * MiB, min_side=1)
