"""Part 1 of bench/scaleout.py: kill-and-resume runs through the whole local stack.

Two gateways on one Redis with ``GATEWAY_LEASE_SECONDS`` of the lease given, the real
generator, swapper, S3 and the RunPod emulator with the real worker. Runs alternate between a
kill during denoising (a two-image prompt job) and a kill while the RunPod job is in flight (a
template job whose /status answers come 3 s late). Each run SIGKILLs the gateway holding the
job, follows the job on the other gateway from the last event seen, then restarts the killed
one for the next run.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from facegen.v1 import gateway_pb2
from services.stack.launcher import LocalStack
from services.stack.samples import reference_face, template_photo
from tests.cluster import Cluster, check, kill_holder_and_follow, until


def failover_runs(run_dir: Path, runs: int, lease_s: float) -> dict[str, float]:
    """Figures of ``runs`` kill-and-resume runs (see the module docstring)."""
    extra = {"GATEWAY_LEASE_SECONDS": str(lease_s), "FACE_SWAP_DEADLINE_SECONDS": "60"}
    face, template = reference_face(), template_photo()
    failovers: list[float] = []
    duplicates = bad_sequences = failed = 0
    with LocalStack(run_dir, gateways=2, extra_env=extra) as stack:
        cluster = Cluster(stack)
        for number in range(runs):
            in_runpod = number % 2 == 1
            before = cluster.runs()
            if in_runpod:
                cluster.faults(latency_ms=3000, routes=["status"])
                request = gateway_pb2.JobRequest(prompt="p", reference_image=face, target_image=template)
                images = 1
                phase = "the RunPod job in flight"
            else:
                request = gateway_pb2.JobRequest(prompt="portrait photo", reference_image=face, num_images=2,
                                                 steps=50, width=512, height=512, seed=number)
                images = 2
                phase = "denoising"
            try:
                submitted = cluster.stub(cluster.names[number % 2]).Submit(request, timeout=60)
                watcher = cluster.stub(cluster.names[(number + 1) % 2])
                seen = until(watcher.Watch(gateway_pb2.WatchRequest(job_id=submitted.job_id), timeout=120),
                             (lambda event: bool(event.remote.remote_job_id)) if in_runpod
                             else (lambda event: event.denoise.step >= 3))
                events, _survivor, failover = kill_holder_and_follow(cluster, submitted.job_id, seen)
            finally:
                if in_runpod:
                    cluster.faults(latency_ms=0, routes=[])
            failovers.append(failover)
            extra_runs = cluster.runs() - before - images
            duplicates += max(0, extra_runs)
            try:
                result = check(events)
            except AssertionError:
                bad_sequences += 1
                continue
            failed += result.state != gateway_pb2.JOB_STATE_COMPLETED
            print(f"run {number + 1:2d} (kill during {phase}): next event {failover:.2f} s after the SIGKILL, "
                  f"{len(events)} events, /run beyond one per image: {extra_runs}, "
                  f"{gateway_pb2.JobState.Name(result.state)}", flush=True)
            time.sleep(0.2)
    figures = {
        "failover_p50_s": round(statistics.median(failovers), 2),
        "failover_max_s": round(max(failovers), 2),
        "kill_runs": runs,
        "duplicate_remote_submissions": duplicates,
        "lost_or_duplicated_events": bad_sequences,
        "kill_runs_not_completed": failed,
    }
    print(f"{runs} kill-and-resume runs, lease {lease_s:g} s: failover median {figures['failover_p50_s']} s, "
          f"max {figures['failover_max_s']} s; duplicate /run {duplicates}; runs with lost or duplicated "
          f"events {bad_sequences}; runs that did not complete {failed}")
    return figures
