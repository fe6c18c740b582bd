"""NetworkPolicies: what each rendered pod accepts, read off the policies as a CNI would."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from aistack.api import rules
from aistack.render import render
from aistack.render.render import GATEWAY_PORT
from helpers import EXAMPLES, example, stack

K8S_VERSION = "1.36.0"


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
    """Pod labels of every Deployment, by Deployment name."""
    return {
        m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"]
        for m in manifests
        if m["kind"] == "Deployment"
    }


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
def test_every_pod_is_covered_by_exactly_one_policy(path: Any) -> None:
    s = example(path)
    out = render(s, {m.name: True for m in s.spec.models})
    assert policies(out), "NetworkPolicies are on by default"
    for name, labels in pods(out).items():
        chosen = [
            p["metadata"]["name"]
            for p in policies(out)
            if selects(p["spec"]["podSelector"], labels)
        ]
        assert len(chosen) == 1, (name, chosen)
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
        assert not admits(out, labels, stranger, 8000), name
        assert not admits(out, labels, neighbour, 8000), f"{name} open to another stack"
        assert admits(out, labels, gateway, 8000), f"{name} closed to its own gateway"
        assert admits(out, labels, by_name["demo-ray-head"], 6379), name


def test_peers_the_user_names_are_admitted_and_schema_valid() -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"team": "observability"}}}
    office = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}
    notebooks = {"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["jupyter"]}
    ]}}  # fmt: skip
    s = stack(network={"allowFrom": [monitoring, notebooks], "gatewayFrom": [office]})
    out = render(s, {"m": True})
    internal, gateway = policies(out)
    for p in (internal, gateway):
        kubernetes_validate.validate(p, K8S_VERSION, strict=True)
    assert internal["spec"]["ingress"][0]["from"][1:] == [monitoring, notebooks]
    assert gateway["spec"]["ingress"][0]["from"][1:] == [monitoring, notebooks, office]
    assert admits(out, pods(out)["demo-mlflow"], {"app": "jupyter"}, 5000)
    assert not admits(out, pods(out)["demo-gateway"], {"app": "somebody"}, GATEWAY_PORT)


def test_policies_can_be_turned_off() -> None:
    out = render(stack(network={"policies": False}), {"m": True})
    assert policies(out) == []


def test_no_gateway_no_gateway_policy() -> None:
    out = render(stack(gateway={"enabled": False}), {"m": True})
    assert [p["metadata"]["name"] for p in policies(out)] == ["demo-internal"]


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
