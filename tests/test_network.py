"""NetworkPolicies: what each rendered pod accepts, read off the policies as a CNI would."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from aistack.api import rules
from aistack.components import GATEWAY_PORT
from aistack.render import render
from helpers import EXAMPLES, K8S_VERSION, all_permitted, example, stack


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """meta/v1 LabelSelector semantics."""
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pods(manifests: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Pod labels of every Deployment, by Deployment name; and of every pod of every
    LeaderWorkerSet, by the name LeaderWorkerSet gives it (``<lws>-<group>`` for a
    leader, ``<lws>-<group>-<index>`` for a worker), with the labels it adds."""
    out = {
        m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"]
        for m in manifests
        if m["kind"] == "Deployment"
    }
    for m in manifests:
        if m["kind"] != "LeaderWorkerSet":
            continue
        name, template = m["metadata"]["name"], m["spec"]["leaderWorkerTemplate"]
        for group in range(m["spec"]["replicas"]):
            for index in range(template["size"]):
                role = "leaderTemplate" if index == 0 else "workerTemplate"
                pod = f"{name}-{group}" + (f"-{index}" if index else "")
                out[pod] = template[role]["metadata"]["labels"] | {
                    "leaderworkerset.sigs.k8s.io/name": name,
                    "leaderworkerset.sigs.k8s.io/group-index": str(group),
                    "leaderworkerset.sigs.k8s.io/worker-index": str(index),
                }
    return out


def policies(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == "NetworkPolicy"]


def admits(
    manifests: list[dict[str, Any]], target: dict[str, str], source: dict[str, str], port: int
) -> bool:
    """Whether a pod with ``source`` labels in the same namespace may connect to ``port`` of
    a pod with ``target`` labels (policies are additive; none selecting a pod admits all)."""
    chosen = [p for p in policies(manifests) if selects(p["spec"]["podSelector"], target)]
    if not chosen:
        return True
    for p in chosen:
        for rule in p["spec"].get("ingress", []):
            ports = [r["port"] for r in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                same_namespace = "podSelector" in peer and "namespaceSelector" not in peer
                if same_namespace and selects(peer["podSelector"], source):
                    return True
    return False


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_pod_is_covered_by_its_parts_policy(path: Any) -> None:
    s = example(path)
    out = render(s, all_permitted(s))
    assert policies(out), "NetworkPolicies are on by default"
    for name, labels in pods(out).items():
        chosen = [
            p["metadata"]["name"]
            for p in policies(out)
            if selects(p["spec"]["podSelector"], labels)
        ]
        in_group = "leaderworkerset.sigs.k8s.io/group-index" in labels
        # Its part's policy, and its replica group's for a pod of a multi-node model.
        assert len(chosen) == (2 if in_group else 1), (name, chosen)
    for p in policies(out):
        kubernetes_validate.validate(p, K8S_VERSION, strict=True)


def test_only_the_gateway_is_reachable_from_outside_the_stack() -> None:
    s = stack(models=[{"name": "m", "source": "org/m"}])
    out = render(s, {"m": True})
    by_name = pods(out)
    stranger = {"app": "somebody-else"}
    neighbour = {"aistack.dev/stack": "other-stack", "app.kubernetes.io/component": "gateway"}
    gateway = by_name["demo-gateway"]
    assert admits(out, gateway, stranger, GATEWAY_PORT)
    assert not admits(out, gateway, stranger, 22), "the gateway accepts only its own port"
    for name, labels in by_name.items():
        if name == "demo-gateway":
            continue
        for port in (8000, 5000, 6379, 8265):
            assert not admits(out, labels, stranger, port), (name, port)
            assert not admits(out, labels, neighbour, port), f"{name}:{port} open to another stack"


# The stack the table of docs/security.md is about: one pod per role it names.
TABLE_STACK = {
    "models": [
        {"name": "chat", "source": "org/chat", "replicas": 2},
        {"name": "big", "source": "org/big", "nodes": 2, "replicas": 2},
    ],
    "ray": {"workerGroups": [{"name": "cpu", "replicas": 1}]},
    "network": {"allowFrom": [{"podSelector": {"matchLabels": {"app": "notebook"}}}]},
    "monitoring": {"scrapeFrom": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]},
}
ROLES = {
    "gateway": "demo-gateway",
    "model server": "demo-vllm-chat",
    "multi-node leader (group 0)": "demo-vllm-big-lws-0",
    "multi-node worker (group 0)": "demo-vllm-big-lws-0-1",
    "multi-node leader (group 1)": "demo-vllm-big-lws-1",
    "multi-node worker (group 1)": "demo-vllm-big-lws-1-1",
    "Ray head": "demo-ray-head",
    "Ray worker": "demo-ray-worker-cpu",
    "MLflow": "demo-mlflow",
}
OUTSIDERS = {
    "allowFrom peer": {"app": "notebook"},
    "scrapeFrom peer": {"app": "prometheus"},
    "other pod in the namespace": {"app": "somebody-else"},
    "another stack's gateway": {
        "aistack.dev/stack": "other", "app.kubernetes.io/component": "gateway"
    },
}  # fmt: skip
SECURITY_MD = Path(__file__).resolve().parents[1] / "docs" / "security.md"


