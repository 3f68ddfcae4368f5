"""Starts the whole system on loopback and stops every process it started.

The stack is: an S3-compatible server (moto's, ``s3_server.py``), the project's face-swap worker
behind its local RunPod queue API, the generator, the swapper and the gateway
(or several gateway replicas sharing a Redis job store: ``gateways=N``).
Each runs as its own process on a free loopback port, wired together by
environment settings exactly as a deployment would wire them, with its log in
``<run dir>/<name>.log`` and its Prometheus metrics on a port of its own
(``StackAddresses.metrics``). Given an OTLP endpoint, every service exports
its spans there. With ``tls=True`` every gRPC hop uses TLS with a
throwaway CA made at start (``<run dir>/tls/``, ``services.stack.certs``): the
generator and the swapper require the gateway's client certificate, the
gateway serves TLS to clients, and each service's readiness is read from a
plaintext health port, as Kubernetes' probes read it in the ``tls`` overlay.
``LocalStack`` waits for every health check, and on exit, Ctrl-C or a failed
start stops everything in reverse order (SIGTERM to the process group, SIGKILL
after a grace period), leaving no process behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis
import requests

from services.common.health import is_serving
from services.stack.certs import StackCertificates, make_stack_certificates
from services.stack.s3_server import STATS_PATH as S3_STATS_PATH

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_PYTHON = REPO_ROOT / ".venv-worker" / "bin" / "python"
ENDPOINT_ID = "local-faceswap"
BUCKET = "facegen-local"


class StackError(RuntimeError):
    """A service of the local stack failed to start."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_ok(url: str) -> bool:
    """True when the Redis server at ``url`` answers PING."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    """True when ``url`` answers with a status below 500."""
    try:
        return requests.get(url, headers=headers, timeout=1.0).status_code < 500
    except requests.RequestException:
        return False


@dataclass
class ServiceProcess:
    """One process of the stack: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], bool]
    start_timeout: float = 120.0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self, run_dir: Path) -> None:
        """Starts the process in its own session, its output going to its log file."""
        self.log_path = run_dir / f"{self.name}.log"
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.argv, cwd=REPO_ROOT, env={**os.environ, **self.env}, stdout=log_file,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self) -> None:
        """Polls the readiness probe until it passes, the process dies, or the timeout ends."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StackError(f"{self.name} exited with code {self.process.returncode} during start\n"
                                 f"{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise StackError(f"{self.name} was not ready after {self.start_timeout:.0f} s\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL to the whole process group at once, as a crash or a lost node would end it."""
        self.stop(grace=0.0)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after ``grace`` seconds (at once for 0)."""
        if self.process is None or self.process.poll() is not None:
            return
        steps = ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)) if grace > 0 else ((signal.SIGKILL, 5.0),)
        for sig, wait in steps:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The group may hold children (the endpoint's worker processes) that outlived
        # their parent: kill them too, and wait until the kernel has reaped them all.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"    {self.name}| {line}" for line in tail)


@dataclass
class StackAddresses:
    """Where each part of a running stack listens."""

    s3: str
    runpod: str
    generator: str
    swapper: str
    # The first gateway replica; ``gateways`` lists them all.
    gateway: str
    gateways: list[str] = field(default_factory=list)
    # The shared job store's URL ("" when the one gateway keeps its jobs in memory).
    redis: str = ""
    # Service (gateway replicas by name, "runpod" for the endpoint) -> URL of its Prometheus metrics.
    metrics: dict[str, str] = field(default_factory=dict)
    # With TLS: each gRPC service's plaintext health port (name -> host:port).
    health: dict[str, str] = field(default_factory=dict)


@dataclass
class LocalStack:
    """The whole system on loopback; use as a context manager."""

    run_dir: Path
    workers: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    # Gateway replicas; more than one share a Redis job store (and so does one with ``shared_store``).
    gateways: int = 1
    shared_store: bool = False
    # TLS on every gRPC hop, mTLS to the generator and the swapper, with a CA made at start.
    tls: bool = False
    api_key: str = field(default_factory=lambda: "rpa_local_" + secrets.token_hex(16))
    # Where every service sends its spans (OTLP over gRPC, e.g. http://127.0.0.1:4317); "": no tracing.
    otlp_endpoint: str = ""
    certificates: StackCertificates | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    addresses: StackAddresses | None = None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> StackAddresses:
        """Starts every service and waits until all are healthy; stops them all if one fails."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        grpc_services = ["generator", "swapper", *self.gateway_names]
        names = ["s3", "runpod", *grpc_services]
        ports = {name: free_port() for name in [*names, "redis", *(f"{name}-metrics" for name in grpc_services)]}
        gateways = [f"127.0.0.1:{ports[name]}" for name in self.gateway_names]
        metrics = {name: f"http://127.0.0.1:{ports[name + '-metrics']}/metrics" for name in grpc_services}
        if self.tls:
            self.certificates = make_stack_certificates(self.run_dir / "tls")
        health = {name: f"127.0.0.1:{free_port()}" for name in grpc_services} \
            if self.tls else {}
        self.addresses = StackAddresses(
            s3=f"http://127.0.0.1:{ports['s3']}", runpod=f"http://127.0.0.1:{ports['runpod']}/v2",
            generator=f"127.0.0.1:{ports['generator']}", swapper=f"127.0.0.1:{ports['swapper']}",
            gateway=gateways[0], gateways=gateways,
            redis=f"redis://127.0.0.1:{ports['redis']}/0" if self.uses_redis else "", health=health,
            metrics={**metrics, "runpod": f"http://127.0.0.1:{ports['runpod']}/metrics"})
        specs = self._specs(self.addresses, ports)
        try:
            # Storage, Redis, the endpoint and the generator start in parallel; the swapper
            # needs storage at start, so it waits for it.
            for name in ("s3", "redis", "runpod", "generator"):
                if name in specs:
                    self._launch(specs[name])
            for name in ("s3", "redis"):
                if name in specs:
                    self.services[name].wait_ready()
            for name in ("swapper", *self.gateway_names):
                self._launch(specs[name])
            for name in ("runpod", "generator", "swapper", *self.gateway_names):
                self.services[name].wait_ready()
                logs_line(f"{name} ready")
        except BaseException:
            self.stop()
            raise
        return self.addresses

    def _launch(self, spec: ServiceProcess) -> None:
        spec.start(self.run_dir)
        self.services[spec.name] = spec

    def stop(self) -> None:
        """Stops every started process, last started first."""
        for service in reversed(list(self.services.values())):
            service.stop()

    def restart(self, name: str) -> None:
        """Starts a stopped service again on the same port and waits for it."""
        service = self.services[name]
        service.stop()
        service.start(self.run_dir)
        service.wait_ready()

    @property
    def uses_redis(self) -> bool:
        """True when the gateways share a Redis job store."""
        return self.gateways > 1 or self.shared_store

    @property
    def gateway_names(self) -> list[str]:
        """``gateway`` for a single replica, ``gateway-0``, ``gateway-1``, ... for several."""
        return ["gateway"] if self.gateways == 1 else [f"gateway-{number}" for number in range(self.gateways)]

    def swapper_env(self) -> dict[str, str]:
        """The storage and RunPod settings the swapper (or its doctor) needs for this stack."""
        a = self.addresses
        if a is None:
            raise StackError("the stack has not been started")
        return {
            "S3_ENDPOINT_URL": a.s3, "S3_BUCKET": BUCKET, "S3_ACCESS_KEY_ID": "local",
            "S3_SECRET_ACCESS_KEY": "local-secret", "S3_REGION": "auto", "S3_CREATE_BUCKET": "true",
            "RUNPOD_API_BASE": a.runpod, "FACE_SWAP_ENDPOINT": ENDPOINT_ID, "RUNPOD_API_KEY": self.api_key,
            **({"REDIS_URL": a.redis} if a.redis else {}),
        }

    def _observed(self, name: str, a: StackAddresses) -> dict[str, str]:
        """A service's metrics endpoint and, with an OTLP endpoint, its tracing settings."""
        prefix = "GATEWAY" if name.startswith("gateway") else name.upper()
        env = {f"{prefix}_METRICS_LISTEN": a.metrics[name].removeprefix("http://").removesuffix("/metrics")}
        if self.otlp_endpoint:
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint,
                        "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={name}"})
        return env

    def _specs(self, a: StackAddresses, ports: dict[str, int]) -> dict[str, ServiceProcess]:
        python = sys.executable
        common = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **self.extra_env}
        auth = {"Authorization": f"Bearer {self.api_key}"}
        specs = [
            ServiceProcess("s3", [python, "-m", "services.stack.s3_server", "--listen", f"127.0.0.1:{ports['s3']}"],
                           common, lambda: http_ok(f"{a.s3}{S3_STATS_PATH}"), start_timeout=60),
            ServiceProcess("runpod", [str(WORKER_PYTHON), "-m", "services.stack.runpod_emulator",
                                      "--host", "127.0.0.1", "--port", str(ports["runpod"]),
                                      "--endpoint-id", ENDPOINT_ID, "--workers", str(self.workers)],
                           {**common, "FACESWAP_ENDPOINT_API_KEY": self.api_key},
                           lambda: http_ok(f"{a.runpod}/{ENDPOINT_ID}/health", auth)),
            ServiceProcess("generator", [python, "-m", "services.generator"],
                           {**common, **self._observed("generator", a), **self.tls_env("generator"),
                            "GENERATOR_LISTEN": a.generator},
                           self._ready("generator", a.generator), start_timeout=300),
            ServiceProcess("swapper", [python, "-m", "services.swapper"],
                           {**common, **self._observed("swapper", a), **self.swapper_env(), **self.tls_env("swapper"),
                            "SWAPPER_LISTEN": a.swapper},
                           self._ready("swapper", a.swapper)),
            *(self._gateway_spec(name, address, a, {**common, **self._observed(name, a), **self.tls_env(name)})
              for name, address in zip(self.gateway_names, a.gateways, strict=True)),
        ]
        if a.redis:
            specs.append(self._redis_spec(a.redis, ports["redis"]))
        return {spec.name: spec for spec in specs}

    def _gateway_spec(self, name: str, address: str, a: StackAddresses, common: dict[str, str]) -> ServiceProcess:
        env = {**common, "GATEWAY_LISTEN": address, "GENERATOR_ADDRESS": a.generator, "SWAPPER_ADDRESS": a.swapper,
               "GATEWAY_INSTANCE": name}
        if a.redis:
            env.update({"GATEWAY_STORE": "redis", "REDIS_URL": a.redis})
        return ServiceProcess(name, [sys.executable, "-m", "services.gateway"], env, self._ready(name, address))

    def _ready(self, name: str, address: str) -> Callable[[], bool]:
        """The readiness probe of a gRPC service: its health, on its plaintext health port with TLS."""
        assert self.addresses is not None
        probed = self.addresses.health.get(name, address)
        return lambda: is_serving(probed)

    def tls_env(self, name: str) -> dict[str, str]:
        """The TLS settings of a gRPC service of this stack (none without TLS): its certificate, the CA its
        clients must come from (generator, swapper), the gateway's client certificate, the health port."""
        certs, a = self.certificates, self.addresses
        if certs is None or a is None:
            return {}
        if name in ("generator", "swapper"):
            pair = certs.generator if name == "generator" else certs.swapper
            prefix = name.upper()
            return {f"{prefix}_TLS_CERT_FILE": str(pair.cert), f"{prefix}_TLS_KEY_FILE": str(pair.key),
                    f"{prefix}_TLS_CA_FILE": str(certs.ca), f"{prefix}_HEALTH_LISTEN": a.health[name]}
        return {"GATEWAY_TLS_CERT_FILE": str(certs.gateway.cert), "GATEWAY_TLS_KEY_FILE": str(certs.gateway.key),
                "GATEWAY_UPSTREAM_TLS_CERT_FILE": str(certs.gateway_client.cert),
                "GATEWAY_UPSTREAM_TLS_KEY_FILE": str(certs.gateway_client.key),
                "GATEWAY_UPSTREAM_TLS_CA_FILE": str(certs.ca), "GATEWAY_HEALTH_LISTEN": a.health[name]}

    def _redis_spec(self, url: str, port: int) -> ServiceProcess:
        server = shutil.which("redis-server")
        if server is None:
            raise StackError("redis-server is not installed: `make setup` installs it (Debian's redis-server)")
        data = self.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        # Append-only file, as in the manifests: a restart keeps every acknowledged job.
        argv = [server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no"]
        return ServiceProcess("redis", argv, {}, lambda: redis_ok(url), start_timeout=30)


def logs_line(message: str) -> None:
    """A progress line of the launcher itself, on stderr (stdout belongs to the job output)."""
    print(f"[stack] {message}", file=sys.stderr, flush=True)


__all__ = ["BUCKET", "ENDPOINT_ID", "LocalStack", "StackAddresses", "StackError", "free_port"]
