"""The Kubernetes manifests, rendered by the Kustomize inside kubectl, validate against the API
schemas and are wired consistently: N gateways on one Redis, round_robin to every upstream pod,
autoscaling, disruption budgets and drains that fit the services' own timings."""

from __future__ import annotations

import base64
import functools
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.gateway.auth import parse_tokens
from services.generator.catalog import load_catalog
from tests.unit.deploy.cert_manager import certificate_secrets, check, is_cert_manager
from tests.unit.deploy.deploy_facts import DEPLOY, PORTS, REPO, known_env_vars
from tests.unit.deploy.manifests import (
    Obj,
    containers,
    load_documents,
    pod_spec,
    redis_directives,
    render,
    split_image,
)

pytestmark = pytest.mark.unit

K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = ("base", "overlays/local", "overlays/gpu", "overlays/gpu/fetch-models", "overlays/tls")
# Kustomize components: parts an overlay adds with `components:` (rendered through the overlays that do).
COMPONENTS = ("components/tls",)
# Complete deployments (kubectl apply -k works on them as they are).
DEPLOYABLE = ("overlays/local", "overlays/gpu", "overlays/tls")
# 1.27: the oldest release with GA gRPC probes; 1.37: the newest schemas bundled.
K8S_VERSIONS = ("1.27", "1.37")
PRESTOP_SLEEP_S = 5
# Scaled by a HorizontalPodAutoscaler; the generator scales with GPUs, by hand.
AUTOSCALED = ("gateway", "swapper")
REDIS_PORT = 6379


@functools.cache
def rendered(name: str) -> tuple[Obj, ...]:
    return tuple(render(K8S, name))


def find(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    """The one object of ``kind`` named ``name`` (generated ConfigMaps and Secrets by their hashed
    name, which is how the pods refer to them)."""
    found = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(objects: tuple[Obj, ...], workload: str, name: str | None = None, kind: str = "Deployment") -> Obj:
    return next(c for c in containers(find(objects, kind, workload)) if c["name"] == (name or workload))


def env_of(objects: tuple[Obj, ...], item: Obj) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom ConfigMaps, then env."""
    env: dict[str, str] = {}
    for source in item.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in item.get("env", []):
        env[var["name"]] = var.get("value", "<from a reference>")
    return env


def value_from(item: Obj, name: str) -> Obj:
    """The ``valueFrom`` of a container's variable ``name``."""
    ref: Obj = next(var for var in item.get("env", []) if var["name"] == name)["valueFrom"]
    return ref


def secret_value(objects: tuple[Obj, ...], name: str, key: str) -> str:
    return base64.b64decode(find(objects, "Secret", name)["data"][key]).decode()


def config_file(objects: tuple[Obj, ...], workload: Obj, path: str) -> str:
    """The content of ``path`` inside ``workload``'s pods when a ConfigMap volume mounted there holds it."""
    spec = pod_spec(workload)
    assert spec is not None
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for item in containers(workload):
        for mount in item.get("volumeMounts", []):
            if Path(path).parent == Path(mount["mountPath"]) and "configMap" in volumes[mount["name"]]:
                data: dict[str, str] = find(objects, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])["data"]
                return data[Path(path).name]
    raise AssertionError(f"no ConfigMap is mounted at {Path(path).parent}")


