"""The TLS of the Kubernetes manifests (components/tls, overlays/tls): cert-manager's objects match
their schema, every certificate comes from facegen's CA, each service reads the files its Certificate
makes, only the gateway holds a client certificate, and the settings classes accept what is rendered.

The cert-manager objects are checked against the schema in ``cert_manager.py`` (kubernetes-validate
has no cert-manager CRDs); every other object is validated by test_k8s.py like the other overlays.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from services.gateway.settings import Settings as GatewaySettings
from services.generator.settings import Settings as GeneratorSettings
from services.stack.certs import CertificateAuthority
from services.swapper.settings import Settings as SwapperSettings
from tests.unit.deploy.cert_manager import check, go_duration_seconds, usages
from tests.unit.deploy.deploy_facts import PORTS
from tests.unit.deploy.manifests import Obj, pod_spec, render
from tests.unit.deploy.test_k8s import (
    K8S,
    K8S_VERSIONS,
    container,
    env_of,
    find,
    of_kind,
    rendered,
    secret_file,
    validation_errors,
)

pytestmark = pytest.mark.unit

# overlays/tls, and the gpu overlay with the component added the way docs/tls.md says.
TLS_DEPLOYMENTS = ("overlays/tls", "gpu+tls")
UPSTREAMS = ("generator", "swapper")


@functools.cache
def _gpu_with_tls() -> tuple[Obj, ...]:
    with tempfile.TemporaryDirectory(prefix="facegen-gpu-tls-") as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(K8S, copy)
        overlay = copy / "overlays" / "gpu-tls"
        overlay.mkdir()
        (overlay / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            "resources:\n  - ../gpu\ncomponents:\n  - ../../components/tls\n")
        return tuple(render(copy, "overlays/gpu-tls"))


def objects_of(name: str) -> tuple[Obj, ...]:
    return _gpu_with_tls() if name == "gpu+tls" else rendered(name)


def certificate_for(objects: tuple[Obj, ...], secret_name: str) -> Obj:
    """The Certificate whose Secret is ``secret_name``."""
    (found,) = [obj for obj in of_kind(objects, "Certificate") if obj["spec"]["secretName"] == secret_name]
    return found


def files_of(objects: tuple[Obj, ...], service: str, variables: tuple[str, str, str]) -> tuple[Obj, list[str]]:
    """The Certificate behind a service's cert, key and CA variables (all from one mounted Secret), and
    the Secret keys they read."""
    deployment = find(objects, "Deployment", service)
    item = container(objects, service)
    env = env_of(objects, item)
    sources = [secret_file(deployment, item, env[variable]) for variable in variables if variable in env]
    assert len({secret for secret, _ in sources}) == 1, f"{service}: {variables} come from several Secrets"
    return certificate_for(objects, sources[0][0]), [key for _, key in sources]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_gpu_overlay_with_the_component_validates(version: str) -> None:
    """(overlays/tls is validated with every kustomization, in test_k8s.py.)"""
    objects = objects_of("gpu+tls")
    errors = [error for obj in objects for error in validation_errors(obj, version)]
    assert not errors, "\n".join(errors)
    assert len(of_kind(objects, "Certificate")) == len(of_kind(rendered("overlays/tls"), "Certificate")) == 5


@pytest.mark.parametrize(("change", "error"), [
    (lambda spec: spec.update(dnsName=["x"]), "Additional properties are not allowed ('dnsName'"),
    (lambda spec: spec.update(usages=["server-auth"]), "'server-auth' is not one of"),
    (lambda spec: spec["privateKey"].update(algorithm="EC"), "'EC' is not one of"),
    (lambda spec: spec.update(duration="90d"), "'90d' is not a Go duration"),
    (lambda spec: spec.update(renewBefore="2400h"), "renewBefore must be at least 5m and shorter"),
    (lambda spec: spec.pop("secretName"), "'secretName' is a required property"),
    (lambda spec: spec["issuerRef"].update(kind="Issuers"), "'Issuers' is not one of"),
])
def test_the_schema_check_catches_what_the_api_server_would_refuse(change: Any, error: str) -> None:
    certificate = dict(find(rendered("overlays/tls"), "Certificate", "generator-tls"))
    spec = {**certificate["spec"], "privateKey": dict(certificate["spec"]["privateKey"]),
            "issuerRef": dict(certificate["spec"]["issuerRef"])}
    change(spec)
    problems = check({**certificate, "spec": spec})
    assert any(error in problem for problem in problems), problems
    assert go_duration_seconds("1h30m") == 5400 and go_duration_seconds("2160h") == 90 * 86400


@pytest.mark.parametrize("name", TLS_DEPLOYMENTS)
def test_every_certificate_comes_from_facegens_ca_issuer_whose_root_is_made_once(name: str) -> None:
    objects = objects_of(name)
    issuers = {obj["metadata"]["name"]: obj for obj in of_kind(objects, "Issuer")}
    ca_issuer = issuers["facegen-ca"]
    root = certificate_for(objects, ca_issuer["spec"]["ca"]["secretName"])
    assert root["spec"]["isCA"] is True
    assert "selfSigned" in issuers[root["spec"]["issuerRef"]["name"]]["spec"]
    for certificate in of_kind(objects, "Certificate"):
        reference = certificate["spec"]["issuerRef"]
        assert reference.get("kind", "Issuer") == "Issuer" and reference["name"] in issuers
        if certificate is not root:
            assert reference["name"] == "facegen-ca", certificate["metadata"]["name"]
            assert not certificate["spec"].get("isCA")
            leaf = go_duration_seconds(certificate["spec"]["duration"])
            assert leaf < go_duration_seconds(root["spec"]["duration"]) - go_duration_seconds(
                root["spec"]["renewBefore"]), "a leaf would outlive the root it was signed with"


@pytest.mark.parametrize("name", TLS_DEPLOYMENTS)
def test_the_generator_and_the_swapper_let_in_only_the_gateways_client_certificate(name: str) -> None:
    objects = objects_of(name)
    gateway_env = env_of(objects, container(objects, "gateway"))
    client, client_keys = files_of(objects, "gateway", ("GATEWAY_UPSTREAM_TLS_CERT_FILE",
                                                        "GATEWAY_UPSTREAM_TLS_KEY_FILE",
                                                        "GATEWAY_UPSTREAM_TLS_CA_FILE"))
    assert client_keys == ["tls.crt", "tls.key", "ca.crt"]
    assert "client auth" in client["spec"]["usages"] and "server auth" not in client["spec"]["usages"]
    holders = [c["metadata"]["name"] for c in of_kind(objects, "Certificate") if "client auth" in usages(c)]
    assert holders == [client["metadata"]["name"]], "only the gateway may hold a client certificate of the CA"
    for service in UPSTREAMS:
        prefix = service.upper()
        server, keys = files_of(objects, service, (f"{prefix}_TLS_CERT_FILE", f"{prefix}_TLS_KEY_FILE",
                                                   f"{prefix}_TLS_CA_FILE"))
        assert keys == ["tls.crt", "tls.key", "ca.crt"], f"{service} requires client certificates of the CA"
        assert "server auth" in server["spec"]["usages"] and "client auth" not in server["spec"]["usages"]
        assert server["spec"]["issuerRef"] == client["spec"]["issuerRef"], "one CA on both ends"
        # The name the gateway dials (dns:///generator:50052) is one the certificate carries.
        host = gateway_env[f"{prefix}_ADDRESS"].removeprefix("dns:///").rpartition(":")[0]
        assert host in server["spec"]["dnsNames"], service


@pytest.mark.parametrize("name", TLS_DEPLOYMENTS)
def test_the_gateway_serves_tls_for_its_service_names_without_asking_for_client_certificates(name: str) -> None:
    objects = objects_of(name)
    env = env_of(objects, container(objects, "gateway"))
    certificate, keys = files_of(objects, "gateway", ("GATEWAY_TLS_CERT_FILE", "GATEWAY_TLS_KEY_FILE",
                                                      "GATEWAY_TLS_CA_FILE"))
    assert keys == ["tls.crt", "tls.key"] and "GATEWAY_TLS_CA_FILE" not in env
    assert "server auth" in certificate["spec"]["usages"]
    assert {"gateway", "gateway.facegen.svc"} <= set(certificate["spec"]["dnsNames"])
    if name == "overlays/tls":  # reached through kubectl port-forward
        assert "localhost" in certificate["spec"]["dnsNames"] and certificate["spec"]["ipAddresses"] == ["127.0.0.1"]


@pytest.mark.parametrize("name", TLS_DEPLOYMENTS)
def test_certificate_secrets_are_mounted_whole_so_renewals_reach_the_pods(name: str) -> None:
    objects = objects_of(name)
    made = {c["spec"]["secretName"] for c in of_kind(objects, "Certificate")}
    mounted = set()
    for service in PORTS:
        spec = pod_spec(find(objects, "Deployment", service))
        assert spec is not None
        volumes = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        for mount in container(objects, service).get("volumeMounts", []):
            if volumes.get(mount["name"]) in made:
                assert "subPath" not in mount, f"{service}: a subPath mount never sees a renewed certificate"
                assert mount.get("readOnly") is True
                mounted.add(volumes[mount["name"]])
    assert mounted == made - {"facegen-ca"}, "the CA's own key is mounted nowhere"


@pytest.mark.parametrize("name", TLS_DEPLOYMENTS)
def test_every_service_port_says_it_carries_tls(name: str) -> None:
    for service in PORTS:
        ports = find(objects_of(name), "Service", service)["spec"]["ports"]
        assert [port["appProtocol"] for port in ports] == ["https"], service


def _issue_like(certificate: Obj, authority: CertificateAuthority, directory: Path, ca: Path) -> None:
    """Writes what cert-manager would put in ``certificate``'s Secret: tls.crt, tls.key, ca.crt."""
    usages = certificate["spec"]["usages"]
    pair = authority.issue(directory, "tls", server="server auth" in usages, client="client auth" in usages,
                           dns_names=tuple(certificate["spec"].get("dnsNames", ())),
                           ips=tuple(certificate["spec"].get("ipAddresses", ())))
    pair.cert.rename(directory / "tls.crt")
    pair.key.rename(directory / "tls.key")
    shutil.copyfile(ca, directory / "ca.crt")


