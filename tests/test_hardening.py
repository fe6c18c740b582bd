"""What a cluster admin's linters and a security review ask of the pods we render: no
ServiceAccount token, disruption budgets and spreading for replicated parts, node disk the
scheduler knows of, a liveness probe on every long-running container (docs/security.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from aistack.render import render
from helpers import EXAMPLES, K8S_VERSION, all_permitted, by_name, example, stack

RAY_IMAGE_MODEL = {
    "name": "big", "source": "org/big", "nodes": 3, "image": "vllm-ray:1",
    "multiNode": {"backend": "ray"},
}  # fmt: skip
#: A multi-node model on vLLM's own backend (the stock image).
WIDE_MODEL = {"name": "wide", "source": "org/wide", "nodes": 2, "gpus": 8}


def everything() -> list[dict[str, Any]]:
    """A stack with every replicated part: a model of 2 replicas, a multi-node model of 2
    groups of 3 nodes on Ray and one of 2 groups of 2 nodes on vLLM's own backend, a Ray
    worker group of 3, 2 gateways, MLflow with external stores."""
    s = stack(
        models=[
            {"name": "chat", "source": "org/chat", "replicas": 2},
            {"name": "solo", "source": "org/solo"},
            {**RAY_IMAGE_MODEL, "replicas": 2},
            {**WIDE_MODEL, "replicas": 2},
        ],
        ray={"workerGroups": [{"name": "cpu", "replicas": 3}, {"name": "one", "replicas": 1}]},
        gateway={"replicas": 2},
        mlflow={
            "replicas": 2,
            "backendStore": {"uriSecretRef": {"name": "db", "key": "uri"}},
            "artifactStore": {"destinationSecretRef": {"name": "art", "key": "destination"}},
        },
    )
    return render(s, all_permitted(s))


def pod_specs(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template: a Deployment's by its name, a LeaderWorkerSet's leaders' and
    workers' as ``<name>/leader`` and ``<name>/worker``."""
    out = {n: d["spec"]["template"]["spec"] for n, d in by_name(objs, "Deployment").items()}
    for n, lws in by_name(objs, "LeaderWorkerSet").items():
        for role in ("leader", "worker"):
            out[f"{n}/{role}"] = lws["spec"]["leaderWorkerTemplate"][f"{role}Template"]["spec"]
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).stem)
def test_no_pod_mounts_a_service_account_token(path: Path) -> None:
    s = example(path)
    for name, spec in pod_specs(render(s, all_permitted(s))).items():
        assert spec["automountServiceAccountToken"] is False, name


def test_every_replicated_deployment_and_only_those_get_a_disruption_budget() -> None:
    objs = everything()
    deployments = by_name(objs, "Deployment")
    groups = by_name(objs, "LeaderWorkerSet")
    budgets = by_name(objs, "PodDisruptionBudget")
    replicated = {n for n, d in {**deployments, **groups}.items() if d["spec"]["replicas"] > 1}
    assert replicated == {
        "demo-vllm-chat",
        "demo-vllm-big-lws",
        "demo-vllm-wide-lws",
        "demo-ray-worker-cpu",
        "demo-gateway",
        "demo-mlflow",
    }
    assert set(budgets) == replicated
    for name, pdb in budgets.items():
        kubernetes_validate.validate(pdb, K8S_VERSION, strict=True)
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        if name in groups:
            # Every pod of the groups, by the label LeaderWorkerSet puts on them: one
            # eviction restarts a whole group, and no other pod goes until it is back.
            selector = {"matchLabels": {"leaderworkerset.sigs.k8s.io/name": name}}
        else:
            selector = deployments[name]["spec"]["selector"]
        assert pdb["spec"]["selector"] == selector


def test_a_blocked_model_has_no_budget_to_block_a_drain() -> None:
    s = stack(models=[{"name": "chat", "source": "org/chat", "replicas": 2}])
    objs = render(s, {"chat": False})
    assert "demo-vllm-chat" not in by_name(objs, "PodDisruptionBudget")
    assert "topologySpreadConstraints" not in pod_specs(objs)["demo-vllm-chat"]


