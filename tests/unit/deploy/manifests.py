"""The Kubernetes manifests as Kubernetes will see them: rendered by the Kustomize inside kubectl.

``render()`` runs ``kubectl kustomize`` (kubectl 1.27+ embeds Kustomize 5) on a
copy of ``deploy/k8s`` in which the git-ignored secret files of the gpu overlay
exist with placeholder values, so that a checkout renders like a deployment.
The helpers below read the rendered objects.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

Obj = dict[str, Any]

KUBECTL = shutil.which("kubectl")
# `patches:` with `path:` and `replicas:` need Kustomize 4+; the tests were written against 5.5.
MIN_KUSTOMIZE = (5, 0)
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


class RenderError(RuntimeError):
    """kubectl could not render a kustomization."""


def load_documents(path: Path) -> list[Obj]:
    """The non-empty YAML documents of a file."""
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


@functools.cache
def _kustomize_version() -> tuple[int, ...]:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "version", "--client", "-o", "json"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    raw = json.loads(out).get("kustomizeVersion", "")
    match = re.match(r"v?(\d+)\.(\d+)", raw)
    if match is None:
        raise RenderError(f"{KUBECTL} reports no Kustomize version ({raw!r}); kubectl 1.27 or newer is needed")
    return tuple(int(part) for part in match.groups())


def _write_placeholder_secrets(root: Path) -> None:
    """Gives every missing file a ``secretGenerator`` reads from a ``secrets/`` folder a placeholder value
    (those files are git-ignored: they hold real credentials on the deploying machine only)."""
    for kustomization in root.rglob("kustomization.yaml"):
        for generator in load_documents(kustomization)[0].get("secretGenerator", []):
            for entry in generator.get("files", []):
                path = kustomization.parent / (str(entry).partition("=")[2] or str(entry))
                if not path.exists() and path.parent.name == "secrets":
                    path.write_text(f"placeholder-{path.name}")


def render(k8s_dir: Path, name: str) -> list[Obj]:
    """``kubectl kustomize <k8s_dir>/<name>`` as a list of objects; skips the test when kubectl is absent."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: the manifests are rendered with `kubectl kustomize` "
                    "(kubectl 1.27+, which embeds Kustomize 5)")
    version = _kustomize_version()
    if version < MIN_KUSTOMIZE:
        raise RenderError(f"{KUBECTL} embeds Kustomize {'.'.join(map(str, version))}; "
                          f"{'.'.join(map(str, MIN_KUSTOMIZE))} or newer is needed (kubectl 1.27+)")
    with tempfile.TemporaryDirectory(prefix="facegen-k8s-") as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(k8s_dir, copy)
        _write_placeholder_secrets(copy)
        result = subprocess.run([KUBECTL, "kustomize", str(copy / name)], capture_output=True, text=True,
                                timeout=120)
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {name} failed:\n{result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec of a workload object, or None for other kinds."""
    if obj["kind"] in WORKLOAD_KINDS:
        spec: Obj = obj["spec"]["template"]["spec"]
        return spec
    if obj["kind"] == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    return None


def containers(obj: Obj) -> list[Obj]:
    """Every container (init containers included) of a workload object."""
    spec = pod_spec(obj)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` → (name, tag, digest); a registry port is not a tag."""
    rest, _, digest = image.partition("@")
    name, tag = rest, None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1:]
    return name, tag, digest or None


def redis_directives(config: str) -> dict[str, str]:
    """A redis.conf as {directive: arguments} (comments and blank lines left out; the last one wins)."""
    directives: dict[str, str] = {}
    for line in config.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            name, _, arguments = stripped.partition(" ")
            directives[name.lower()] = arguments.strip()
    return directives
