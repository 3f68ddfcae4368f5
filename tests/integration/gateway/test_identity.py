"""Who may call the gateway and whom it calls: named tokens re-read on change, TLS on its public port,
and its client certificate towards upstreams that require one (renewed without a restart)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from facegen.v1 import gateway_pb2, gateway_pb2_grpc
from services.stack.certs import KeyPair
from tests.certificates import Pki, make_pki, replace
from tests.fakes.grpc_upstreams import FakeUpstreams, GeneratorScript, SwapScript
from tests.integration.gateway.conftest import GatewayFactory
from tests.integration.gateway.support import check_stream, collect, job_request
from tests.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("store_kind", ["memory"])]

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-fedcba9876543210"
CAROL = "carol-token-00112233445566"
RELOAD_S = 0.05


def _write(path: Path, text: str) -> Path:
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.replace(fresh, path)
    return path


def _bearer(token: str, scheme: str = "Bearer") -> tuple[tuple[str, str]]:
    return (("authorization", f"{scheme} {token}"),)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def upstream_mtls() -> bool:
    """Whether the fake upstreams require client certificates (a test parametrizes it to True)."""
    return False


@pytest.fixture
async def upstreams(upstream_mtls: bool, pki: Pki) -> AsyncIterator[FakeUpstreams]:
    """The fake generator and swapper, requiring client certificates of the test CA with ``upstream_mtls``."""
    tls = pki.server_files() if upstream_mtls else None
    async with FakeUpstreams(GeneratorScript(steps=2), SwapScript(), tls=tls) as fakes:
        yield fakes


async def _submit(stub: gateway_pb2_grpc.GatewayServiceStub, token: str) -> str:
    """Submit with ``token``: "ok" or the status code's name."""
    try:
        await stub.Submit(job_request(), metadata=_bearer(token))
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "ok"


async def test_callers_are_named_in_the_log_and_a_changed_file_applies_without_a_restart(
        start_gateway: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    tokens = _write(tmp_path / "tokens", f"alice: {ALICE}\nbob: {BOB}\n")
    gateway = await start_gateway(tokens_file=tokens, reload_seconds=RELOAD_S)

    events = await collect(gateway.stub.Run(job_request(), metadata=_bearer(ALICE, "bearer")))
    assert check_stream(events).state == gateway_pb2.JOB_STATE_COMPLETED
    submitted = [r.getMessage() for r in caplog.records if "event=job.submitted" in r.getMessage()]
    assert len(submitted) == 1 and "caller=alice" in submitted[0]
    assert await _submit(gateway.stub, BOB) == "ok"
    assert any("event=job.submitted caller=bob" in r.getMessage() for r in caplog.records)
    assert await _submit(gateway.stub, CAROL) == "UNAUTHENTICATED"
    (failed,) = [r for r in caplog.records if "event=gateway.auth_failed" in r.getMessage()]
    assert failed.levelno == logging.WARNING
    assert 'rpc=Submit reason="unknown token" peer=ipv' in failed.getMessage()

    _write(tokens, f"bob: {BOB}\ncarol: {CAROL}\n")
    await until(lambda: gateway.app.auth.callers == ["bob", "carol"], what="the new tokens")
    assert await _submit(gateway.stub, CAROL) == "ok"
    assert await _submit(gateway.stub, ALICE) == "UNAUTHENTICATED"

    _write(tokens, f"bob {BOB}\n")
    await until(lambda: any("event=gateway.tokens_rejected" in r.getMessage() for r in caplog.records),
                what="the malformed file's ERROR line")
    assert await _submit(gateway.stub, CAROL) == "ok", "a malformed file keeps the tokens in force"
    for token in (ALICE, BOB, CAROL):
        assert not any(token in r.getMessage() for r in caplog.records), "a token reached the log"


async def test_the_public_port_serves_tls_and_refuses_plaintext(start_gateway: GatewayFactory, pki: Pki) -> None:
    gateway = await start_gateway(tls_cert_file=pki.server.cert, tls_key_file=pki.server.key)
    async with grpc.aio.secure_channel(f"localhost:{gateway.app.server.port}", pki.client_credentials()) as channel:
        events = await collect(gateway_pb2_grpc.GatewayServiceStub(channel).Run(job_request()))
    assert check_stream(events).state == gateway_pb2.JOB_STATE_COMPLETED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.stub.Submit(job_request(), timeout=5)  # the fixture's plaintext channel
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def _copy(pair: KeyPair, directory: Path) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    copy = KeyPair(directory / "client.crt", directory / "client.key")
    shutil.copyfile(pair.cert, copy.cert)
    shutil.copyfile(pair.key, copy.key)
    return copy


@pytest.mark.parametrize("upstream_mtls", [True])
async def test_upstreams_that_require_a_client_certificate_get_the_gateways(
        start_gateway: GatewayFactory, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # A certificate the upstreams do not accept (another CA's), renewed later with one they do.
    own = _copy(pki.intruder, tmp_path / "gateway")
    gateway = await start_gateway(upstream_tls_cert_file=own.cert, upstream_tls_key_file=own.key,
                                  upstream_tls_ca_file=pki.ca, reload_seconds=RELOAD_S, connect_timeout_seconds=0.5)
    refused = check_stream(await collect(gateway.stub.Run(job_request())))
    assert refused.state == gateway_pb2.JOB_STATE_FAILED and refused.code == "UNAVAILABLE"
    assert "cannot be reached" in refused.message

    replace(own, pki.client)
    await until(lambda: any("event=gateway.upstream_tls_reloaded" in r.getMessage() for r in caplog.records),
                what="the renewed client certificate")
    events = await collect(gateway.stub.Run(job_request()))
    assert check_stream(events).state == gateway_pb2.JOB_STATE_COMPLETED


@pytest.mark.parametrize("upstream_mtls", [True])
async def test_without_a_client_certificate_a_job_fails_with_a_clear_message(
        start_gateway: GatewayFactory, pki: Pki) -> None:
    gateway = await start_gateway(upstream_tls_ca_file=pki.ca, connect_timeout_seconds=0.5)
    result = check_stream(await collect(gateway.stub.Run(job_request())))
    assert (result.state, result.code) == (gateway_pb2.JOB_STATE_FAILED, "UNAVAILABLE")
    assert "cannot be reached" in result.message
