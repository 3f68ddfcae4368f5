"""deploy/compose.yaml parses, checks every service's health and wires the stack together."""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.unit.deploy import dockerfile
from tests.unit.deploy.deploy_facts import DEPLOY, PORTS, REPO, known_env_vars

pytestmark = pytest.mark.unit

COMPOSE = DEPLOY / "compose.yaml"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME:+alt}; $$ is a literal $.
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def interpolate(value: Any, environ: dict[str, str]) -> Any:
    """Compose's variable substitution, applied to every string of a parsed file."""
    if isinstance(value, dict):
        return {key: interpolate(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environ) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        current = environ.get(name)
        if operator in {":-", "-"}:
            use_default = current is None or (operator == ":-" and current == "")
            return argument if use_default else str(current)
        if operator in {":?", "?"}:
            if current is None or (operator == ":?" and current == ""):
                raise ValueError(f"{name} is required: {argument}")
            return current
        if operator in {":+", "+"}:
            return argument if current else ""
        return current or ""

    return INTERPOLATION.sub(replace, value)


@functools.cache
def compose(environ: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with ``environ`` set."""
    raw = yaml.safe_load(COMPOSE.read_text())
    resolved: dict[str, Any] = interpolate(raw, dict(environ))
    return resolved


def service_env(name: str, environ: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    services = compose(environ)["services"]
    service = services[name]
    env = dict(services[service["extends"]["service"]].get("environment", {})) if "extends" in service else {}
    env.update(service.get("environment", {}))
    return {key: str(value) for key, value in env.items()}


def test_every_dollar_sign_is_a_valid_interpolation() -> None:
    text = INTERPOLATION.sub("", COMPOSE.read_text())
    assert "$" not in text, "a $ that compose would not substitute as intended"


def test_the_stack_has_its_services_and_each_has_a_health_check() -> None:
    services = compose()["services"]
    assert {"gateway", "generator", "swapper", "s3", "faceswap-worker"} <= set(services)
    for name, service in services.items():
        check = service.get("healthcheck") or services.get(service.get("extends", {}).get("service"), {}).get(
            "healthcheck")
        assert check and check["test"][0] in {"CMD", "CMD-SHELL"}, f"{name} has no health check"
        assert {"interval", "timeout", "retries"} <= set(check), name


@pytest.mark.parametrize("name", ["gateway", "generator", "generator-gpu", "swapper", "s3", "faceswap-worker"])
def test_every_build_uses_the_repository_and_an_existing_dockerfile(name: str) -> None:
    services = compose()["services"]
    service = services[name]
    build = {**services.get(service.get("extends", {}).get("service"), {}).get("build", {}),
             **service.get("build", {})}
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).is_file(), build["dockerfile"]
    assert service["image"].rpartition(":")[2] not in {"", "latest"}


@pytest.mark.parametrize("service", sorted(PORTS))
def test_grpc_services_listen_check_and_drain_consistently(service: str) -> None:
    config = compose()["services"][service]
    env = service_env(service)
    port = PORTS[service]
    assert env[f"{service.upper()}_LISTEN"] == f"0.0.0.0:{port}"
    assert config["healthcheck"]["test"][-1] == f"127.0.0.1:{port}"
    grace = float(env[f"{service.upper()}_GRACE_SECONDS"])
    assert float(config["stop_grace_period"].rstrip("s")) > grace
    assert config["read_only"] is True and config["cap_drop"] == ["ALL"]
    assert "/tmp" in config["tmpfs"]


def test_only_the_gateway_and_the_local_store_publish_ports_on_loopback() -> None:
    published = {name: service["ports"] for name, service in compose()["services"].items() if "ports" in service}
    assert set(published) == {"gateway", "s3"}
    for ports in published.values():
        assert all(str(port).startswith("127.0.0.1:") for port in ports)
    assert published["gateway"] == [f"127.0.0.1:{PORTS['gateway']}:{PORTS['gateway']}"]


def test_the_gateway_reaches_the_generator_and_the_swapper() -> None:
    services = compose()["services"]
    env = service_env("gateway")
    for variable, upstream in (("GENERATOR_ADDRESS", "generator"), ("SWAPPER_ADDRESS", "swapper")):
        host, _, port = env[variable].partition(":")
        assert host == upstream and host in services and int(port) == PORTS[upstream]
    assert services["gateway"]["depends_on"]["swapper"]["condition"] == "service_healthy"
    gpu = (("GENERATOR_ADDRESS", "generator-gpu:50052"),)
    assert service_env("gateway", gpu)["GENERATOR_ADDRESS"] == "generator-gpu:50052"


def test_the_swapper_uses_the_local_store_and_worker_by_default() -> None:
    services = compose()["services"]
    env = service_env("swapper")
    s3_entry = dockerfile.parse(DEPLOY / "docker/s3-local.Dockerfile")[-1].words()
    s3_port = s3_entry[s3_entry.index("-p") + 1]
    assert env["S3_ENDPOINT_URL"] == f"http://s3:{s3_port}"
    assert env["S3_CREATE_BUCKET"] == "true"
    published_s3 = services["s3"]["ports"][0].split(":")[1]
    assert env["S3_PUBLIC_BASE_URL"] == f"http://localhost:{published_s3}/{env['S3_BUCKET']}"
    command = services["faceswap-worker"]["command"]
    api = urlsplit(env["RUNPOD_API_BASE"])
    assert (api.hostname, str(api.port), api.path) == ("faceswap-worker", command[command.index("--port") + 1],
                                                       "/v2")
    assert command[command.index("--endpoint-id") + 1] == env["FACE_SWAP_ENDPOINT"]
    assert "--api-key" not in command  # argv is visible to every process on the host
    assert services["faceswap-worker"]["environment"]["FACESWAP_ENDPOINT_API_KEY"] == env["RUNPOD_API_KEY"]
    worker_check = services["faceswap-worker"]["healthcheck"]["test"]
    assert "os.environ['FACESWAP_ENDPOINT_API_KEY']" in worker_check[-1]
    assert f"/v2/{env['FACE_SWAP_ENDPOINT']}/health" in worker_check[-1]


def test_the_swapper_points_at_real_infrastructure_from_the_environment() -> None:
    real = (("S3_ENDPOINT_URL", "https://acct.r2.cloudflarestorage.com"), ("S3_CREATE_BUCKET", "false"),
            ("S3_PUBLIC_BASE_URL", ""), ("RUNPOD_API_BASE", "https://api.runpod.ai/v2"),
            ("RUNPOD_API_KEY", "rpa_real"), ("FACE_SWAP_ENDPOINT", "abc123"))
    env = service_env("swapper", real)
    assert env["S3_ENDPOINT_URL"] == "https://acct.r2.cloudflarestorage.com"
    assert env["S3_PUBLIC_BASE_URL"] == "", "an explicitly empty public URL must stay empty (presigned URLs)"
    assert (env["RUNPOD_API_BASE"], env["RUNPOD_API_KEY"], env["FACE_SWAP_ENDPOINT"]) == (
        "https://api.runpod.ai/v2", "rpa_real", "abc123")


def test_the_gpu_generator_is_a_cuda_build_with_a_gpu_and_offline_weights() -> None:
    services = compose()["services"]
    gpu = services["generator-gpu"]
    assert gpu["extends"]["service"] == "generator" and gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    assert services["generator"]["build"]["args"]["VARIANT"] == "cpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = service_env("generator-gpu")
    assert env["GENERATOR_DEVICE"] == "cuda" and env["HF_HUB_OFFLINE"] == "1"
    mount = gpu["volumes"][0].split(":")
    assert mount[1] == env["HF_HOME"] and mount[2] == "ro"


@pytest.mark.parametrize("service", ["gateway", "generator", "generator-gpu", "swapper"])
def test_every_variable_set_is_one_the_service_reads(service: str) -> None:
    unknown = set(service_env(service)) - known_env_vars(service.removesuffix("-gpu"))
    assert not unknown, f"{service} does not read {sorted(unknown)}"


def test_interpolation_follows_compose_rules() -> None:
    assert interpolate("${A:-x}", {"A": ""}) == "x"
    assert interpolate("${A-x}", {"A": ""}) == ""
    assert interpolate("${A-x}", {}) == "x"
    assert interpolate("$${A}", {"A": "1"}) == "${A}"
    with pytest.raises(ValueError, match="A is required"):
        interpolate("${A:?set A}", {})


def test_compose_file_is_where_the_docs_say() -> None:
    docs = (REPO / "docs/deploy.md").read_text()
    assert "docker compose -f deploy/compose.yaml" in docs
