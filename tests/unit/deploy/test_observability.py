"""deploy/observability, checked offline: rendered by kubectl kustomize, the ConfigMap against the API schema,
and the two Prometheus Operator objects (CRDs, which kubernetes-validate has no schema for) against the fields
of their CRDs that we use and against the code: the ServiceMonitor selects the metrics Services the base
deploys on the port they name, and every metric that a rule or a dashboard panel reads is one a service
exports (a renamed metric breaks this test, not an alert in production)."""

from __future__ import annotations

import functools
import json
import re

import kubernetes_validate
import pytest

from services.common.metrics import ServiceMetrics
from services.gateway.metrics import GatewayMetrics
from services.generator.metrics import GeneratorMetrics
from services.stack.runpod_emulator.metrics import EndpointCollector
from services.swapper.metrics import SwapperMetrics
from tests.unit.deploy.deploy_facts import DEPLOY, PORTS, REPO
from tests.unit.deploy.manifests import Obj, render

pytestmark = pytest.mark.unit

OBSERVABILITY = DEPLOY / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
OPERATIONS = REPO / "docs" / "operations.md"
# Prometheus' own series, and the emulator's (a custom collector: listed by hand).
OTHER_SERIES = {"up", "facegen_runpod_emulator_jobs_submitted_total", "facegen_runpod_emulator_jobs_total",
                "facegen_runpod_emulator_queue_length", "facegen_runpod_emulator_jobs_in_progress"}
# The functions, keywords and aggregations a PromQL expression of ours may use; anything else that looks
# like a name is taken as a metric.
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "irate",
                "histogram_quantile", "and", "or", "unless", "on", "ignoring", "group_left", "group_right",
                "le", "bool", "offset", "humanizePercentage", "humanizeDuration", "abs", "clamp_min"}
DURATION = re.compile(r"^\d+[smhd]$")


@functools.cache
def exported() -> frozenset[str]:
    """Every series name a service can export (histograms' _bucket/_sum/_count, counters' _total)."""
    names: set[str] = set()
    for metrics in (GatewayMetrics(), GeneratorMetrics(), SwapperMetrics(), ServiceMetrics()):
        for family in metrics.registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            if family.type == "histogram":
                names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            if family.type == "counter":
                names.add(f"{family.name}_total")
    return frozenset(names | OTHER_SERIES)


def metrics_in(expr: str) -> set[str]:
    """The metric names an expression reads (label matchers, strings and durations left out)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_:]*", expr))
    return {word for word in words if word not in PROMQL_WORDS and not word.startswith("__")} - {"e"}


@functools.cache
def rendered() -> tuple[Obj, ...]:
    return tuple(render(DEPLOY, "observability"))


def only(kind: str) -> Obj:
    found = [obj for obj in rendered() if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def test_it_renders_into_the_facegen_namespace_and_the_dashboard_configmap_validates() -> None:
    kinds = sorted(obj["kind"] for obj in rendered())
    assert kinds == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
    assert all(obj["metadata"]["namespace"] == "facegen" for obj in rendered())
    config_map = only("ConfigMap")
    for version in ("1.27", "1.37"):
        kubernetes_validate.validate(config_map, version, strict=True)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["facegen.json"]) == json.loads(DASHBOARD.read_text())


def test_the_service_monitor_selects_every_metrics_service_on_its_port() -> None:
    monitor = only("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    selector = spec["selector"]["matchLabels"]
    base = render(DEPLOY / "k8s", "base")
    services = [obj for obj in base if obj["kind"] == "Service"
                and selector.items() <= obj["metadata"].get("labels", {}).items()]
    assert sorted(obj["metadata"]["name"] for obj in services) == sorted(f"{name}-metrics" for name in PORTS)
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
    assert all(endpoint["port"] in {port["name"] for port in service["spec"]["ports"]} for service in services)
    assert endpoint["path"] == "/metrics"
    assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])
    for relabel in endpoint.get("relabelings", []):
        assert set(relabel) <= {"sourceLabels", "targetLabel", "regex", "replacement", "action", "separator"}


def test_every_alert_is_complete_and_reads_metrics_the_services_export() -> None:
    rule = only("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = [item for group in rule["spec"]["groups"] for item in group["rules"]]
    names = [alert["alert"] for alert in alerts]
    assert len(set(names)) == len(names)
    # The four the operators asked for, at least.
    assert {"FacegenFallbackRateHigh", "FacegenRunPodErrorRateHigh", "FacegenQueueDepthHigh",
            "FacegenJobLatencyHigh"} <= set(names)
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "rules", "interval"}
    for alert in alerts:
        assert set(alert) == {"alert", "expr", "for", "labels", "annotations"}, alert["alert"]
        assert DURATION.match(alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "runbook"} <= set(alert["annotations"])
        unknown = metrics_in(alert["expr"]) - exported()
        assert not unknown, f"{alert['alert']} reads metrics no service exports: {sorted(unknown)}"
        assert alert["expr"].count("(") == alert["expr"].count(")"), alert["alert"]


def test_every_dashboard_panel_reads_metrics_the_services_export() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    assert [var["name"] for var in dashboard["templating"]["list"]] == ["datasource"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            unknown = metrics_in(target["expr"]) - exported()
            assert not unknown, f"panel {panel['title']!r} reads metrics no service exports: {sorted(unknown)}"
    covered = {name for panel in panels for target in panel["targets"] for name in metrics_in(target["expr"])}
    for prefix in ("facegen_gateway_", "facegen_generator_", "facegen_swapper_", "grpc_server_", "grpc_client_"):
        assert any(name.startswith(prefix) for name in covered), f"no panel shows {prefix}*"


def defined_metrics() -> set[str]:
    """The name of every metric the services (and the emulator) define, as scraped (counters with _total)."""
    families = [family for metrics in (GatewayMetrics(), GeneratorMetrics(), SwapperMetrics())
                for family in metrics.registry.collect()]
    families += EndpointCollector(dict).collect()
    return {family.name + ("_total" if family.type == "counter" else "") for family in families
            if family.name.startswith(("facegen_", "grpc_"))}


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a markdown text (fenced code left out)."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        fenced ^= line.startswith("```")
        heading = re.match(r"#{1,6} (.+)", line)
        if heading and not fenced:
            anchors.add(re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-"))
    return anchors


def test_docs_operations_names_every_metric_every_alert_and_each_runbook_anchor() -> None:
    text = OPERATIONS.read_text()
    missing = sorted(name for name in defined_metrics() if f"`{name}`" not in text)
    assert not missing, f"docs/operations.md does not list {missing}"
    labels = {"grpc_type", "grpc_service", "grpc_method", "grpc_code"}
    # Whole names only: a grep pattern's prefix (`^facegen_gateway_(jobs|images)`) is not a metric.
    stale = sorted(set(re.findall(r"\b(?:facegen|grpc)_[a-z0-9_]*[a-z0-9]\b", text)) - exported() - labels)
    assert not stale, f"docs/operations.md names metrics no service exports: {stale}"
    anchors = heading_anchors(text)
    for alert in (item for group in only("PrometheusRule")["spec"]["groups"] for item in group["rules"]):
        assert f"`{alert['alert']}`" in text, f"docs/operations.md does not describe {alert['alert']}"
        page, _, anchor = alert["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, (alert["alert"], alert["annotations"]["runbook"])
