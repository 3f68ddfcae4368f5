"""The Dockerfiles copy what exists, pin what they install, and run each service as built."""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from grpc_health.v1 import health_pb2
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from services.swapper.settings import IDENTITY_MODULES
from tests.unit.deploy import dockerfile
from tests.unit.deploy.deploy_facts import (
    DEPLOY,
    PORTS,
    REPO,
    dependency_closure,
    imported_at_start,
    pinned_names,
    service_modules,
    third_party_distributions,
)

pytestmark = pytest.mark.unit

DOCKER = DEPLOY / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
CONSTRAINTS = REPO / "constraints.txt"
# A tag that names a version (digits), e.g. 3.11.13-slim-bookworm — not latest, not a bare distro name.
VERSION_TAG = re.compile(r"\d+\.\d+")


def final_stage(path: Path) -> list[dockerfile.Instruction]:
    return dockerfile.stages(dockerfile.parse(path))[-1]


def pip_installs(path: Path) -> list[list[str]]:
    """The argument lists of every ``pip install`` in the RUN instructions."""
    found = []
    for instruction in dockerfile.parse(path):
        if instruction.keyword != "RUN":
            continue
        lexer = shlex.shlex(instruction.args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|()"):
                for index, word in enumerate(command):
                    if word.endswith("pip") and command[index + 1:index + 2] == ["install"]:
                        found.append(command[index + 2:])
                command = []
            else:
                command.append(token)
    return found


def installed_names(args: list[str]) -> list[str]:
    """The requirement names on a pip command line (options and their values left out)."""
    names, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in {"-c", "-r", "--constraint", "--requirement", "--index-url", "--extra-index-url"}:
            skip = True
        elif not arg.startswith("-") and not arg.startswith("$"):
            names.append(str(canonicalize_name(Requirement(arg).name)))
    return names


def test_there_is_a_dockerfile_per_service_and_a_local_store() -> None:
    names = {path.name for path in DOCKERFILES}
    assert {f"{service}.Dockerfile" for service in PORTS} | {"s3-local.Dockerfile"} <= names


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(path: Path) -> None:
    instructions = dockerfile.parse(path)
    args = dockerfile.global_args(instructions)
    stage_names: set[str] = set()
    for stage in dockerfile.stages(instructions):
        words = stage[0].words()
        image = dockerfile.substitute(words[0], args)
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])
        if image in stage_names - {words[-1]}:
            continue
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert "@sha256:" in image or (name and VERSION_TAG.search(tag)), f"{path.name}: {image}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copied_paths_exist_and_pass_the_dockerignore(path: Path) -> None:
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} keeps .venv and models out of the build context"
    copies = [i for i in dockerfile.parse(path) if i.keyword in {"COPY", "ADD"}]
    assert copies
    for instruction in copies:
        assert instruction.keyword == "COPY", "ADD fetches URLs and unpacks archives: use COPY"
        words = instruction.words()
        if any(word.startswith("--from=") for word in words):
            continue
        sources = [word for word in words[:-1] if not word.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"{path.name}:{instruction.line}: {source} does not exist"
            assert dockerignore_sends(ignore, source), f"{ignore.name} leaves {source} out"


def dockerignore_sends(ignore: Path, source: str) -> bool:
    target = REPO / source
    if target.is_file():
        return dockerfile.dockerignore_includes(ignore, source)
    files = [p for p in target.rglob("*.py") if "__pycache__" not in p.parts]
    return bool(files) and all(
        dockerfile.dockerignore_includes(ignore, str(p.relative_to(REPO))) for p in files)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_runtime_user_is_unprivileged(path: Path) -> None:
    users = [i.args for i in final_stage(path) if i.keyword == "USER"]
    assert users, f"{path.name} runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0, users[-1]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_pip_install_is_pinned_by_the_constraints(path: Path) -> None:
    pinned = pinned_names(CONSTRAINTS)
    installs = pip_installs(path)
    assert installs
    for args in installs:
        names = installed_names(args)
        uses_constraints = "-c" in args or "--constraint" in args
        # torch from its own index takes the pin straight from constraints.txt ("$torch_pin").
        assert uses_constraints or "$torch_pin" in args, f"{path.name}: pip install {args}"
        assert set(names) <= pinned, f"{path.name}: {set(names) - pinned} not pinned in constraints.txt"


def test_everything_the_images_install_is_pinned_with_its_dependencies() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    requested = {str(canonicalize_name(Requirement(line).name)) for line in pyproject["project"]["dependencies"]}
    for path in DOCKERFILES:
        for args in pip_installs(path):
            requested.update(installed_names(args))
    # The packaging tools come with the venv; torch's CUDA wheels pin their nvidia-* deps themselves.
    unpinned = dependency_closure(frozenset(requested)) - pinned_names(CONSTRAINTS) - {"pip", "setuptools", "wheel"}
    assert not unpinned, f"installed by the images but not pinned in constraints.txt: {sorted(unpinned)}"


@pytest.mark.parametrize("service", sorted(PORTS))
def test_service_image_listens_exposes_checks_and_starts_the_service(service: str) -> None:
    path = DOCKER / f"{service}.Dockerfile"
    stage = final_stage(path)
    env = dockerfile.env_values(stage)
    port = PORTS[service]
    assert env[f"{service.upper()}_LISTEN"] == f"0.0.0.0:{port}"
    assert [i.args for i in stage if i.keyword == "EXPOSE"] == [str(port)]
    healthcheck = [i for i in stage if i.keyword == "HEALTHCHECK"]
    assert len(healthcheck) == 1 and f"127.0.0.1:{port}" in healthcheck[0].args
    entrypoint = [i.words() for i in stage if i.keyword == "ENTRYPOINT"]
    assert entrypoint == [["python", "-m", f"services.{service}"]]
    assert (REPO / "services" / service / "__main__.py").is_file()
    assert env["PYTHONPATH"].split(":") == ["/app", "/app/protos"]
    copies = {tuple(i.words()) for i in stage if i.keyword == "COPY"}
    assert {("protos/", "/app/protos/"), ("services/__init__.py", "/app/services/__init__.py"),
            ("services/common/", "/app/services/common/"), (f"services/{service}/", f"/app/services/{service}/"),
            } <= copies
    # Paths that settings point at inside the image exist in the sources copied to /app.
    for name, value in env.items():
        if value.startswith("/app/"):
            assert (REPO / value.removeprefix("/app/")).exists(), f"{name}={value}"


@pytest.mark.parametrize("service", sorted(PORTS))
def test_each_image_holds_its_service_and_what_it_imports_and_nothing_else(service: str) -> None:
    copied = [words[0] for words in (i.words() for i in final_stage(DOCKER / f"{service}.Dockerfile")
                                     if i.keyword == "COPY") if not words[0].startswith("--")]
    sources = [(REPO / source).resolve() for source in copied]
    for path in service_modules(service):
        assert any(path == source or source in path.parents for source in sources), \
            f"{service}.Dockerfile does not copy {path.relative_to(REPO)}, which the {service} imports"
    others = {other for other in PORTS if other != service} | {"stack", "cli", "faceswap_worker"}
    assert not [source for source in copied if source.rstrip("/") in {"services", *(f"services/{o}" for o in others)}]


@pytest.mark.parametrize("service", ["gateway", "swapper"])
def test_slim_images_install_everything_their_service_imports(service: str) -> None:
    listed: set[str] = set()
    for args in pip_installs(DOCKER / f"{service}.Dockerfile"):
        listed.update(installed_names(args))
    available = dependency_closure(frozenset(listed))
    needed = third_party_distributions(service)
    missing = {dist: sorted(where) for dist, where in needed.items() if dist not in available}
    assert not missing, f"{service}.Dockerfile does not install what these modules import: {missing}"


def test_the_default_swapper_image_has_no_identity_extra_and_needs_none() -> None:
    # numpy, dlib and dlib's models are installed only with SWAPPER_IDENTITY=true (~180 MB): no module of
    # the swapper may import them when it is loaded (the identity check's child processes import them).
    text = (DOCKER / "swapper.Dockerfile").read_text()
    assert "ARG SWAPPER_IDENTITY=false" in text
    assert re.search(r"true\) /opt/venv/bin/pip install -c /tmp/constraints.txt dlib-bin face-recognition-models numpy",
                     text)
    offenders = {str(path.relative_to(REPO)): module for path, modules in imported_at_start("swapper").items()
                 for module in modules if module.split(".")[0] in IDENTITY_MODULES}
    assert not offenders, f"imported when the swapper starts, but not in its default image: {offenders}"


def test_generator_image_installs_what_the_generator_imports() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = {str(canonicalize_name(Requirement(line).name)) for line in pyproject["project"]["dependencies"]}
    available = dependency_closure(frozenset(declared))
    missing = {dist: sorted(where) for dist, where in third_party_distributions("generator").items()
               if dist not in available}
    assert not missing, f"imported by the generator but not a project dependency: {missing}"
    text = (DOCKER / "generator.Dockerfile").read_text()
    assert '["project"]["dependencies"]' in text, "the generator image installs pyproject's dependencies"


def test_generator_image_builds_the_tiny_models_it_points_at() -> None:
    text = (DOCKER / "generator.Dockerfile").read_text()
    env = dockerfile.env_values(final_stage(DOCKER / "generator.Dockerfile"))
    assert f"python -m services.generator.tiny_models {env['GENERATOR_MODELS_DIR']}" in text
    assert (REPO / "services/generator/tiny_models.py").is_file()
    assert env["HF_HUB_OFFLINE"] == "1"
    # safetensors files are written 0600 by root; the runtime user must be able to read them.
    assert f"chmod -R a+rX {env['GENERATOR_MODELS_DIR']}" in text


# --- the health check script ---------------------------------------------------------------------

def load_health_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grpc_health_check", DOCKER / "grpc_health_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_check_fails_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    module = load_health_check()
    # Port 1 on loopback: connection refused at once.
    assert module.main(["127.0.0.1:1", "--timeout", "2"]) == 1
    assert "did not answer" in capsys.readouterr().err


@pytest.mark.parametrize(("status", "code"), [
    (health_pb2.HealthCheckResponse.SERVING, 0),
    (health_pb2.HealthCheckResponse.NOT_SERVING, 1),
    (health_pb2.HealthCheckResponse.SERVICE_UNKNOWN, 1),
])
def test_health_check_exit_code_follows_the_status(monkeypatch: pytest.MonkeyPatch, status: int,
                                                   code: int) -> None:
    module = load_health_check()
    asked: list[tuple[str, str, float]] = []

    def fake_probe(target: str, service: str, timeout: float) -> int:
        asked.append((target, service, timeout))
        return status

    monkeypatch.setattr(module, "probe", fake_probe)
    assert module.main(["127.0.0.1:50051", "--service", "facegen.v1.Gateway"]) == code
    assert asked == [("127.0.0.1:50051", "facegen.v1.Gateway", 3.0)]
