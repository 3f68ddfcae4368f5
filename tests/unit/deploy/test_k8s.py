"""The Kubernetes manifests render, validate against the API schemas, and are wired consistently."""

from __future__ import annotations

import functools
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.generator.catalog import load_catalog
from tests.unit.deploy.deploy_facts import DEPLOY, PORTS, REPO, known_env_vars
from tests.unit.deploy.kustomize_render import (
    KustomizeError,
    Obj,
    build,
    containers,
    load_documents,
    pod_spec,
    split_image,
    strategic_merge,
)

pytestmark = pytest.mark.unit

K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = ("base", "overlays/local", "overlays/gpu", "overlays/gpu/fetch-models")
# Complete deployments (kubectl apply -k works on them as they are).
DEPLOYABLE = ("overlays/local", "overlays/gpu")
# 1.27: the oldest release with GA gRPC probes; 1.37: the newest schemas bundled.
K8S_VERSIONS = ("1.27", "1.37")
PRESTOP_SLEEP_S = 5


def _placeholder_secret(path: Path) -> str:
    """Content for git-ignored secret files, which do not exist in a checkout."""
    if path.parent.name != "secrets":
        raise KustomizeError(f"{path} does not exist")
    return "placeholder"


@functools.cache
def rendered(name: str) -> tuple[Obj, ...]:
    return tuple(build(K8S / name, missing_file=_placeholder_secret))


