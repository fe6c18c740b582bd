"""The NetworkPolicies: who may reach each part (the registry says), as Kubernetes objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aistack import names
from aistack.api.v1alpha1 import AIStack, NetworkPeer
from aistack.components import namespace_of
from aistack.render.common import Manifest, fill_template


def _peers(peers: list[NetworkPeer]) -> list[dict[str, Any]]:
    return [p.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True) for p in peers]


@dataclass(frozen=True)
class Ingress:
    """One NetworkPolicy of a stack: the pods it selects and who may connect to them.

    ``sources`` are pod selectors of the stack's own parts, admitted on ``port`` (every
    port when None); with ``public``, anyone may connect to ``port`` (or, when
    ``spec.network.gatewayFrom`` is set, those peers and the stack's own pods).
    ``spec.network.allowFrom`` is admitted on every port by every policy."""

    name: str
    selector: dict[str, str]
    sources: list[dict[str, str]]
    port: int | None = None
    public: bool = False
    #: The port Prometheus scrapes (``spec.monitoring.scrapeFrom`` is admitted to it).
    metrics_port: int | None = None


def _ingress_rules(stack: AIStack, ingress: Ingress) -> list[dict[str, Any]]:
    scrape = _peers(stack.spec.monitoring.scrape_from)
    scrape_rule = (
        [{"ports": [{"port": ingress.metrics_port, "protocol": "TCP"}], "from": scrape}]
        if scrape and ingress.metrics_port is not None
        else []
    )
    return _part_rules(stack, ingress) + scrape_rule


def _part_rules(stack: AIStack, ingress: Ingress) -> list[dict[str, Any]]:
    network = stack.spec.network
    allow_from = _peers(network.allow_from)
    ports = [{"port": ingress.port, "protocol": "TCP"}] if ingress.port is not None else None
    if ingress.public and ports:
        rule: dict[str, Any] = {"ports": ports}
        if network.gateway_from:
            own_pods = {"podSelector": {"matchLabels": {names.STACK_LABEL: stack.metadata.name}}}
            rule["from"] = [own_pods, *allow_from, *_peers(network.gateway_from)]
        return [rule]
    sources = [{"podSelector": {"matchLabels": s}} for s in ingress.sources]
    # No rule at all admits nothing; a rule with an empty `from` would admit everyone.
    if ports is None:
        return [{"from": sources + allow_from}] if sources or allow_from else []
    rules = [{"ports": ports, "from": sources}] if sources else []
    return rules + ([{"from": allow_from}] if allow_from else [])


def render_network(stack: AIStack, policies: list[Ingress]) -> list[Manifest]:
    """The stack's NetworkPolicies (ingress only), one per entry of ``policies`` (the
    components say who may reach them; see ``components.network``)."""
    stack_name = stack.metadata.name
    return fill_template(
        "network.yaml.j2",
        namespace=namespace_of(stack),
        labels=names.common_labels(stack_name, "network", "aistack"),
        policies=[
            {"name": p.name, "selector": p.selector, "ingress": _ingress_rules(stack, p)}
            for p in policies
        ],
    )