def reachability_table() -> list[tuple[str, str, int, bool]]:
    """(source, destination, port, allowed) for every row of docs/security.md's table."""
    rows = []
    for line in SECURITY_MD.read_text().splitlines():
        m = re.fullmatch(r"\| (.+?) \| (.+?):(\d+) \| (yes|no) \|", line)
        if m:
            rows.append((m[1], m[2], int(m[3]), m[4] == "yes"))
    return rows


def test_the_documented_reachability_table_is_what_the_policies_do() -> None:
    rows = reachability_table()
    assert len(rows) >= 30, "docs/security.md lost its table"
    s = stack(**TABLE_STACK)
    out = render(s, all_permitted(s))
    by_name = pods(out)
    labels = {role: by_name[name] for role, name in ROLES.items()} | OUTSIDERS
    wrong = [
        f"{src} -> {dst}:{port}: documented {'yes' if ok else 'no'}"
        for src, dst, port, ok in rows
        if admits(out, labels[dst], labels[src], port) != ok
    ]
    assert wrong == []
    # The rows that matter most, whatever else the table says.
    assert ("gateway", "Ray head", 8265, False) in rows
    assert ("gateway", "multi-node leader (group 0)", 8265, False) in rows
    assert ("multi-node worker (group 1)", "multi-node leader (group 0)", 29501, False) in rows
    assert ("multi-node worker (group 0)", "multi-node leader (group 0)", 29501, True) in rows


def test_a_part_reached_by_nobody_admits_nothing() -> None:
    # Ray alone (no allowFrom): its own pods only; and a policy without rules stays a
    # policy without rules (an empty `from` would admit everyone).
    s = stack(models=[], mlflow={"enabled": False}, gateway={"enabled": False})
    out = render(s, {})
    (ray,) = policies(out)
    assert ray["spec"]["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {
            "aistack.dev/stack": "demo", "app.kubernetes.io/name": "ray"
        }}}]}
    ]  # fmt: skip
    s = stack(models=[{"name": "m", "source": "org/m"}], ray={"enabled": False},
              mlflow={"enabled": False}, gateway={"enabled": False})  # fmt: skip
    (servers,) = policies(render(s, {"m": True}))
    assert servers["spec"]["ingress"] == []
    assert not admits(render(s, {"m": True}), pods(render(s, {"m": True}))["demo-vllm-m"],
                      {"aistack.dev/stack": "demo"}, 8000)  # fmt: skip


def test_peers_the_user_names_are_admitted_and_schema_valid() -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"team": "observability"}}}
    office = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}
    notebooks = {"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["jupyter"]}
    ]}}  # fmt: skip
    s = stack(network={"allowFrom": [monitoring, notebooks], "gatewayFrom": [office]})
    out = render(s, {"m": True})
    by_name = {p["metadata"]["name"]: p for p in policies(out)}
    for p in by_name.values():
        kubernetes_validate.validate(p, K8S_VERSION, strict=True)
    ray = by_name["demo-ray"]["spec"]["ingress"]
    assert ray[0]["from"][1:] == [monitoring, notebooks], "allowFrom: every port"
    mlflow = by_name["demo-tracking"]["spec"]["ingress"]
    assert mlflow[-1] == {"from": [monitoring, notebooks]}, "allowFrom: every port"
    gateway = by_name["demo-gateway"]["spec"]["ingress"]
    assert gateway[0]["from"][1:] == [monitoring, notebooks, office]
    assert admits(out, pods(out)["demo-mlflow"], {"app": "jupyter"}, 5000)
    assert not admits(out, pods(out)["demo-gateway"], {"app": "somebody"}, GATEWAY_PORT)


def test_policies_can_be_turned_off() -> None:
    out = render(stack(network={"policies": False}), {"m": True})
    assert policies(out) == []


def test_no_gateway_no_gateway_policy() -> None:
    out = render(stack(gateway={"enabled": False}), {"m": True})
    assert [p["metadata"]["name"] for p in policies(out)] == [
        "demo-model-server", "demo-ray", "demo-tracking"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "peer",
    [
        {},
        {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
        {"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}},
    ],
)
def test_a_peer_is_either_selectors_or_an_ip_block(peer: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=re.escape(rules.NETWORK_PEER)):
        stack(network={"allowFrom": [peer]})
