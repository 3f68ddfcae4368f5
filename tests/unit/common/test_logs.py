"""One log line per event, tagged with the job id."""

import asyncio
import logging

import pytest

from services.common import logs

pytestmark = pytest.mark.unit


async def test_lines_carry_the_job_id_into_tasks_and_threads(capsys) -> None:
    logs.configure("testsvc")
    log = logging.getLogger("facegen.test")

    def in_thread() -> None:
        logs.event(log, "thread.work", note="two words")

    with logs.job_context("job-123"):
        await asyncio.create_task(asyncio.to_thread(in_thread))
        try:
            raise ValueError("line one\nline two")
        except ValueError:
            log.exception("event=failed")
    logs.event(log, "outside")

    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert "testsvc job=job-123 event=thread.work note=\"two words\"" in lines[0]
    assert "job=job-123 event=failed" in lines[1] and "line two" in lines[1]
    assert "job=- event=outside" in lines[2]
