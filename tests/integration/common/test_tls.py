"""The shared server over TLS and mutual TLS, its plaintext health port, and certificates renewed while it runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facegen.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.common.channel import internal_channel
from services.common.config import ServerSettings
from services.common.server import ServiceServer
from services.common.tls import channel_credentials
from services.common.tls_files import TlsFiles
from services.stack.certs import CertificateAuthority
from tests.certificates import Pki, make_pki, replace

pytestmark = pytest.mark.integration

SERVICE = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING


class Models(generator_pb2_grpc.GeneratorServiceServicer):
    async def ListModels(self, request, context):
        return common_pb2.ListModelsResponse(models=[common_pb2.ModelInfo(name="m")])


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)




@pytest.fixture
async def serve(pki: Pki) -> AsyncIterator[Callable[..., object]]:
    started: list[ServiceServer] = []

    async def start(mutual: bool = True, health_listen: str | None = None) -> ServiceServer:
        files = pki.server_files(mutual)
        settings = ServerSettings(listen="127.0.0.1:0", grace_seconds=0, tls_cert_file=files.cert,
                                  tls_key_file=files.key, tls_ca_file=files.ca, health_listen=health_listen)
        server = ServiceServer(settings, [SERVICE],
                               lambda s: generator_pb2_grpc.add_GeneratorServiceServicer_to_server(Models(), s))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop(0)


async def _models(port: int, credentials: grpc.ChannelCredentials | None, host: str = "localhost") -> str:
    """ListModels over a new channel: "ok", or the status code's name when the call fails."""
    target = f"{host}:{port}"
    channel = (grpc.aio.secure_channel(target, credentials) if credentials is not None
               else grpc.aio.insecure_channel(target))
    async with channel:
        try:
            await generator_pb2_grpc.GeneratorServiceStub(channel).ListModels(common_pb2.ListModelsRequest(),
                                                                              timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return "ok"


async def test_with_a_ca_only_clients_holding_a_certificate_it_signed_get_in(serve, pki: Pki) -> None:
    server = await serve(mutual=True)
    assert await _models(server.port, pki.client_credentials(pki.client)) == "ok"
    assert await _models(server.port, pki.client_credentials(pki.client), host="127.0.0.1") == "ok"
    assert await _models(server.port, pki.client_credentials()) == "UNAVAILABLE", "no client certificate"
    assert await _models(server.port, pki.client_credentials(pki.intruder)) == "UNAVAILABLE", "another CA's"
    assert await _models(server.port, None) == "UNAVAILABLE", "plaintext"
    other_ca = CertificateAuthority("a CA the client trusts instead").write(pki.directory / "other-ca.crt")
    assert await _models(server.port, pki.client_credentials(pki.client, ca=other_ca)) == "UNAVAILABLE", \
        "the client checks the server's certificate too"


async def test_without_a_ca_tls_is_served_to_any_client(serve, pki: Pki) -> None:
    server = await serve(mutual=False)
    assert await _models(server.port, pki.client_credentials()) == "ok"
    assert await _models(server.port, pki.client_credentials(pki.intruder)) == "ok", "no certificate is asked for"
    assert await _models(server.port, None) == "UNAVAILABLE"


async def test_the_internal_channel_presents_the_client_certificate(serve, pki: Pki) -> None:
    server = await serve(mutual=True)
    credentials = channel_credentials(TlsFiles(pki.client.cert, pki.client.key, pki.ca))
    async with internal_channel(f"localhost:{server.port}", credentials=credentials) as channel:
        reply = await generator_pb2_grpc.GeneratorServiceStub(channel).ListModels(
            common_pb2.ListModelsRequest(), timeout=5)
    assert [model.name for model in reply.models] == ["m"]


async def test_the_health_port_answers_in_plaintext_with_the_same_status_and_nothing_else(serve) -> None:
    server = await serve(mutual=True, health_listen="127.0.0.1:0")
    assert server.health_port not in (0, server.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=SERVICE)
        assert (await health.Check(request, timeout=5)).status != SERVING
        await server.set_serving(True)
        assert (await health.Check(request, timeout=5)).status == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await generator_pb2_grpc.GeneratorServiceStub(channel).ListModels(common_pb2.ListModelsRequest(),
                                                                              timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await server.stop(0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)


async def test_renewed_certificates_apply_to_new_connections_without_a_restart(serve, pki: Pki) -> None:
    server = await serve(mutual=True)
    next_authority = CertificateAuthority("the next CA")
    next_ca = next_authority.write(pki.directory / "next-ca.crt")
    next_client = next_authority.issue(pki.directory / "next", "client", server=False, client=True, ips=())
    assert await _models(server.port, pki.client_credentials(next_client, ca=next_ca)) == "UNAVAILABLE"

    # The server's certificate and its client CA both move to the next CA, as a CA rotation does.
    replace(pki.server, next_authority.issue(pki.directory / "next", "server"))
    pki.ca.write_bytes(next_ca.read_bytes())
    assert await _models(server.port, pki.client_credentials(next_client, ca=next_ca)) == "ok"
    assert await _models(server.port, pki.client_credentials(pki.client, ca=next_ca)) == "UNAVAILABLE", \
        "a client of the old CA is no longer let in"