def test_replicated_parts_spread_over_nodes_single_ones_do_not() -> None:
    specs = pod_specs(everything())
    spread = {n for n, spec in specs.items() if "topologySpreadConstraints" in spec}
    assert spread == {
        "demo-vllm-chat",
        "demo-vllm-big-lws/leader",
        "demo-vllm-big-lws/worker",
        "demo-vllm-wide-lws/leader",
        "demo-vllm-wide-lws/worker",
        "demo-ray-worker-cpu",
        "demo-gateway",
        "demo-mlflow",
    }
    for name in spread:
        (c,) = specs[name]["topologySpreadConstraints"]
        assert c["topologyKey"] == "kubernetes.io/hostname"
        assert c["whenUnsatisfiable"] == "ScheduleAnyway", "a preference, never Pending"
    chat = specs["demo-vllm-chat"]["topologySpreadConstraints"][0]
    assert chat["matchLabelKeys"] == ["pod-template-hash"]
    # The groups of a multi-node model spread as a whole: every pod of the model counts.
    big = specs["demo-vllm-big-lws/worker"]["topologySpreadConstraints"][0]
    assert "matchLabelKeys" not in big
    assert big["labelSelector"]["matchLabels"] == {
        "aistack.dev/stack": "demo",
        "app.kubernetes.io/component": "model-server",
        "aistack.dev/model": "big",
    }


def test_model_pods_request_the_node_disk_of_their_empty_dirs() -> None:
    s = stack(
        vllm={"scratchSize": "80Gi"},
        models=[
            {"name": "a", "source": "org/a"},
            {"name": "b", "source": "org/b", "scratchSize": "200Gi"},
            {"name": "c", "source": "org/c", "cache": {"size": "100Gi"}},
            {"name": "d", "source": "org/d",
             "resources": {"requests": {"ephemeral-storage": "1Ti"}}},
        ],
    )  # fmt: skip
    specs = pod_specs(render(s, all_permitted(s)))

    def disk(name: str) -> tuple[Any, dict[str, Any]]:
        spec = specs[f"demo-vllm-{name}"]
        request = spec["containers"][0]["resources"]["requests"]["ephemeral-storage"]
        return request, {v["name"]: v for v in spec["volumes"]}

    request, volumes = disk("a")
    assert request == "80Gi"
    assert volumes["cache"]["emptyDir"] == {"sizeLimit": "80Gi"}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "80Gi"}
    assert disk("b")[0] == "200Gi", "a model's own size wins"
    request, volumes = disk("c")
    assert "persistentVolumeClaim" in volumes["cache"], "weights on the PVC"
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "80Gi"}
    assert disk("d")[0] == "1Ti", "a request in the model's resources wins"


def test_the_default_node_disk_is_requested_without_any_setting() -> None:
    s = stack()
    spec = pod_specs(render(s, {"m": True}))["demo-vllm-m"]
    assert spec["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "50Gi"


def test_every_long_running_container_has_a_liveness_probe() -> None:
    specs = pod_specs(everything())
    # But a headless vLLM worker (vLLM's own multi-node backend): it serves no HTTP, and
    # it exits when its engine fails, which restarts its whole group.
    headless = {"demo-vllm-wide-lws/worker"}
    for name, spec in specs.items():
        for c in spec["containers"]:
            assert ("livenessProbe" in c) != (name in headless), (name, c["name"])
    (wide,) = specs["demo-vllm-wide-lws/worker"]["containers"]
    assert "--headless" in wide["args"]
    worker = specs["demo-vllm-big-lws/worker"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert worker["livenessProbe"]["httpGet"] == {
        "path": "/api/local_raylet_healthz",
        "port": "agent",
    }
    assert f"--dashboard-agent-listen-port={ports['agent']}" in worker["args"][0]
