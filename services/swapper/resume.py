"""Resumable swaps: the RunPod job of one (job id, image index) is submitted once, whoever calls.

A gateway may die while its Swap call is in flight; another gateway then
calls Swap again for the same job and image. Before anything is submitted,
the call reads the swap's record in Redis (``records.py``) and decides:
follow the remote job an earlier call submitted; wait briefly while another
call's ``/run`` is in flight; or claim the submission for itself. A job
whose submission's outcome is unknown is never submitted again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.common import logs
from services.common.errors import Unavailable
from services.swapper.endpoints import Endpoint
from services.swapper.fallback import CANCELLED, ENDPOINT_UNAVAILABLE, SwapFallback
from services.swapper.records import CANCELLED as CANCELLED_STATE
from services.swapper.records import SwapRecord, SwapRecords
from services.swapper.remote import RemoteSwapper

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submit:
    """This call claimed the submission: send ``/run``."""


Decision = Submit | tuple[Endpoint, str] | SwapFallback


class Resumable:
    """One resumable swap's record; also the journal its submission writes to."""

    def __init__(self, records: SwapRecords, job_id: str, index: int, budget_s: float,
                 record: SwapRecord | None) -> None:
        self.records = records
        self.job_id = job_id
        self.index = index
        self.budget_s = budget_s
        self.record = record

    @classmethod
    async def load(cls, records: SwapRecords, job_id: str, index: int, budget_s: float) -> Resumable:
        """Reads the record (Unavailable while Redis is down: nothing has been done yet)."""
        return cls(records, job_id, index, budget_s, await records.read(job_id, index, budget_s))

    @property
    def stored_target(self) -> str:
        """The target key an earlier call stored, or ''."""
        return self.record.target_key if self.record is not None else ""

    async def note_target(self, key: str) -> None:
        """Records the stored target."""
        await self.records.note_target(self.job_id, self.index, key, self.budget_s)

    async def decide(self, remote: RemoteSwapper, wait_s: float) -> Decision:
        """Follow an earlier call's job, submit (the claim is taken), or fall back; never a second ``/run``."""
        record = self.record
        if record is None or not (record.state or record.remote_job_id):
            if await self.records.claim_submit(self.job_id, self.index, self.budget_s):
                return Submit()
            # Another call claimed it between our read and our claim: wait for its outcome.
            record = SwapRecord(state="submitting")
        if not record.remote_job_id and record.state != CANCELLED_STATE:
            logs.event(log, "swap.awaiting_submission", within_s=wait_s)
            record = await self.records.wait_for_job(self.job_id, self.index, wait_s) or record
        if record.state == CANCELLED_STATE:
            return SwapFallback(CANCELLED, "the swap was cancelled (CancelSwap)")
        if not record.remote_job_id:
            return SwapFallback(ENDPOINT_UNAVAILABLE, "the outcome of an earlier submission is unknown, "
                                "so it is not submitted again")
        endpoint = remote.endpoint(record.endpoint)
        if endpoint is None:
            return SwapFallback(ENDPOINT_UNAVAILABLE, f"the earlier submission went to endpoint "
                                f"{record.endpoint!r}, which is no longer configured")
        logs.event(log, "swap.resumed", endpoint=endpoint.id, remote_id=record.remote_job_id)
        return endpoint, record.remote_job_id

    async def submitted(self, endpoint: str, job_id: str) -> bool:
        """Records the accepted job (see ``jobs.Journal``); a Redis outage now is logged, not fatal."""
        try:
            return await self.records.submitted(self.job_id, self.index, endpoint, job_id, self.budget_s)
        except Unavailable as exc:
            logs.event(log, "swap.record_failed", logging.WARNING, remote_id=job_id, message=str(exc),
                       hint="a resumed call will not follow this job, and will not submit it again")
            return False

    async def forget(self) -> None:
        """The swap is finished: its record goes (a Redis outage leaves it to expire)."""
        try:
            await self.records.forget(self.job_id, self.index)
        except Unavailable as exc:
            logs.event(log, "swap.record_not_deleted", logging.WARNING, message=str(exc))
