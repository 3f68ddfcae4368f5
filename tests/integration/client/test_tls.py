"""The clients over TLS: the Python client, the `facegen` command and the Node client, against gateway
processes that serve TLS (a bearer token required) and mutual TLS, with a throwaway CA."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from facegen.v1 import gateway_pb2
from services.cli.main import EXIT_ERROR, EXIT_OK
from services.client import AsyncFacegenClient, FacegenClient, GatewayError, RetryPolicy, job_request, tls_credentials
from tests.certificates import Pki, make_pki
from tests.fakes.grpc_upstreams import png_bytes
from tests.gateway_process import ROOT, GatewayProcess
from tests.integration.client.conftest import StartGateways
from tests.integration.client.test_node_client import run_node_tests

pytestmark = pytest.mark.integration

TOKEN = "tls-test-token-0123456789"
# Refusals need not be ridden out for long.
QUICK = RetryPolicy(give_up_after=1.0)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def face(tmp_path: Path) -> Path:
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(48, 48))
    return path


async def _tls_gateway(gateways: StartGateways, pki: Pki, tmp_path: Path, mutual: bool = False) -> GatewayProcess:
    """A gateway serving TLS with the test CA's server certificate; with a token file, or requiring client
    certificates (``mutual``)."""
    env = {"GATEWAY_TLS_CERT_FILE": str(pki.server.cert), "GATEWAY_TLS_KEY_FILE": str(pki.server.key)}
    if mutual:
        env["GATEWAY_TLS_CA_FILE"] = str(pki.ca)
    else:
        (tmp_path / "tokens").write_text(f"tests: {TOKEN}\n")
        env["GATEWAY_TOKENS_FILE"] = str(tmp_path / "tokens")
    credentials = pki.client_credentials(pki.client if mutual else None)
    (gateway,) = await gateways(1, store="memory", credentials=credentials, **env)
    return gateway


async def _cli(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")])}
    for name in ("FACEGEN_TLS", "FACEGEN_TLS_CA", "FACEGEN_TLS_CERT", "FACEGEN_TLS_KEY", "FACEGEN_TOKEN"):
        env.pop(name, None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "--retry-for", "1", *args, cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_cli_runs_a_job_over_tls_with_the_ca_and_is_refused_without_it(
        gateways: StartGateways, pki: Pki, tmp_path: Path, face: Path) -> None:
    gateway = await _tls_gateway(gateways, pki, tmp_path)
    code, out, err = await _cli("--gateway", gateway.address, "--tls-ca", str(pki.ca), "--token", TOKEN, "--json",
                                "run", "--prompt", "a portrait", "--reference", str(face), "--no-download")
    assert code == EXIT_OK, err
    assert json.loads(out.splitlines()[-1])["result"]["state"] == "JOB_STATE_COMPLETED"

    for refused in (["health"], ["--tls", "health"]):  # plaintext; TLS that trusts only the system's roots
        code, _, err = await _cli("--gateway", gateway.address, "--token", TOKEN, *refused)
        assert code == EXIT_ERROR and "UNAVAILABLE" in err, err
    code, _, err = await _cli("--gateway", gateway.address, "--tls-ca", str(tmp_path / "missing.crt"), "health")
    assert code == EXIT_ERROR
    assert f"facegen: --tls-ca={tmp_path / 'missing.crt'} cannot be read" in err
    code, out, err = await _cli("--gateway", gateway.address, "--tls-ca", str(pki.ca), "health")
    assert code == EXIT_OK and "SERVING" in out, err
    # The certificate is checked against the name given instead of the address (which it carries).
    code, _, err = await _cli("--gateway", gateway.address, "--tls-ca", str(pki.ca),
                              "--tls-server-name", "elsewhere.example", "health")
    assert code == EXIT_ERROR and "UNAVAILABLE" in err, err


async def test_the_cli_presents_a_client_certificate_to_a_gateway_that_requires_one(
        gateways: StartGateways, pki: Pki, tmp_path: Path) -> None:
    gateway = await _tls_gateway(gateways, pki, tmp_path, mutual=True)
    code, out, err = await _cli("--gateway", gateway.address, "--tls-ca", str(pki.ca), "--tls-cert",
                                str(pki.client.cert), "--tls-key", str(pki.client.key), "models")
    assert code == EXIT_OK and out.strip(), err
    code, _, err = await _cli("--gateway", gateway.address, "--tls-ca", str(pki.ca), "models")
    assert code == EXIT_ERROR and "UNAVAILABLE" in err, err
    code, _, err = await _cli("--gateway", gateway.address, "--tls-ca", str(pki.ca), "--tls-cert",
                              str(pki.client.cert), "models")
    assert code == EXIT_ERROR and "--tls-cert and --tls-key go together" in err, err


async def test_the_python_clients_take_tls_credentials_from_files(
        gateways: StartGateways, pki: Pki, tmp_path: Path) -> None:
    gateway = await _tls_gateway(gateways, pki, tmp_path)
    credentials = tls_credentials(ca=pki.ca)

    def run_sync() -> int:
        with FacegenClient(gateway.address, token=TOKEN, tls=credentials) as client:
            job = client.run(job_request("a portrait", reference=png_bytes(48, 48)))
            list(job)
            return job.result.state

    assert await asyncio.to_thread(run_sync) == gateway_pb2.JOB_STATE_COMPLETED
    async with AsyncFacegenClient(gateway.address, token=TOKEN, tls=credentials) as client:
        assert await client.list_models()
    async with AsyncFacegenClient(gateway.address, token=TOKEN, tls=True, policy=QUICK) as client:
        with pytest.raises(GatewayError) as caught:
            await client.list_models()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE, "the system's roots do not know the test CA"
    with pytest.raises(ValueError, match=r"ca=.*missing\.crt cannot be read"):
        tls_credentials(ca=tmp_path / "missing.crt")


async def test_the_node_client_speaks_tls_and_mutual_tls(gateways: StartGateways, pki: Pki, tmp_path: Path) -> None:
    tls_gateway = await _tls_gateway(gateways, pki, tmp_path)
    mtls_gateway = await _tls_gateway(gateways, pki, tmp_path, mutual=True)
    output = await run_node_tests("test/tls/", {
        "FACEGEN_TEST_TLS_GATEWAY": tls_gateway.address, "FACEGEN_TEST_MTLS_GATEWAY": mtls_gateway.address,
        "FACEGEN_TEST_TLS_CA": str(pki.ca), "FACEGEN_TEST_TLS_CLIENT_CERT": str(pki.client.cert),
        "FACEGEN_TEST_TLS_CLIENT_KEY": str(pki.client.key), "FACEGEN_TEST_TOKEN": TOKEN,
        "FACEGEN_TEST_FACE_PNG_B64": base64.b64encode(png_bytes(48, 48)).decode(),
    })
    assert "# fail 0" in output and "# pass 5" in output, output