def find(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def container(objects: tuple[Obj, ...], deployment: str, name: str | None = None) -> Obj:
    found = containers(find(objects, "Deployment", deployment))
    return next(c for c in found if c["name"] == (name or deployment))


def env_of(objects: tuple[Obj, ...], item: Obj) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom ConfigMaps, then env."""
    env: dict[str, str] = {}
    for source in item.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in item.get("env", []):
        env[var["name"]] = var.get("value", "<from a reference>")
    return env


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(obj: Obj) -> dict[str, str]:
    template = obj["spec"]["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" \
        else obj["spec"]["template"]
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


def workloads(objects: tuple[Obj, ...]) -> list[Obj]:
    return [obj for obj in objects if pod_spec(obj) is not None]


# --- rendering and schema validation -------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_rendered_object_validates_strictly(name: str, version: str) -> None:
    objects = rendered(name)
    assert objects
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.path}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_namespaced_object_lands_in_facegen(name: str) -> None:
    for obj in rendered(name):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "facegen", f"{obj['kind']}/{obj['metadata']['name']}"


def test_every_manifest_file_is_part_of_a_kustomization() -> None:
    used: set[Path] = set()
    for name in KUSTOMIZATIONS:
        directory = K8S / name
        used.add(directory / "kustomization.yaml")
        kustomization = load_documents(directory / "kustomization.yaml")[0]
        used.update((directory / entry).resolve() for entry in kustomization.get("resources", []))
        used.update((directory / patch["path"]).resolve() for patch in kustomization.get("patches", []))
    files = {path.resolve() for path in K8S.rglob("*.yaml")}
    assert files - {path.resolve() for path in used} == set(), "YAML files that no kustomization uses"


def test_no_secret_values_are_committed_for_the_gpu_overlay() -> None:
    kustomization = load_documents(K8S / "overlays/gpu/kustomization.yaml")[0]
    ignored = (K8S / "overlays/gpu/secrets/.gitignore").read_text().split()
    assert "*" in ignored, "secrets/ must be git-ignored"
    for generator in kustomization["secretGenerator"]:
        assert "literals" not in generator, f"{generator['name']} inlines values"
        for entry in generator["files"]:
            path = Path(entry.partition("=")[2] or entry)
            assert path.parts[0] == "secrets" and f"!{path.name}" not in ignored


# --- references ----------------------------------------------------------------------------------

def _references(spec: Obj) -> list[tuple[str, str, str | None]]:
    """(kind, name, key) for every ConfigMap, Secret and PVC a pod spec needs (optional ones left out)."""
    refs: list[tuple[str, str, str | None]] = []
    for volume in spec.get("volumes", []):
        if "secret" in volume and not volume["secret"].get("optional"):
            refs.append(("Secret", volume["secret"]["secretName"], None))
        if "configMap" in volume and not volume["configMap"].get("optional"):
            refs.append(("ConfigMap", volume["configMap"]["name"], None))
        if "persistentVolumeClaim" in volume:
            refs.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], None))
    for item in [*spec.get("initContainers", []), *spec["containers"]]:
        for source in item.get("envFrom", []):
            for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if field in source and not source[field].get("optional"):
                    refs.append((kind, source[field]["name"], None))
        for var in item.get("env", []):
            for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                ref = var.get("valueFrom", {}).get(field)
                if ref and not ref.get("optional"):
                    refs.append((kind, ref["name"], ref["key"]))
    return refs


@pytest.mark.parametrize("name", [*DEPLOYABLE, "overlays/gpu/fetch-models"])
def test_every_reference_resolves(name: str) -> None:
    objects = rendered(name)
    # The fetch Job is applied into a namespace where the gpu overlay already runs.
    available = objects + rendered("overlays/gpu") if name.endswith("fetch-models") else objects
    for workload in workloads(objects):
        spec = pod_spec(workload)
        assert spec is not None
        for kind, ref_name, key in _references(spec):
            target = find(available, kind, ref_name)
            if key is not None:
                assert key in target["data"], f"{kind}/{ref_name} has no key {key}"
        volumes = {volume["name"] for volume in spec.get("volumes", [])}
        for item in spec["containers"]:
            for mount in item.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{workload['metadata']['name']}: {mount['name']}"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_services_and_policies_select_existing_pods(name: str) -> None:
    objects = rendered(name)
    pods = workloads(objects)
    for service in (obj for obj in objects if obj["kind"] == "Service"):
        selected = [pod for pod in pods if matches(service["spec"]["selector"], pod_labels(pod))]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"
        port_names = {port.get("name") for c in containers(selected[0]) for port in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    for policy in (obj for obj in objects if obj["kind"] == "NetworkPolicy"):
        selectors = [policy["spec"]["podSelector"].get("matchLabels", {})]
        for rule in policy["spec"].get("ingress", []):
            selectors += [peer["podSelector"]["matchLabels"] for peer in rule.get("from", [])]
        for selector in selectors:
            if selector:
                assert any(matches(selector, pod_labels(pod)) for pod in pods), policy["metadata"]["name"]


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_only_the_gateway_is_reachable_from_outside(name: str) -> None:
    objects = rendered(name)
    exposed = {obj["metadata"]["name"] for obj in objects
               if obj["kind"] == "Service" and obj["spec"].get("type", "ClusterIP") != "ClusterIP"}
    assert exposed == {"gateway"}
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    deny_all = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny_all, "no default-deny ingress policy"
    open_to_all = [p["metadata"]["name"] for p in policies
                   for rule in p["spec"].get("ingress", []) if "from" not in rule]
    assert open_to_all == ["gateway-ingress"]


# --- the services' pods --------------------------------------------------------------------------

@pytest.mark.parametrize("name", [*DEPLOYABLE, "overlays/gpu/fetch-models"])
def test_every_pod_is_hardened_and_sized(name: str) -> None:
    for workload in workloads(rendered(name)):
        spec = pod_spec(workload)
        assert spec is not None
        where = workload["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for item in containers(workload):
            context = item["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert {"/tmp"} <= {mount["mountPath"] for mount in item.get("volumeMounts", [])}, where
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(item["resources"][part]), f"{where} {part}"
            _, tag, digest = split_image(item["image"])
            assert digest or (tag and tag != "latest"), f"{where}: image {item['image']} is not pinned"


@pytest.mark.parametrize("service", sorted(PORTS))
@pytest.mark.parametrize("name", DEPLOYABLE)
def test_grpc_services_listen_probe_and_drain_consistently(name: str, service: str) -> None:
    objects = rendered(name)
    deployment = find(objects, "Deployment", service)
    item = container(objects, service)
    port = PORTS[service]
    env = env_of(objects, item)
    assert env[f"{service.upper()}_LISTEN"] == f"0.0.0.0:{port}"
    assert [p["containerPort"] for p in item["ports"]] == [port]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert item[probe]["grpc"]["port"] == port, probe
    grace = float(env.get(f"{service.upper()}_GRACE_SECONDS", "10"))
    pre_stop = item["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and float(pre_stop[1]) == PRESTOP_SLEEP_S
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace + PRESTOP_SLEEP_S
    startup = item["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    # The generator loads and warms a model before it is SERVING: minutes on a real checkpoint.
    assert budget >= (600 if service == "generator" else 30)
    service_obj = find(objects, "Service", service)
    assert [p["port"] for p in service_obj["spec"]["ports"]] == [port]


@pytest.mark.parametrize("service", sorted(PORTS))
@pytest.mark.parametrize("name", DEPLOYABLE)
def test_every_variable_set_is_one_the_service_reads(name: str, service: str) -> None:
    objects = rendered(name)
    env = env_of(objects, container(objects, service))
    unknown = set(env) - known_env_vars(service)
    assert not unknown, f"{service} does not read {sorted(unknown)}"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_gateway_finds_its_upstreams(name: str) -> None:
    objects = rendered(name)
    env = env_of(objects, container(objects, "gateway"))
    for variable, service in (("GENERATOR_ADDRESS", "generator"), ("SWAPPER_ADDRESS", "swapper")):
        assert env[variable] == f"{service}:{PORTS[service]}"
        find(objects, "Service", service)


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_gateway_disruption_budget_allows_a_drain(name: str) -> None:
    objects = rendered(name)
    budget = find(objects, "PodDisruptionBudget", "gateway")
    gateway = find(objects, "Deployment", "gateway")
    assert matches(budget["spec"]["selector"]["matchLabels"], pod_labels(gateway))
    assert 0 < budget["spec"]["minAvailable"] < gateway["spec"]["replicas"]


# --- overlays ------------------------------------------------------------------------------------

def test_gpu_overlay_runs_the_generator_on_a_gpu_with_weights_from_a_volume() -> None:
    objects = rendered("overlays/gpu")
    spec = find(objects, "Deployment", "generator")["spec"]["template"]["spec"]
    item = container(objects, "generator")
    assert item["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert spec["nodeSelector"]
    env = env_of(objects, item)
    assert env["GENERATOR_DEVICE"] == "cuda"
    assert env["HF_HUB_OFFLINE"] == "1"
    mounts = {mount["name"]: mount for mount in item["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    models = mounts["models"]
    assert models["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "generator-models"
    find(objects, "PersistentVolumeClaim", "generator-models")
    for variable in ("HF_HOME", "GENERATOR_MODELS_DIR"):
        assert Path(env[variable]).is_relative_to(models["mountPath"]), variable
    catalog = Path(env["GENERATOR_CATALOG"])
    assert str(catalog.parent) == mounts["catalog"]["mountPath"]
    catalog_map = find(objects, "ConfigMap", volumes["catalog"]["configMap"]["name"])
    assert catalog.name in catalog_map["data"]


def test_gpu_catalog_loads_and_the_fetch_job_downloads_its_models() -> None:
    catalog = load_catalog(K8S / "overlays/gpu/catalog.toml", Path("/models"))
    hf_ids = {spec.hf_id for spec in catalog.models.values() if spec.hf_id}
    assert catalog.default_model in catalog.models and hf_ids
    job = find(rendered("overlays/gpu/fetch-models"), "Job", "generator-models-fetch")
    fetch = containers(job)[0]
    env = {var["name"]: var.get("value") for var in fetch["env"]}
    assert hf_ids <= set(shlex.split(env["MODELS"]))
    assert env["HF_HUB_OFFLINE"] == "0"
    gpu = rendered("overlays/gpu")
    generator_env = env_of(gpu, container(gpu, "generator"))
    assert env["HF_HOME"] == generator_env["HF_HOME"]
    assert fetch["image"] == container(gpu, "generator")["image"]
    claim = next(v for v in job["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"]["claimName"] == "generator-models"


def test_local_overlay_wires_the_swapper_to_the_in_cluster_stand_ins() -> None:
    objects = rendered("overlays/local")
    env = env_of(objects, container(objects, "swapper"))
    s3_port = find(objects, "Service", "s3-local")["spec"]["ports"][0]["port"]
    assert env["S3_ENDPOINT_URL"] == f"http://s3-local:{s3_port}"
    worker_port = find(objects, "Service", "faceswap-worker")["spec"]["ports"][0]["port"]
    assert env["RUNPOD_API_BASE"] == f"http://faceswap-worker:{worker_port}/v2"
    worker = container(objects, "faceswap-worker", "worker")
    args = worker["args"]
    assert args[args.index("--endpoint-id") + 1] == env["FACE_SWAP_ENDPOINT"]
    assert "--api-key" not in args, "the key belongs in the environment, not the command line"
    endpoint_main = (REPO / "services/stack/runpod_emulator/__main__.py").read_text()
    assert 'os.environ.get("RUNPOD_API_KEY"' in endpoint_main, "the endpoint no longer reads RUNPOD_API_KEY"
    key_ref = next(v for v in worker["env"] if v["name"] == "RUNPOD_API_KEY")["valueFrom"]["secretKeyRef"]
    swapper_spec = find(objects, "Deployment", "swapper")["spec"]["template"]["spec"]
    runpod_volume = next(v for v in swapper_spec["volumes"] if v["name"] == "runpod-credentials")
    assert key_ref["name"] == runpod_volume["secret"]["secretName"]


# --- the renderer itself -------------------------------------------------------------------------

def test_strategic_merge_merges_keyed_lists_and_replaces_the_others() -> None:
    base: dict[str, Any] = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}],
                                            "args": ["--one"]}],
                            "tolerations": [{"key": "old"}], "drop": 1}
    patch: dict[str, Any] = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}],
                                             "args": ["--two"]},
                                            {"name": "b"}],
                             "tolerations": [{"key": "new"}], "drop": None}
    merged = strategic_merge(base, patch)
    assert merged["containers"][0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    assert merged["containers"][0]["args"] == ["--two"]
    assert [c["name"] for c in merged["containers"]] == ["a", "b"]
    assert merged["tolerations"] == [{"key": "new"}]
    assert "drop" not in merged
    assert base["containers"][0]["args"] == ["--one"], "the input was modified"


def test_strategic_merge_merges_service_ports_on_port() -> None:
    base = {"ports": [{"name": "grpc", "port": 50051, "targetPort": "grpc"}]}
    merged = strategic_merge(base, {"ports": [{"port": 50051, "nodePort": 30051}]})
    assert merged["ports"] == [{"name": "grpc", "port": 50051, "targetPort": "grpc", "nodePort": 30051}]


def test_split_image_keeps_a_registry_port_out_of_the_tag() -> None:
    assert split_image("registry:5000/facegen/gateway") == ("registry:5000/facegen/gateway", None, None)
    assert split_image("registry:5000/gateway:1.0@sha256:ab") == ("registry:5000/gateway", "1.0", "sha256:ab")


def test_the_renderer_rejects_fields_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "labels": []}))
    with pytest.raises(KustomizeError, match="labels"):
        build(tmp_path)
