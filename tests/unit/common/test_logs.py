"""One log line per event, as text or JSON, tagged with the job (and trace) and never carrying a control character."""

import asyncio
import json
import logging

import pytest

from services.common import logs

pytestmark = pytest.mark.unit

# What a client can put into a job id, a key or a message that ends up quoted in a log line.
HOSTILE = "a\rb\nc\x1b[31mred\x00nul\x7fdel\x85nel\u2028ls\u202eevil\U000e0041tag"


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_lines_carry_the_job_id_into_tasks_and_threads(capsys) -> None:
    logs.configure("testsvc")
    log = logging.getLogger("facegen.test")

    def in_thread() -> None:
        logs.event(log, "thread.work", note="two words")

    with logs.job_context("job-123"):
        await asyncio.create_task(asyncio.to_thread(in_thread))
        try:
            raise ValueError("line one\nline two")
        except ValueError as exc:
            logs.event(log, "failed", logging.ERROR, exc_info=exc)
    logs.event(log, "outside")

    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert "INFO testsvc job=job-123 event=thread.work note=\"two words\"" in lines[0]
    assert "ERROR testsvc job=job-123 event=failed | Traceback" in lines[1] and "line two" in lines[1]
    assert "job=- event=outside" in lines[2]


def test_json_lines_hold_the_frame_and_the_fields(capsys) -> None:
    logs.configure("testsvc", "DEBUG", "json")
    log = logging.getLogger("facegen.test")
    with logs.job_context("job-7"):
        logs.event(log, "swap.result", logging.DEBUG, key="results/job-7/0.png", elapsed_ms=12, swapped=True)
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            logs.event(log, "job.internal_error", logging.ERROR, incident="3f2a9c01b7de", exc_info=exc)
    logging.getLogger("grpc.aio").warning("a library's own line: %s", "details")

    first, second, third = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["time"].endswith("Z")
    assert {k: first[k] for k in ("level", "service", "event", "job_id", "key", "elapsed_ms", "swapped")} == {
        "level": "debug", "service": "testsvc", "event": "swap.result", "job_id": "job-7",
        "key": "results/job-7/0.png", "elapsed_ms": 12, "swapped": True}
    assert "trace_id" not in first, "no span is current: no trace id"
    assert second["event"] == "job.internal_error" and second["incident"] == "3f2a9c01b7de"
    assert "RuntimeError: boom" in second["exception"]
    assert third["event"] == "log" and third["logger"] == "grpc.aio"
    assert third["message"] == "a library's own line: details" and "job_id" not in third


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_control_character_reaches_the_output_in_any_format(capsys, fmt: str) -> None:
    logs.configure("testsvc", "INFO", fmt)  # type: ignore[arg-type]
    log = logging.getLogger("facegen.test")
    with logs.job_context(HOSTILE):
        logs.event(log, "job.rejected", reason=HOSTILE)
        try:
            raise ValueError(HOSTILE)
        except ValueError as exc:
            logs.event(log, "rpc.internal_error", logging.ERROR, exc_info=exc)
    logging.getLogger("some.library").warning("quoting %s", HOSTILE)

    output = capsys.readouterr().out
    lines = output.splitlines()
    assert len(lines) == 3 and output.count("\n") == 3, "one line per record, whatever the values hold"
    for line in lines:
        bad = sorted({f"U+{ord(ch):04X}" for ch in line if not ch.isprintable()})
        assert not bad, f"{fmt}: unescaped {bad} in {line!r}"
    if fmt == "json":
        # The escapes are JSON's: each line parses back to exactly what was logged.
        first = json.loads(lines[0])
        assert first["reason"] == HOSTILE and first["job_id"] == HOSTILE
        assert HOSTILE in json.loads(lines[1])["exception"]
    else:
        assert "\\x1b[31mred\\x00nul\\x7fdel\\x85nel\\u2028ls\\u202eevil\\U000e0041tag" in lines[0]


def test_lines_carry_the_current_trace_and_span(capsys) -> None:
    logs.set_trace_source(lambda: ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
    try:
        for fmt in ("text", "json"):
            logs.configure("testsvc", "INFO", fmt)  # type: ignore[arg-type]
            logs.event(logging.getLogger("facegen.test"), "traced")
    finally:
        logs.set_trace_source(lambda: None)
    text, data = capsys.readouterr().out.splitlines()
    assert "job=- trace=4bf92f3577b34da6a3ce929d0e0e4736/00f067aa0ba902b7 event=traced" in text
    entry = json.loads(data)
    assert (entry["trace_id"], entry["span_id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


def test_escape_leaves_printable_text_alone_and_writes_every_control_as_an_escape() -> None:
    assert logs.escape("café: 50% done — ok") == "café: 50% done — ok"
    assert logs.escape("a\r\n\x1b") == "a\\x0d\\x0a\\x1b"
    assert logs.escape("\u2028\U000e0041", as_json=True) == "\\u2028\\udb40\\udc41"
    assert json.loads('"' + logs.escape("\u2028\U000e0041", as_json=True) + '"') == "\u2028\U000e0041"