def secret_file(workload: Obj, item: Obj, path: str) -> tuple[str, str]:
    """(Secret name, key) behind the file ``path`` of a container."""
    spec = pod_spec(workload)
    assert spec is not None
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for mount in item.get("volumeMounts", []):
        source = volumes.get(mount["name"], {}).get("secret")
        if source is None or Path(path).parent != Path(mount["mountPath"]):
            continue
        items = {entry["path"]: entry["key"] for entry in source.get("items", [])}
        filename = Path(path).name
        return source["secretName"], items.get(filename, filename if not items else "<not projected>")
    raise AssertionError(f"no Secret is mounted at {Path(path).parent}")


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(obj: Obj) -> dict[str, str]:
    template = obj["spec"]["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" \
        else obj["spec"]["template"]
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


def workloads(objects: tuple[Obj, ...]) -> list[Obj]:
    return [obj for obj in objects if pod_spec(obj) is not None]


def of_kind(objects: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


# --- rendering and schema validation -------------------------------------------------------------

def validation_errors(obj: Obj, version: str) -> list[str]:
    """What is wrong with a rendered object: Kubernetes' kinds against the API's schemas (strict),
    cert-manager's (whose CRDs kubernetes-validate does not have) against ``cert_manager.py``."""
    if is_cert_manager(obj):
        return check(obj)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{obj['kind']}/{obj['metadata']['name']}: {exc.path}: {exc.message}"]
    return []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_rendered_object_validates_strictly(name: str, version: str) -> None:
    objects = rendered(name)
    assert objects
    errors = [error for obj in objects for error in validation_errors(obj, version)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_namespaced_object_lands_in_facegen(name: str) -> None:
    for obj in rendered(name):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "facegen", f"{obj['kind']}/{obj['metadata']['name']}"


def test_every_manifest_file_is_part_of_a_kustomization() -> None:
    used: set[Path] = set()
    for name in (*KUSTOMIZATIONS, *COMPONENTS):
        directory = K8S / name
        used.add(directory / "kustomization.yaml")
        kustomization = load_documents(directory / "kustomization.yaml")[0]
        used.update((directory / entry).resolve() for entry in kustomization.get("resources", []))
        used.update((directory / patch["path"]).resolve() for patch in kustomization.get("patches", []))
        # Files a ConfigMap is made from (a collector's configuration is YAML too).
        used.update((directory / (entry.partition("=")[2] or entry)).resolve()
                    for generator in kustomization.get("configMapGenerator", [])
                    for entry in generator.get("files", []))
    files = {path.resolve() for path in K8S.rglob("*.yaml")}
    assert files - {path.resolve() for path in used} == set(), "YAML files that no kustomization uses"


def test_no_secret_values_are_committed_for_the_gpu_overlay() -> None:
    kustomization = load_documents(K8S / "overlays/gpu/kustomization.yaml")[0]
    ignored = (K8S / "overlays/gpu/secrets/.gitignore").read_text().split()
    assert "*" in ignored, "secrets/ must be git-ignored"
    assert {generator["name"] for generator in kustomization["secretGenerator"]} >= {"redis"}
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
        for kind, field, name_field in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
            source = volume.get(field)
            if source and not source.get("optional"):
                refs.append((kind, source[name_field], None))
                refs += [(kind, source[name_field], entry["key"]) for entry in source.get("items", [])]
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
    available += certificate_secrets(available)  # the Secrets cert-manager makes from Certificates
    for workload in workloads(objects):
        spec = pod_spec(workload)
        assert spec is not None
        for kind, ref_name, key in _references(spec):
            target = find(available, kind, ref_name)
            if key is not None:
                assert key in target["data"], f"{kind}/{ref_name} has no key {key}"
        volumes = {volume["name"] for volume in spec.get("volumes", [])}
        volumes |= {claim["metadata"]["name"] for claim in workload["spec"].get("volumeClaimTemplates", [])}
        for item in containers(workload):
            for mount in item.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{workload['metadata']['name']}: {mount['name']}"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_services_and_policies_select_existing_pods(name: str) -> None:
    objects = rendered(name)
    pods = workloads(objects)
    for service in of_kind(objects, "Service"):
        selected = [pod for pod in pods if matches(service["spec"]["selector"], pod_labels(pod))]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"
        port_names = {port.get("name") for c in containers(selected[0]) for port in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    for policy in of_kind(objects, "NetworkPolicy"):
        selectors = [policy["spec"]["podSelector"].get("matchLabels", {})]
        for rule in policy["spec"].get("ingress", []):
            # Peers in another namespace (the monitoring one) are not ours to find.
            selectors += [peer["podSelector"]["matchLabels"] for peer in rule.get("from", [])
                          if "namespaceSelector" not in peer]
        for selector in selectors:
            if selector:
                assert any(matches(selector, pod_labels(pod)) for pod in pods), policy["metadata"]["name"]


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_only_the_gateway_is_reachable_from_outside(name: str) -> None:
    objects = rendered(name)
    exposed = {obj["metadata"]["name"] for obj in of_kind(objects, "Service")
               if obj["spec"].get("type", "ClusterIP") != "ClusterIP"}
    assert exposed == {"gateway"}
    policies = of_kind(objects, "NetworkPolicy")
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
    # With TLS the kubelet's gRPC probes (which cannot do TLS) ask the plaintext health port.
    health = env.get(f"{service.upper()}_HEALTH_LISTEN")
    probed = int(health.rpartition(":")[2]) if health else port
    ports = {p["name"]: p["containerPort"] for p in item["ports"]}
    assert ports["grpc"] == port
    assert ports.get("health") == (probed if health else None)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert item[probe]["grpc"]["port"] == probed, probe
    # SIGTERM comes after the preStop sleep; the gateway then drains its jobs for
    # GATEWAY_DRAIN_SECONDS before its server's own grace period starts.
    grace = float(env.get(f"{service.upper()}_GRACE_SECONDS", "10"))
    drain = float(env["GATEWAY_DRAIN_SECONDS"]) if service == "gateway" else 0.0
    pre_stop = item["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and float(pre_stop[1]) == PRESTOP_SLEEP_S
    termination = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert termination > PRESTOP_SLEEP_S + drain + grace, f"{termination} s is not enough to drain"
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


@pytest.mark.parametrize("service", sorted(PORTS))
@pytest.mark.parametrize("name", DEPLOYABLE)
def test_every_service_serves_metrics_where_prometheus_looks(name: str, service: str) -> None:
    objects = rendered(name)
    item = container(objects, service)
    host, _, port = env_of(objects, item)[f"{service.upper()}_METRICS_LISTEN"].rpartition(":")
    assert host == "0.0.0.0"
    assert [p["containerPort"] for p in item["ports"] if p["name"] == "metrics"] == [int(port)]
    annotations = find(objects, "Deployment", service)["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": port,
                           "prometheus.io/path": "/metrics"}
    metrics = find(objects, "Service", f"{service}-metrics")
    assert metrics["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
    assert matches(metrics["spec"]["selector"], pod_labels(find(objects, "Deployment", service)))
    assert [(p["name"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [("metrics", "metrics")]
    assert metrics["spec"].get("type", "ClusterIP") == "ClusterIP", "metrics are never exposed outside"
    assert all(p.get("name") != "metrics" for p in find(objects, "Service", service)["spec"]["ports"])
    policy = find(objects, "NetworkPolicy", "metrics-scrape")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels(find(objects, "Deployment", service)))
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [int(port)]
    assert [peer["namespaceSelector"]["matchLabels"] for peer in rule["from"]] == [
        {"kubernetes.io/metadata.name": "monitoring"}]


# --- many replicas, one system -------------------------------------------------------------------

@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_gateway_balances_calls_over_every_upstream_pod(name: str) -> None:
    objects = rendered(name)
    env = env_of(objects, container(objects, "gateway"))
    for variable, service in (("GENERATOR_ADDRESS", "generator"), ("SWAPPER_ADDRESS", "swapper")):
        # dns:/// makes gRPC resolve every address behind the name (and balance round_robin);
        # a headless Service makes DNS answer with each ready pod instead of one virtual IP.
        assert env[variable] == f"dns:///{service}:{PORTS[service]}"
        assert find(objects, "Service", service)["spec"].get("clusterIP") == "None", f"{service} is not headless"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_any_gateway_serves_any_client(name: str) -> None:
    service = find(rendered(name), "Service", "gateway")["spec"]
    assert service.get("sessionAffinity", "None") == "None"
    assert "sessionAffinityConfig" not in service


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_gateways_and_swappers_share_one_redis(name: str) -> None:
    objects = rendered(name)
    gateway = container(objects, "gateway")
    assert env_of(objects, gateway)["GATEWAY_STORE"] == "redis"
    assert value_from(gateway, "GATEWAY_INSTANCE")["fieldRef"]["fieldPath"] == "metadata.name"
    secrets = set()
    for service in ("gateway", "swapper"):
        item = container(objects, service)
        url = value_from(item, "REDIS_URL")["secretKeyRef"]
        assert url["key"] == "url" and not url.get("optional"), service
        password_path = env_of(objects, item)["REDIS_PASSWORD_FILE"]
        assert secret_file(find(objects, "Deployment", service), item, password_path) == (url["name"], "password")
        secrets.add(url["name"])
    assert len(secrets) == 1, f"gateway and swapper read different Redis Secrets: {secrets}"
    secret = find(objects, "Secret", secrets.pop())
    assert set(secret["data"]) == {"url", "password"}


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_every_workload_has_a_disruption_budget_that_keeps_one_up_and_never_blocks_a_drain(name: str) -> None:
    objects = rendered(name)
    budgets = of_kind(objects, "PodDisruptionBudget")
    for workload in workloads(objects):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        selecting = [b for b in budgets if matches(b["spec"]["selector"]["matchLabels"], pod_labels(workload))]
        assert len(selecting) == 1, f"{where} has {len(selecting)} disruption budgets"
        spec = selecting[0]["spec"]
        # minAvailable equal to the replica count would block every node drain.
        assert spec.get("maxUnavailable") == 1 and "minAvailable" not in spec, where
    for service in AUTOSCALED:
        fewest = find(objects, "HorizontalPodAutoscaler", service)["spec"]["minReplicas"]
        assert fewest > 1, f"{service}: with {fewest} replica an eviction leaves none"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_gateway_and_swapper_scale_with_cpu_and_shrink_slowly(name: str) -> None:
    objects = rendered(name)
    autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
    assert sorted(hpa["metadata"]["name"] for hpa in autoscalers) == sorted(AUTOSCALED)
    for service in AUTOSCALED:
        spec = find(objects, "HorizontalPodAutoscaler", service)["spec"]
        target = spec["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", service)
        # The autoscaler owns the count: a fixed spec.replicas would reset it on every apply.
        assert "replicas" not in find(objects, "Deployment", service)["spec"], service
        assert 1 <= spec["minReplicas"] < spec["maxReplicas"], service
        assert [m["resource"]["name"] for m in spec["metrics"]] == ["cpu"]
        assert all("cpu" in item["resources"]["requests"] for item in containers(find(objects, "Deployment",
                                                                                    service)))
        # Every replica removed drains first: remove them one at a time.
        assert spec["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    assert find(objects, "HorizontalPodAutoscaler", "gateway")["spec"]["minReplicas"] >= 2


# --- overlays ------------------------------------------------------------------------------------

def test_local_overlay_runs_redis_with_an_append_only_file_on_a_volume() -> None:
    objects = rendered("overlays/local")
    redis = find(objects, "StatefulSet", "redis")
    item = container(objects, "redis", kind="StatefulSet")
    service = find(objects, "Service", redis["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(REDIS_PORT, "redis")]
    assert [p["containerPort"] for p in item["ports"] if p["name"] == "redis"] == [REDIS_PORT]

    # The clients' URL names this Service and port, and the server checks the password they send.
    gateway = container(objects, "gateway")
    secret_name = value_from(gateway, "REDIS_URL")["secretKeyRef"]["name"]
    assert secret_value(objects, secret_name, "url") == f"redis://{service['metadata']['name']}:{REDIS_PORT}/0"
    script = item["args"][0]
    assert item["command"] == ["sh", "-c"]
    password_path = script.split("$(cat ", 1)[1].split(")", 1)[0]
    assert secret_file(redis, item, password_path) == (secret_name, "password")
    assert secret_value(objects, secret_name, "password")

    # redis.conf: an AOF fsynced every second, in the volume claimed per pod; nothing evicted.
    config_path = shlex.split(script.rsplit("exec ", 1)[1])[1]
    directives = redis_directives(config_file(objects, redis, config_path))
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["maxmemory-policy"] == "noeviction"
    assert int(directives.get("port", REDIS_PORT)) == REDIS_PORT
    data = next(mount for mount in item["volumeMounts"] if mount["mountPath"] == directives["dir"])
    claim = next(c for c in redis["spec"]["volumeClaimTemplates"] if c["metadata"]["name"] == data["name"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    # The password include is written by the container's command, on its memory-backed /tmp.
    assert f"> {directives['include']}" in script
    tmp = next(v for v in redis["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["medium"] == "Memory"

    # Ready only once it answers PONG (not while it replays the AOF); alive as long as it listens.
    assert "ping" in item["readinessProbe"]["exec"]["command"][-1]
    assert item["livenessProbe"]["tcpSocket"]["port"] == "redis"
    assert item["startupProbe"]["tcpSocket"]["port"] == "redis"

    policy = find(objects, "NetworkPolicy", "redis-ingress")
    peers = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
             for rule in policy["spec"]["ingress"] for peer in rule["from"]}
    assert peers == {"gateway", "swapper"}
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels(redis))


def test_gpu_overlay_uses_a_managed_redis_named_by_a_secret() -> None:
    objects = rendered("overlays/gpu")
    assert not of_kind(objects, "StatefulSet"), "the gpu overlay runs no Redis of its own"
    kustomization = load_documents(K8S / "overlays/gpu/kustomization.yaml")[0]
    redis = next(g for g in kustomization["secretGenerator"] if g["name"] == "redis")
    assert sorted(entry.partition("=")[0] for entry in redis["files"]) == ["password", "url"]


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
    key_ref = value_from(worker, "RUNPOD_API_KEY")["secretKeyRef"]
    swapper_spec = find(objects, "Deployment", "swapper")["spec"]["template"]["spec"]
    runpod_volume = next(v for v in swapper_spec["volumes"] if v["name"] == "runpod-credentials")
    assert key_ref["name"] == runpod_volume["secret"]["secretName"]


def test_local_overlay_sends_every_services_spans_to_its_collector() -> None:
    objects = rendered("overlays/local")
    collector = find(objects, "Deployment", "otel-collector")
    item = container(objects, "otel-collector", "collector")
    service = find(objects, "Service", "otel-collector")
    (port,) = service["spec"]["ports"]
    for name in PORTS:
        assert env_of(objects, container(objects, name))["OTEL_EXPORTER_OTLP_ENDPOINT"] == \
            f"http://otel-collector:{port['port']}", name
    config = yaml.safe_load(config_file(objects, collector, "/etc/otelcol/config.yaml"))
    receiver = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    target = next(p["containerPort"] for p in item["ports"] if p["name"] == port["targetPort"])
    assert receiver == f"0.0.0.0:{target}"
    assert "otlp" in config["service"]["pipelines"]["traces"]["receivers"]
    assert item["args"] == ["--config=/etc/otelcol/config.yaml"]
    policy = find(objects, "NetworkPolicy", "otel-collector-ingress")
    peers = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
             for rule in policy["spec"]["ingress"] for peer in rule["from"]}
    assert peers == set(PORTS)


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_gateway_reads_named_tokens_from_its_secret(name: str) -> None:
    objects = rendered(name)
    item = container(objects, "gateway")
    env = env_of(objects, item)
    assert "GATEWAY_AUTH_TOKEN_FILE" not in env, "one way of giving tokens"
    secret, key = secret_file(find(objects, "Deployment", "gateway"), item, env["GATEWAY_TOKENS_FILE"])
    assert key == "tokens"
    if name != "overlays/gpu":  # the gpu overlay's file is the deployer's (a placeholder here)
        assert parse_tokens(secret_value(objects, secret, key)) == {"local-dev": "local-dev-gateway-token"}
