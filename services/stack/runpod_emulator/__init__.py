"""A RunPod Serverless emulator: the queue API on loopback, for the local stack and the tests.

Two ways to run jobs: the real face-swap handler in worker processes (``WorkerPool``,
in the worker's environment: the local stack and e2e), or scripted timelines in
this process (the default, for the swapper's tests and benchmark). Faults are
injected per route (``Endpoint.script`` with a ``Fault``) or through live settings
(``Faults``: latency, failure/hang/crash/unchanged rates, 5xx/429 and malformed
bursts). ``python -m services.stack.runpod_emulator`` serves it from a process of its
own, with an HTTP admin API; see docs/runpod_emulator.md.

Imports only the standard library, FastAPI/uvicorn, pydantic and Pillow: it runs in
both environments.
"""

from services.stack.runpod_emulator.emulator import RunPodEmulator
from services.stack.runpod_emulator.endpoint import Endpoint, Limits
from services.stack.runpod_emulator.faults import Fault, Faults
from services.stack.runpod_emulator.jobs import DEFAULT, Job, JobPlan, cycle_plans
from services.stack.runpod_emulator.registry import Recorded
from services.stack.runpod_emulator.scripted import png_bytes
from services.stack.runpod_emulator.workers import WorkerPool

__all__ = ["DEFAULT", "Endpoint", "Fault", "Faults", "Job", "JobPlan", "Limits", "Recorded", "RunPodEmulator",
           "WorkerPool", "cycle_plans", "png_bytes"]
