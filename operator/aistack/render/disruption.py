"""PodDisruptionBudgets for workloads that run more than one replica (or group)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aistack import names
from aistack.api.v1alpha1 import AIStack
from aistack.components import namespace_of
from aistack.render.common import Manifest, fill_template


def render_disruption_budgets(
    stack: AIStack, manifests: list[Manifest], most: Mapping[str, int] | None = None
) -> list[Manifest]:
    """A PodDisruptionBudget (``maxUnavailable: 1``) for every Deployment of ``manifests``
    with more than one replica (or, for one whose replicas a scaler sets, at most ``most``
    of them: by name), and every LeaderWorkerSet with more than one group, named after
    it. A LeaderWorkerSet's budget selects its pods by the label LeaderWorkerSet puts on
    them: evicting one pod restarts its whole group, and the budget then lets no other pod
    go until that group is back."""
    deployments = [
        {"name": d["metadata"]["name"], "labels": d["metadata"]["labels"], "selector": _pods(d)}
        for d in manifests
        if d["kind"] in ("Deployment", "LeaderWorkerSet")
        and (most or {}).get(d["metadata"]["name"], d["spec"].get("replicas", 1)) > 1
    ]
    if not deployments:
        return []
    return fill_template(
        "disruption.yaml.j2", namespace=namespace_of(stack), deployments=deployments
    )


def _pods(workload: Manifest) -> dict[str, Any]:
    if workload["kind"] == "LeaderWorkerSet":
        return {names.LWS_NAME_LABEL: workload["metadata"]["name"]}
    return dict(workload["spec"]["selector"]["matchLabels"])
