"""The whole stack with TLS on every gRPC hop (``python -m services.stack up --tls``): a job runs through
it; the generator and the swapper let in only the holder of the gateway's client certificate; the gateway
refuses plaintext; the caller's name from the tokens file reaches the gateway's log."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facegen.v1 import common_pb2, gateway_pb2
from services.client import FacegenClient, GatewayError, RetryPolicy, job_request, tls_credentials
from services.stack.certs import CertificateAuthority, KeyPair, StackCertificates
from services.stack.launcher import REPO_ROOT, LocalStack
from tests.waiting import until_sync

pytestmark = pytest.mark.e2e

TOKEN = "e2e-tls-token-0123456789abcdef"
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    run_dir = tmp_path_factory.mktemp("tls-stack")
    tokens = run_dir / "gateway-tokens"
    tokens.write_text(f"e2e-suite: {TOKEN}\n")
    extra = {"GATEWAY_TOKENS_FILE": str(tokens), "FACE_SWAP_DEADLINE_SECONDS": "60"}
    with LocalStack(run_dir, extra_env=extra, tls=True) as stack:
        yield stack


def _certificates(stack: LocalStack) -> StackCertificates:
    assert stack.certificates is not None and stack.addresses is not None
    return stack.certificates


def _health(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """The health status at ``address`` over a new channel, or the status code of the failed call."""
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name  # type: ignore[attr-defined]
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _credentials(ca: Path, pair: KeyPair | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(ca.read_bytes(), pair.key.read_bytes() if pair else None,
                                        pair.cert.read_bytes() if pair else None)


def test_a_job_runs_through_every_hop_over_tls_and_the_log_names_its_caller(tls_stack: LocalStack,
                                                                           face: bytes) -> None:
    certs = _certificates(tls_stack)
    assert tls_stack.addresses is not None
    with FacegenClient(tls_stack.addresses.gateway, token=TOKEN, tls=tls_credentials(ca=certs.ca)) as client:
        job = client.run(job_request("portrait photo of a woman", reference=face, seed=7, steps=4))
        events = list(job)
    result = job.result
    assert result.state == gateway_pb2.JOB_STATE_COMPLETED, result.message
    assert [e.denoise.step for e in events if e.HasField("denoise")] == [1, 2, 3, 4], "the generator hop"
    (image,) = result.images
    assert image.fallback_reason == common_pb2.FALLBACK_REASON_NO_FACE_FOUND, "the swapper hop ran the swap"
    assert requests.get(image.url, timeout=30).status_code == 200, "the swapper stored the image"

    log = (tls_stack.run_dir / "gateway.log").read_text()
    assert f"job={events[0].job_id} event=job.submitted caller=e2e-suite" in log
    assert TOKEN not in log
    for name in ("generator", "swapper"):
        assert "tls=mtls" in (tls_stack.run_dir / f"{name}.log").read_text(), name
    assert "tls=tls" in log


@pytest.mark.parametrize("service", ["generator", "swapper"])
def test_only_the_gateways_client_certificate_opens_the_generator_and_the_swapper(
        tls_stack: LocalStack, service: str, tmp_path: Path) -> None:
    certs = _certificates(tls_stack)
    assert tls_stack.addresses is not None
    address = getattr(tls_stack.addresses, service)
    intruder = CertificateAuthority("intruder CA").issue(tmp_path, "intruder", server=False, client=True, ips=())
    assert _health(address, _credentials(certs.ca, certs.gateway_client)) == "SERVING", "the gateway's certificate"
    assert _health(address, _credentials(certs.ca)) == "UNAVAILABLE", "no client certificate"
    assert _health(address, _credentials(certs.ca, intruder)) == "UNAVAILABLE", "a certificate of another CA"
    assert _health(address, None) == "UNAVAILABLE", "plaintext"
    # The plaintext health port, for probes, tells the status and serves nothing else.
    assert _health(tls_stack.addresses.health[service], None) == "SERVING"


def test_the_gateway_refuses_plaintext_and_callers_without_a_token(tls_stack: LocalStack, face: bytes) -> None:
    certs = _certificates(tls_stack)
    assert tls_stack.addresses is not None
    gateway = tls_stack.addresses.gateway
    assert _health(gateway, None) == "UNAVAILABLE"
    assert _health(gateway, _credentials(certs.ca)) == "SERVING", "TLS without a client certificate is enough"
    quick = RetryPolicy(give_up_after=1.0)
    with FacegenClient(gateway, tls=tls_credentials(ca=certs.ca), policy=quick) as client, \
            pytest.raises(GatewayError) as caught:
        client.submit(job_request("a portrait", reference=face))
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    until_sync(lambda: "event=gateway.auth_failed rpc=Submit" in (tls_stack.run_dir / "gateway.log").read_text(),
               what="the auth failure's log line")
    # The command line says the same as the library: plaintext does not reach a TLS gateway.
    cli = subprocess.run([sys.executable, "-m", "services.cli", "--gateway", gateway, "--retry-for", "1", "health"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and "UNAVAILABLE" in cli.stderr, cli.stderr
