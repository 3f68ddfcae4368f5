"""A small `kustomize build` for the subset of kustomize that deploy/k8s uses.

There is no kustomize binary on the development machines (Debian's kubectl
1.20 embeds a kustomize too old for ``patches:``), so the tests render the
base and overlays with this instead. It implements, with kustomize's
semantics: ``resources`` (files and directories), ``namespace``,
``configMapGenerator``/``secretGenerator`` (literals, files, envs; behavior
create, merge, replace), ``patches`` with ``path`` (strategic merge patches),
``images`` and ``replicas``. Any other field is rejected, so a kustomization
that outgrows the subset fails loudly here rather than being half rendered.

Two simplifications, neither of which changes what is validated: generated
names get no content-hash suffix (kustomize adds one and rewrites the
references to it), and objects keep their source order.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

SUPPORTED_FIELDS = frozenset({
    "apiVersion", "kind", "namespace", "resources", "patches", "images", "replicas",
    "configMapGenerator", "secretGenerator",
})
# Kinds that live outside namespaces (the namespace transformer leaves them alone).
CLUSTER_SCOPED = frozenset({
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
    "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass",
})
# Strategic-merge keys of the Kubernetes list fields the patches touch; other lists are replaced.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "hostAliases": "ip",
}
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})

MissingFile = Callable[[Path], str]


class KustomizeError(ValueError):
    """The kustomization cannot be rendered."""


def _raise_missing(path: Path) -> str:
    raise KustomizeError(f"{path} does not exist")


def load_documents(path: Path) -> list[Obj]:
    """The non-empty YAML documents of a file."""
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def build(directory: Path, missing_file: MissingFile = _raise_missing) -> list[Obj]:
    """Renders the kustomization in ``directory`` into a list of objects.

    ``missing_file(path)`` supplies the content of a generator's file that does
    not exist (git-ignored secrets); by default a missing file is an error.
    """
    directory = directory.resolve()
    kustomization = _read_kustomization(directory)
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(build(target, missing_file))
        elif target.is_file():
            objects.extend(copy.deepcopy(load_documents(target)))
        else:
            raise KustomizeError(f"{directory}: resource {entry} does not exist")
    _check_unique(objects, directory)
    for spec in kustomization.get("configMapGenerator", []):
        _generate(objects, "ConfigMap", spec, directory, missing_file)
    for spec in kustomization.get("secretGenerator", []):
        _generate(objects, "Secret", spec, directory, missing_file)
    for patch_entry in kustomization.get("patches", []):
        _apply_patch_file(objects, patch_entry, directory)
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = namespace
    for image in kustomization.get("images", []):
        _set_image(objects, image)
    for replica in kustomization.get("replicas", []):
        _set_replicas(objects, replica, directory)
    return objects


def _read_kustomization(directory: Path) -> Obj:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    docs = load_documents(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise KustomizeError(f"{path} must hold exactly one mapping")
    kustomization = docs[0]
    if kustomization.get("kind") != "Kustomization":
        raise KustomizeError(f"{path}: kind must be Kustomization")
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields {sorted(unknown)} are not supported by this renderer")
    return kustomization


def object_id(obj: Obj) -> tuple[str, str]:
    """(kind, name) — unique within one rendered namespace."""
    return obj["kind"], obj["metadata"]["name"]


def _check_unique(objects: list[Obj], directory: Path) -> None:
    seen: set[tuple[str, str]] = set()
    for obj in objects:
        key = object_id(obj)
        if key in seen:
            raise KustomizeError(f"{directory}: {key} is defined twice")
        seen.add(key)


def _find(objects: list[Obj], kind: str, name: str) -> Obj | None:
    return next((obj for obj in objects if object_id(obj) == (kind, name)), None)


def _generator_data(spec: Obj, directory: Path, missing_file: MissingFile) -> dict[str, str]:
    data: dict[str, str] = {}
    for literal in spec.get("literals", []):
        key, sep, value = str(literal).partition("=")
        if not sep or not key:
            raise KustomizeError(f"{directory}: literal {literal!r} is not KEY=VALUE")
        data[key] = value
    for entry in spec.get("files", []):
        key, sep, rel = str(entry).partition("=")
        if not sep:
            key, rel = Path(entry).name, entry
        path = directory / rel
        data[key] = path.read_text() if path.is_file() else missing_file(path)
    for env_file in spec.get("envs", []):
        for number, line in enumerate((directory / env_file).read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise KustomizeError(f"{directory / env_file}:{number}: not KEY=VALUE")
            data[key.strip()] = value
    return data


def _generate(objects: list[Obj], kind: str, spec: Obj, directory: Path, missing_file: MissingFile) -> None:
    name = spec["name"]
    behavior = spec.get("behavior", "create")
    data = _generator_data(spec, directory, missing_file)
    if kind == "Secret":
        encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        data = encoded
    existing = _find(objects, kind, name)
    if behavior == "create":
        if existing is not None:
            raise KustomizeError(f"{directory}: {kind} {name} exists; use behavior merge or replace")
        obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "data": data}
        if kind == "Secret":
            obj["type"] = spec.get("type", "Opaque")
        objects.append(obj)
    elif behavior in {"merge", "replace"}:
        if existing is None:
            raise KustomizeError(f"{directory}: {kind} {name} to {behavior} is not in the resources")
        existing["data"] = {**existing.get("data", {}), **data} if behavior == "merge" else data
    else:
        raise KustomizeError(f"{directory}: unknown generator behavior {behavior!r}")


def _apply_patch_file(objects: list[Obj], entry: Obj, directory: Path) -> None:
    if set(entry) != {"path"}:
        raise KustomizeError(f"{directory}: only `patches: - path: FILE` is supported, not {entry}")
    for patch in load_documents(directory / entry["path"]):
        target = _find(objects, patch["kind"], patch["metadata"]["name"])
        if target is None:
            raise KustomizeError(f"{directory}: patch {entry['path']} targets {object_id(patch)}, "
                                 "which is not in the resources")
        body = {key: value for key, value in patch.items() if key not in {"apiVersion", "kind", "metadata"}}
        merged = strategic_merge(target, body)
        target.clear()
        target.update(merged)


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes strategic merge of ``patch`` into ``base`` (a new value; inputs untouched).

    Maps merge key by key (a null deletes); lists with a merge key merge item
    by item, new items appended; other lists and scalars are replaced.
    """
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        merge_key = _merge_key(field, base + patch)
        if merge_key is None:
            return copy.deepcopy(patch)
        result = copy.deepcopy(base)
        for item in patch:
            index = next((i for i, old in enumerate(result) if old.get(merge_key) == item.get(merge_key)),
                         None)
            if index is None:
                result.append(copy.deepcopy(item))
            else:
                result[index] = strategic_merge(result[index], item, field)
        return result
    return copy.deepcopy(patch)


def _merge_key(field: str, items: list[Any]) -> str | None:
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    if field == "ports":
        # Container ports merge on containerPort, Service ports on port.
        return "containerPort" if all("containerPort" in item for item in items) else "port"
    return MERGE_KEYS.get(field)


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


def _set_image(objects: list[Obj], image: Obj) -> None:
    for obj in objects:
        for container in containers(obj):
            name, tag, digest = split_image(container["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                tag, digest = None, image["digest"]
            elif "newTag" in image:
                tag, digest = str(image["newTag"]), None
            container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _set_replicas(objects: list[Obj], replica: Obj, directory: Path) -> None:
    matched = [obj for obj in objects
               if obj["metadata"]["name"] == replica["name"]
               and obj["kind"] in {"Deployment", "StatefulSet", "ReplicaSet"}]
    if not matched:
        raise KustomizeError(f"{directory}: replicas for {replica['name']} match no workload")
    for obj in matched:
        obj["spec"]["replicas"] = int(replica["count"])
