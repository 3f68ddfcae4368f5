"""Container health check: exit 0 when a local gRPC server reports SERVING.

Used by Docker's HEALTHCHECK and compose (Kubernetes uses its built-in gRPC
probes instead). The images hold grpcio and grpcio-health-checking already,
so this avoids shipping a separate grpc_health_probe binary.

    python /opt/facegen/grpc_health_check.py 127.0.0.1:50051 [--service NAME] [--timeout S]
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(target: str, service: str, timeout: float) -> int:
    """The health status that ``target`` reports for ``service`` ("" = the whole server)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return int(reply.status)


def main(argv: list[str] | None = None) -> int:
    """Command line; prints one line and returns the exit code (0 serving, 1 otherwise)."""
    parser = argparse.ArgumentParser(description="gRPC health check for container runtimes")
    parser.add_argument("target", help="host:port of the server, e.g. 127.0.0.1:50051")
    parser.add_argument("--service", default="", help="service name to check (default: the server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    try:
        status = probe(args.target, args.service, args.timeout)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        print(f"unhealthy: {args.target} did not answer ({code})", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    if status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {args.target} reports {name}", file=sys.stderr)
        return 1
    print(f"healthy: {args.target} reports {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
