"""The real stack (S3, local RunPod endpoint with the real worker, generator, swapper, gateway)."""

from collections.abc import Iterator
from pathlib import Path

import boto3
import grpc
import pytest
import requests
from botocore.config import Config

from facegen.v1 import gateway_pb2_grpc
from services.common.config import MAX_MESSAGE_BYTES
from services.common.server import message_size_options
from services.stack.launcher import BUCKET, ENDPOINT_ID, LocalStack
from services.stack.samples import reference_face, template_photo
from tests.otlp_receiver import OtlpReceiver


@pytest.fixture(scope="package")
def otlp() -> Iterator[OtlpReceiver]:
    """The OTLP receiver every service of the e2e stack sends its spans to."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver) -> Iterator[LocalStack]:
    """One stack for the e2e package, traced; its logs stay in pytest's temporary directory."""
    extra = {
        # Short breaker cool-down so the 'endpoint down' test does not leak into later tests.
        "FACE_SWAP_BREAKER_COOLDOWN_SECONDS": "0.5",
        "FACE_SWAP_DEADLINE_SECONDS": "60",
        # Spans are exported in batches every 5 s by default: a test need not wait that long.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with LocalStack(tmp_path_factory.mktemp("stack"), extra_env=extra, otlp_endpoint=otlp.endpoint) as running:
        yield running


@pytest.fixture(scope="package")
def channel(stack: LocalStack) -> Iterator[grpc.Channel]:
    assert stack.addresses is not None
    with grpc.insecure_channel(stack.addresses.gateway, options=message_size_options(MAX_MESSAGE_BYTES)) as ch:
        yield ch


@pytest.fixture(scope="package")
def gateway(channel: grpc.Channel) -> gateway_pb2_grpc.GatewayServiceStub:
    return gateway_pb2_grpc.GatewayServiceStub(channel)


@pytest.fixture(scope="package")
def bucket(stack: LocalStack):
    """boto3 Bucket on the stack's S3 server, to see what was (not) stored."""
    assert stack.addresses is not None
    s3 = boto3.resource("s3", endpoint_url=stack.addresses.s3, aws_access_key_id="local",
                        aws_secret_access_key="local-secret", region_name="us-east-1",
                        config=Config(signature_version="s3v4"))
    return s3.Bucket(BUCKET)


class RunPodAdmin:
    """Reads job statuses and sets faults on the local RunPod endpoint."""

    def __init__(self, stack: LocalStack) -> None:
        assert stack.addresses is not None
        self.base = f"{stack.addresses.runpod}/{ENDPOINT_ID}"
        self.root = stack.addresses.runpod.removesuffix("/v2")
        self.headers = {"Authorization": f"Bearer {stack.api_key}"}

    def status(self, remote_id: str) -> dict:
        return requests.get(f"{self.base}/status/{remote_id}", headers=self.headers, timeout=10).json()

    def faults(self, **settings: object) -> None:
        response = requests.post(f"{self.root}/admin/faults", json=settings, headers=self.headers, timeout=10)
        response.raise_for_status()


@pytest.fixture(scope="package")
def runpod(stack: LocalStack) -> RunPodAdmin:
    return RunPodAdmin(stack)


@pytest.fixture(scope="package")
def face() -> bytes:
    return reference_face()


@pytest.fixture(scope="package")
def template() -> bytes:
    return template_photo()


@pytest.fixture
def samples_dir(tmp_path: Path) -> Path:
    return tmp_path
