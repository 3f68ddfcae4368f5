"""Who is in a face: dlib's face descriptor, shared by the worker's quality metric and the swapper's identity check.

Two faces whose 128-d descriptors lie less than :data:`SAME_PERSON` apart are the same person by
dlib's own threshold (99.38 % on LFW). ``services.identity.descriptor`` computes descriptors (dlib,
numpy and the models of ``face-recognition-models``: the ``identity`` extra, and the worker's
``requirements-quality.txt``); this module needs nothing beyond the standard library, so the
swapper can read the threshold and compare descriptors without those installed.

It imports nothing from ``services.common``: the worker's environment imports it too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

SAME_PERSON = 0.6  # dlib's threshold on the descriptor distance


def descriptor_distance(a: Iterable[float], b: Iterable[float]) -> float:
    """Euclidean distance between two descriptors; under :data:`SAME_PERSON` is the same person."""
    return math.dist([float(x) for x in a], [float(x) for x in b])
