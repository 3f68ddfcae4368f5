"""A local stack with several gateways on one Redis, seen the way the scale-out tests and
benchmark need it: a stub per gateway, who holds a job's lease, the RunPod emulator's request
counts and faults, and a SIGKILL of a job's holder with the job followed on a survivor."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import grpc
import redis
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facegen.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.config import MAX_MESSAGE_BYTES
from services.common.server import message_size_options
from services.stack.launcher import ENDPOINT_ID, LocalStack

TERMINAL = gateway_pb2.STAGE_TERMINAL
Events = list[gateway_pb2.JobEvent]


class Cluster:
    """The scale-out stack, with a stub per gateway and access to Redis and the endpoint's counters."""

    def __init__(self, stack: LocalStack) -> None:
        assert stack.addresses is not None
        self.stack = stack
        self.names = stack.gateway_names
        self.channels = {name: grpc.insecure_channel(address, options=message_size_options(MAX_MESSAGE_BYTES))
                         for name, address in zip(self.names, stack.addresses.gateways, strict=True)}
        self.redis = redis.Redis.from_url(stack.addresses.redis)
        self.admin = stack.addresses.runpod.removesuffix("/v2") + "/admin"
        self.auth = {"Authorization": f"Bearer {stack.api_key}"}

    def stub(self, name: str) -> gateway_pb2_grpc.GatewayServiceStub:
        return gateway_pb2_grpc.GatewayServiceStub(self.channels[name])

    def holder(self, job_id: str) -> str:
        """The gateway holding the job's lease now."""
        return (self.redis.hget(f"facegen:job:{{{job_id}}}", "owner") or b"").decode()

    def runs(self) -> int:
        """``/run`` requests the endpoint has received so far."""
        response = requests.get(f"{self.admin}/requests", params={"route": "run", "endpoint": ENDPOINT_ID},
                                headers=self.auth, timeout=10)
        response.raise_for_status()
        return int(response.json()["count"])

    def faults(self, **settings: object) -> None:
        requests.post(f"{self.admin}/faults", params={"endpoint": ENDPOINT_ID}, json=settings, headers=self.auth,
                      timeout=10).raise_for_status()

    def restart(self, name: str) -> None:
        """Starts a stopped or killed gateway again and waits until it serves."""
        self.stack.restart(name)
        self.channels[name].close()
        self.channels[name] = grpc.insecure_channel(
            self.stack.addresses.gateways[self.names.index(name)],  # type: ignore[union-attr]
            options=message_size_options(MAX_MESSAGE_BYTES))

    def serving(self, name: str) -> int:
        health = health_pb2_grpc.HealthStub(self.channels[name])
        return int(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def until(stream: Iterator[gateway_pb2.JobEvent], stop: Callable[[gateway_pb2.JobEvent], bool]) -> Events:
    seen = []
    for event in stream:
        seen.append(event)
        if stop(event):
            break
    return seen


def check(events: Events) -> gateway_pb2.JobResult:
    """One job's whole stream: seq 1, 2, 3, ... with no gap or duplicate, one terminal event last."""
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert [event.stage == TERMINAL for event in events].count(True) == 1 and events[-1].stage == TERMINAL
    stages = [event.stage for event in events]
    assert stages == sorted(stages)
    return events[-1].result


def kill_holder_and_follow(cluster: Cluster, job_id: str, seen: Events) -> tuple[Events, str, float]:
    """SIGKILLs the gateway holding the job, follows it on the other from the last event seen, and
    restarts the killed one. Returns every event, the survivor, and the failover time: seconds from
    the SIGKILL to the survivor's first event of the job (the one that says it resumed it)."""
    victim = cluster.holder(job_id)
    assert victim in cluster.names, f"no gateway holds job {job_id}"
    survivor = next(name for name in cluster.names if name != victim)
    cluster.stack.services[victim].kill()
    killed = time.monotonic()
    events = list(seen)
    failover = math.inf  # stays so if no gateway resumed the job
    for event in cluster.stub(survivor).Watch(gateway_pb2.WatchRequest(job_id=job_id, after_seq=seen[-1].seq),
                                              timeout=120):
        if event.resumed and failover == math.inf:
            failover = time.monotonic() - killed
        events.append(event)
    cluster.restart(victim)
    return events, survivor, failover
