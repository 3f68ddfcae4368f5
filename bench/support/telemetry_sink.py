"""What a gateway's telemetry goes to in a benchmark, in a process of its own: an OTLP trace receiver
(tests/otlp_receiver.py) and a scraper that reads ``/metrics`` once a second, as Prometheus would.

Its own process, so that receiving spans and scraping costs nothing in the
benchmark's event loop (the machine's cores are shared all the same: the
benchmark reports this process's CPU time). The protocol on stdin/stdout:
the first line it prints is the OTLP endpoint; each ``report`` line read gets
one JSON line back (``TelemetrySink.report``); end of input stops it.

Run: ``python -m bench.support.telemetry_sink http://127.0.0.1:PORT/metrics``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.otlp_receiver import OtlpReceiver

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_EVERY_S = 1.0
JOB_SPAN = "facegen.job"
JOBS_FINISHED = "facegen_gateway_jobs_finished_total"


class Scraper:
    """GET ``url`` every SCRAPE_EVERY_S on a thread; keeps how long each scrape took and what failed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seconds: list[float] = []
        self.failures = 0  # after the first success (before it, the gateway may not be up yet)
        self.last_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scraper", daemon=True)

    def start(self) -> None:
        """Starts scraping."""
        self._thread.start()

    def stop(self) -> None:
        """Stops after the scrape in progress."""
        self._stop.set()
        self._thread.join(5)

    def scrape(self) -> str:
        """One GET of the endpoint: its text."""
        with urllib.request.urlopen(self.url, timeout=5) as reply:
            return str(reply.read().decode())

    def _loop(self) -> None:
        while not self._stop.wait(SCRAPE_EVERY_S):
            started = time.perf_counter()
            try:
                text = self.scrape()
            except OSError:
                self.failures += bool(self.seconds)
                continue
            self.seconds.append(time.perf_counter() - started)
            self.last_bytes = len(text)


def jobs_finished(text: str) -> float:
    """The sum of the gateway's finished-jobs counter over its labels, in one scrape's text."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == JOBS_FINISHED)


def report(receiver: OtlpReceiver, scraper: Scraper) -> dict[str, Any]:
    """What arrived so far: spans, traces, job spans, scrapes (and a scrape made now, for the job count)."""
    spans = receiver.snapshot()
    try:
        finished: float | None = jobs_finished(scraper.scrape())
    except OSError:
        finished = None
    scrape_ms = [seconds * 1000 for seconds in scraper.seconds]
    return {
        "spans": len(spans),
        "traces": len({span.trace_id for span in spans}),
        "job_spans": sum(span.name == JOB_SPAN for span in spans),
        "traces_with_a_job_span": len({span.trace_id for span in spans if span.name == JOB_SPAN}),
        "spans_by_name": dict(Counter(span.name for span in spans)),
        "export_requests": receiver.requests,
        "scrapes": len(scrape_ms),
        "scrape_failures": scraper.failures,
        "scrape_ms_p50": round(statistics.median(scrape_ms), 2) if scrape_ms else None,
        "scrape_ms_max": round(max(scrape_ms), 2) if scrape_ms else None,
        "scrape_bytes": scraper.last_bytes,
        "jobs_finished_scraped": finished,
    }


def main(metrics_url: str) -> None:
    """Serves and scrapes until stdin ends, answering each ``report`` line."""
    with OtlpReceiver() as receiver:
        scraper = Scraper(metrics_url)
        scraper.start()
        print(receiver.endpoint, flush=True)
        try:
            for line in sys.stdin:
                if line.strip() == "report":
                    print(json.dumps(report(receiver, scraper)), flush=True)
        finally:
            scraper.stop()


class TelemetrySink:
    """The sink as a child process of an asyncio benchmark."""

    def __init__(self, metrics_url: str) -> None:
        self.metrics_url = metrics_url
        self.endpoint = ""
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, env: dict[str, str]) -> TelemetrySink:
        """Starts the process; returns once its receiver listens."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.support.telemetry_sink", self.metrics_url, cwd=ROOT, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        self.endpoint = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode().strip()
        if not self.endpoint.startswith("http://"):
            raise RuntimeError(f"the telemetry sink did not start (it said {self.endpoint!r})")
        return self

    async def report(self) -> dict[str, Any]:
        """What the sink has received and scraped so far."""
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"report\n")
        await self.process.stdin.drain()
        result: dict[str, Any] = json.loads(await asyncio.wait_for(self.process.stdout.readline(), 30))
        return result

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process is not None
        return int(self.process.pid)

    async def close(self) -> None:
        """Ends its input and waits for it to stop (kills it if it does not)."""
        if self.process is None or self.process.returncode is not None:
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics_url", help="the /metrics URL to scrape")
    main(parser.parse_args().metrics_url)