@pytest.mark.parametrize("name", TLS_DEPLOYMENTS)
def test_the_services_accept_the_rendered_tls_settings(name: str, tmp_path: Path) -> None:
    """Each service's settings, built from its rendered TLS variables, with Secret files such as
    cert-manager writes (made by a CA of our own, at the paths the pod mounts them)."""
    objects = objects_of(name)
    authority = CertificateAuthority()
    ca = authority.write(tmp_path / "ca.crt")
    settings: dict[str, Any] = {}
    classes = {"gateway": GatewaySettings, "generator": GeneratorSettings, "swapper": SwapperSettings}
    for service, settings_class in classes.items():
        deployment = find(objects, "Deployment", service)
        item = container(objects, service)
        env = {key: value for key, value in env_of(objects, item).items()
               if "_TLS_" in key or key.endswith("_HEALTH_LISTEN")}
        for key, path in list(env.items()):
            if key.endswith("_FILE"):
                secret, secret_key = secret_file(deployment, item, path)
                directory = tmp_path / service / secret
                if not directory.exists():
                    directory.mkdir(parents=True)
                    _issue_like(certificate_for(objects, secret), authority, directory, ca)
                env[key] = str(directory / secret_key)
        required = {"S3_ENDPOINT_URL": "http://s3:9000", "S3_ACCESS_KEY_ID": "k", "S3_SECRET_ACCESS_KEY": "s"} \
            if service == "swapper" else {}
        settings[service] = settings_class.from_env({**env, **required})
    assert settings["generator"].tls.server_mode == settings["swapper"].tls.server_mode == "mtls"
    assert settings["gateway"].tls.server_mode == "tls"
    upstream = settings["gateway"].upstream_tls
    assert upstream.cert is not None and upstream.key is not None and upstream.ca is not None
    for service, value in settings.items():
        assert value.health_listen == f"0.0.0.0:{PORTS[service] + 10}", service
