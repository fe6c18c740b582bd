"""Stack monitoring: when PodMonitors are rendered, what they scrape, who may scrape, and
what the ``Monitoring`` condition says (docs/observability.md)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from aistack import handlers, names
from aistack.api import AIStack
from aistack.components import (
    BY_NAME,
    GATEWAY_PORT,
    MONITORING_CRD,
    RAY_METRICS_PORT,
    VLLM_PORT,
    RenderConfig,
    monitoring,
)
from aistack.render import render
from aistack.status import Observed, compute_status
from helpers import ROOT, all_permitted, stack

T0 = "2026-01-01T00:00:00Z"
ON = RenderConfig(monitoring_crds=True)
OFF = RenderConfig(monitoring_crds=False)


def full(**spec: Any) -> AIStack:
    """Every part: a model, Ray with a worker group, MLflow, the gateway."""
    spec.setdefault("ray", {"workerGroups": [{"name": "cpu", "replicas": 1}]})
    return stack(**spec)


def of_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def monitors(s: AIStack, config: RenderConfig) -> dict[str, dict[str, Any]]:
    return of_kind(render(s, all_permitted(s), config), "PodMonitor")


# ---------------------------------------------------------------- when


@pytest.mark.parametrize(
    ("enabled", "crds", "rendered", "reason"),
    [
        (None, True, True, "Rendered"),
        (None, False, False, "CRDsAbsent"),
        (None, None, False, "NotDetected"),
        (True, True, True, "Rendered"),
        (True, None, True, "Rendered"),
        (True, False, False, "CRDsMissing"),
        (False, True, False, "Disabled"),
        (False, None, False, "Disabled"),
    ],
)
def test_monitors_follow_the_spec_and_the_crds(
    enabled: bool | None, crds: bool | None, rendered: bool, reason: str
) -> None:
    s = full(monitoring={} if enabled is None else {"enabled": enabled})
    config = RenderConfig(monitoring_crds=crds)
    assert bool(monitors(s, config)) is rendered
    decision = monitoring(s, config)
    assert (decision.monitors, decision.reason) == (rendered, reason)


def test_an_installation_without_stack_monitoring_renders_none() -> None:
    s = full(monitoring={"enabled": True})
    config = RenderConfig(monitoring_crds=True, stack_monitoring=False)
    assert not monitors(s, config)
    decision = monitoring(s, config)
    assert decision.reason == "TurnedOff" and "--no-stack-monitoring" in decision.message


# ---------------------------------------------------------------- what


def test_a_podmonitor_per_part_that_serves_metrics_and_none_for_mlflow() -> None:
    s = full(monitoring={"interval": "15s", "labels": {"release": "prom"}})
    out = render(s, all_permitted(s), ON)
    pms = of_kind(out, "PodMonitor")
    assert sorted(pms) == ["demo-gateway", "demo-model-server", "demo-ray"]
    # LiteLLM answers /metrics with a redirect to /metrics/ (conformance-tested).
    expected = {"demo-model-server": ("http", VLLM_PORT, "/metrics"),
                "demo-ray": ("metrics", RAY_METRICS_PORT, "/metrics"),
                "demo-gateway": ("http", GATEWAY_PORT, "/metrics/")}  # fmt: skip
    deployments = of_kind(out, "Deployment")
    for name, pm in pms.items():
        assert pm["metadata"]["labels"]["release"] == "prom"
        assert pm["metadata"]["labels"]["aistack.dev/stack"] == "demo"
        (endpoint,) = pm["spec"]["podMetricsEndpoints"]
        assert endpoint == {"port": expected[name][0], "path": expected[name][2], "interval": "15s"}
        selector = pm["spec"]["selector"]["matchLabels"]
        # The monitor selects pods that exist, and each such pod names the port.
        selected = [
            d for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert selected, name
        for d in selected:
            ports = {
                p["name"]: p["containerPort"]
                for c in d["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
            assert ports.get(expected[name][0]) == expected[name][1], (name, d["metadata"]["name"])
    # MLflow is not scraped, and the condition says why.
    assert BY_NAME["tracking"].scrape is None
    assert "MLflow is not scraped" in monitoring(s, ON).message


def test_the_stack_label_wins_over_user_labels() -> None:
    s = full(monitoring={"labels": {"aistack.dev/stack": "other"}})
    for pm in monitors(s, ON).values():
        assert pm["metadata"]["labels"]["aistack.dev/stack"] == "demo"


def test_ray_workers_export_metrics_on_the_named_port() -> None:
    out = render(full(), all_permitted(full()), OFF)
    worker = of_kind(out, "Deployment")[names.ray_worker("demo", "cpu")]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert f"--metrics-export-port={RAY_METRICS_PORT}" in container["args"]
    assert {"name": "metrics", "containerPort": RAY_METRICS_PORT, "protocol": "TCP"} in container[
        "ports"
    ]


def gateway_container(s: AIStack) -> dict[str, Any]:
    out = render(s, all_permitted(s), OFF)
    return of_kind(out, "Deployment")["demo-gateway"]["spec"]["template"]["spec"]["containers"][0]


def gateway_callbacks(s: AIStack) -> list[str]:
    out = render(s, all_permitted(s), OFF)
    config = yaml.safe_load(of_kind(out, "ConfigMap")["demo-gateway-config"]["data"]["config.yaml"])
    return list(config.get("litellm_settings", {}).get("callbacks", []))


def test_the_gateway_exports_metrics_on_its_port_unless_monitoring_is_off() -> None:
    # In the proxy's own process: LiteLLM 1.110.2's separate metrics process
    # (--prometheus_metrics_port) serves no sample with one worker (conformance).
    on = gateway_container(full())
    assert "--prometheus_metrics_port" not in on["args"]
    assert {p["name"] for p in on["ports"]} == {"http"}
    assert "prometheus" in gateway_callbacks(full())
    off = full(monitoring={"enabled": False})
    assert "prometheus" not in gateway_callbacks(off)


def test_a_gateway_with_a_key_is_not_scraped_and_the_condition_says_why() -> None:
    keyed = full(gateway={"authSecretRef": {"name": "gw", "key": "k"}})
    assert "prometheus" in gateway_callbacks(keyed)  # key holders may still read it
    assert sorted(monitors(keyed, ON)) == ["demo-model-server", "demo-ray"]
    message = monitoring(keyed, ON).message
    assert "Gateway is not scraped: its /metrics asks for the gateway's master key" in message
    assert message.startswith("PodMonitors for vLLM, Ray (")


# ---------------------------------------------------------------- who may scrape


def rules_by_port(policy: dict[str, Any]) -> dict[int | None, list[Any]]:
    out: dict[int | None, list[Any]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule.get("ports") or [{"port": None}]:
            out.setdefault(port["port"], []).extend(rule.get("from", []))
    return out


def test_scrape_from_is_admitted_to_the_metrics_ports_only() -> None:
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    s = full(monitoring={"scrapeFrom": [scraper]})
    policies = of_kind(render(s, all_permitted(s), OFF), "NetworkPolicy")
    # Not the gateway's: its metrics are on its API port, and a scraper must not get the
    # API (a Prometheus reaches an open gateway as anyone may, unless gatewayFrom narrows it).
    expected = {"demo-model-server": VLLM_PORT, "demo-ray": RAY_METRICS_PORT}
    assert GATEWAY_PORT not in rules_by_port(policies["demo-gateway"]) or all(
        scraper not in peers for peers in rules_by_port(policies["demo-gateway"]).values()
    )
    for name, policy in policies.items():
        admitted = {port for port, peers in rules_by_port(policy).items() if scraper in peers}
        assert admitted == ({expected[name]} if name in expected else set()), name
    # Without scrapeFrom nobody new is admitted anywhere.
    plain = of_kind(render(full(), all_permitted(full()), OFF), "NetworkPolicy")
    for name, policy in plain.items():
        assert scraper not in [p for ps in rules_by_port(policy).values() for p in ps], name


# ---------------------------------------------------------------- input


@pytest.mark.parametrize("interval", ["30", "5x", "1.5s", ""])
def test_a_bad_interval_is_refused_naming_the_field(interval: str) -> None:
    with pytest.raises(ValidationError) as err:
        full(monitoring={"interval": interval})
    assert "monitoring.interval" in str(err.value)


def test_aistack_render_can_assume_the_crds() -> None:
    def kinds(*flags: str) -> list[str]:
        run = subprocess.run(
            [sys.executable, "-m", "aistack.cli", "render",
             "-f", str(ROOT / "examples/quickstart.yaml"), *flags],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return [d["kind"] for d in yaml.safe_load_all(run.stdout) if d]

    assert "PodMonitor" not in kinds()
    assert kinds("--monitoring-crds").count("PodMonitor") == 3
    assert "PodMonitor" not in kinds("--no-monitoring-crds")


# ---------------------------------------------------------------- status


def test_the_monitoring_condition_says_why_and_never_touches_ready() -> None:
    s = full(monitoring={"enabled": True})
    observed = Observed(deployments={})
    verdicts: dict[str, Any] = {}
    with_crds = compute_status(s, verdicts, observed, now=T0, config=ON)
    without = compute_status(s, verdicts, observed, now=T0, config=OFF)
    cond = {c.type: c for c in with_crds.conditions}["Monitoring"]
    assert cond.status == "True" and "PodMonitors for vLLM, Ray, Gateway" in cond.message
    missing = {c.type: c for c in without.conditions}["Monitoring"]
    assert missing.status == "False" and missing.reason == "CRDsMissing"
    assert MONITORING_CRD in missing.message
    ready = [next(c for c in st.conditions if c.type == "Ready") for st in (with_crds, without)]
    assert ready[0].model_dump() == ready[1].model_dump()
    assert with_crds.phase == without.phase


# ---------------------------------------------------------------- detection


class Recorder(handlers.Runtime):
    def __init__(self) -> None:
        super().__init__()
        self.requested: list[Any] = []

    def request_all(self) -> None:
        self.requested.append("all")


def crd(established: bool) -> dict[str, Any]:
    status = "True" if established else "False"
    return {"metadata": {"name": MONITORING_CRD},
            "status": {"conditions": [{"type": "Established", "status": status}]}}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "served"),
    [
        (None, False),
        ({}, False),
        ({"conditions": None}, False),  # a CRD the API server has just created
        ({"conditions": [{"type": "NamesAccepted", "status": "True"}]}, False),
        ({"conditions": [{"type": "Established", "status": "False"}]}, False),
        ({"conditions": [{"type": "NamesAccepted", "status": "True"},
                         {"type": "Established", "status": "True"}]}, True),
    ],
)  # fmt: skip
def test_a_crd_is_served_only_once_established(status: Any, served: bool) -> None:
    from aistack.kinds import crd_established

    assert crd_established({"metadata": {"name": MONITORING_CRD}, "status": status}) is served


def test_the_crd_watch_turns_monitors_on_and_off_and_requeues_every_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aistack.controller import Reconciler

    runtime = Recorder()
    runtime.reconciler = Reconciler(kube=None, licensing=None, config=OFF)  # type: ignore[arg-type]
    monkeypatch.setattr(handlers, "RUNTIME", runtime)

    def event(type_: str | None, body: dict[str, Any]) -> None:
        asyncio.run(handlers._crd_handler("PodMonitor")(type=type_, body=body))  # type: ignore[arg-type]

    event(None, crd(established=False))  # created, not yet served
    assert runtime.reconciler.config.monitoring_crds is False and runtime.requested == []
    event("MODIFIED", crd(established=True))
    assert runtime.reconciler.config.monitoring_crds is True and runtime.requested == ["all"]
    event("MODIFIED", crd(established=True))  # nothing new: no requeue
    assert runtime.requested == ["all"]
    event("DELETED", crd(established=True))
    assert runtime.reconciler.config.monitoring_crds is False and runtime.requested == ["all"] * 2


def test_the_leaderworkerset_crd_watch_turns_multi_node_models_on_and_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aistack.components import LWS_CRD
    from aistack.controller import Reconciler

    runtime = Recorder()
    runtime.reconciler = Reconciler(kube=None, licensing=None, config=OFF)  # type: ignore[arg-type]
    monkeypatch.setattr(handlers, "RUNTIME", runtime)
    body = crd(established=True) | {"metadata": {"name": LWS_CRD}}

    def event(type_: str | None) -> None:
        handler = handlers._crd_handler("LeaderWorkerSet")
        asyncio.run(handler(type=type_, body=body))  # type: ignore[arg-type]

    event("MODIFIED")
    assert runtime.reconciler.config.leaderworkersets is True and runtime.requested == ["all"]
    assert runtime.reconciler.config.monitoring_crds is OFF.monitoring_crds, "only its own"
    event("DELETED")
    assert runtime.reconciler.config.leaderworkersets is False
    assert runtime.requested == ["all", "all"]
