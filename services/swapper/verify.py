"""What a remote result must pass before the swapper calls it swapped (``FACE_SWAP_VERIFY``).

An endpoint's ``COMPLETED`` says that its job ran, not that a face was swapped. After the result
is decoded and checked as an image (``results.py``):

1. *unchanged* (the default; no model, about a millisecond): when the result is the target the
   swapper sent, within re-encoding noise (``unchanged.py``), the image falls back with
   ``SWAP_UNCHANGED``;
2. *identity* (``FACE_SWAP_VERIFY=identity``, the ``identity`` extra): when dlib does not recognise
   the reference person in the result (distance over ``FACE_SWAP_IDENTITY_THRESHOLD``), it falls
   back with ``SWAP_NOT_LIKE_REFERENCE``. The distance is reported on the result whenever it was
   measured, swapped or not.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

from services.common import logs
from services.swapper.blocking import BlockingPool, CallScope
from services.swapper.fallback import SWAP_NOT_LIKE_REFERENCE, SWAP_UNCHANGED, SwapFallback
from services.swapper.identity import IdentityCheck
from services.swapper.inputs import CheckedImage
from services.swapper.jobs import SwapSuccess
from services.swapper.settings import ResultCheckSettings
from services.swapper.unchanged import compare

log = logging.getLogger(__name__)


class ResultChecks:
    """The checks ``settings`` asks for; ``identity`` is the identity check's processes when it runs."""

    def __init__(self, settings: ResultCheckSettings, pool: BlockingPool, identity: IdentityCheck | None = None,
                 ) -> None:
        if settings.identity and identity is None:
            raise ValueError("FACE_SWAP_VERIFY=identity needs an IdentityCheck")
        self.settings = settings
        self.pool = pool
        self.identity = identity

    @property
    def wants_fingerprint(self) -> bool:
        """Whether the targets of remote swaps need their fingerprint (the unchanged check runs)."""
        return self.settings.unchanged

    async def verify(self, target: CheckedImage, success: SwapSuccess, reference_key: str,
                     load_reference: Callable[[], Awaitable[bytes | None]], time_left_s: float,
                     scope: CallScope) -> SwapSuccess:
        """``success`` (with the identity distance when it was measured); SwapFallback when a check fails."""
        region = None
        if self.settings.unchanged and target.fingerprint is not None and success.fingerprint is not None:
            change = await scope.run(self.pool, compare, target.fingerprint, success.fingerprint)
            if change.unchanged:
                logs.event(log, "swap.unchanged", logging.WARNING, remote_id=success.job_id,
                           endpoint=success.endpoint, changed=change.changed)
                raise SwapFallback(SWAP_UNCHANGED, "the endpoint reported success, but its result is the target "
                                   "unchanged (it differs nowhere beyond re-encoding noise): no face was swapped")
            if not change.comparable:
                logs.event(log, "swap.not_compared", remote_id=success.job_id, result_size=(
                    f"{success.info.width}x{success.info.height}"), target_size=(
                    f"{target.info.width}x{target.info.height}"))
            region = change.region
        if self.identity is None:
            return success
        identity = await self.identity.measure(reference_key, load_reference, success.data, region, time_left_s)
        if identity.distance is None:
            logs.event(log, "swap.identity_unmeasured", logging.WARNING, remote_id=success.job_id,
                       reason=identity.why_not)
            return success
        distance, threshold = identity.distance, self.settings.identity_threshold
        logs.event(log, "swap.identity", remote_id=success.job_id, distance=f"{distance:.3f}",
                   threshold=f"{threshold:g}")
        if distance > threshold:
            raise SwapFallback(SWAP_NOT_LIKE_REFERENCE,
                               f"the face in the result is not recognised as the reference person: face-descriptor "
                               f"distance {distance:.2f}, over the threshold {threshold:.2f} "
                               "(FACE_SWAP_IDENTITY_THRESHOLD)", identity_distance=distance)
        return dataclasses.replace(success, identity_distance=distance)
