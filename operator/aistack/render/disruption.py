"""PodDisruptionBudgets for Deployments that run more than one replica."""

from __future__ import annotations

from aistack.api.v1alpha1 import AIStack
from aistack.components import namespace_of
from aistack.render.common import Manifest, fill_template


def render_disruption_budgets(stack: AIStack, manifests: list[Manifest]) -> list[Manifest]:
    """A PodDisruptionBudget (``maxUnavailable: 1``) for every Deployment of ``manifests``
    with more than one replica, named after it."""
    deployments = [
        {
            "name": d["metadata"]["name"],
            "labels": d["metadata"]["labels"],
            "selector": d["spec"]["selector"]["matchLabels"],
        }
        for d in manifests
        if d["kind"] == "Deployment" and d["spec"]["replicas"] > 1
    ]
    if not deployments:
        return []
    return fill_template(
        "disruption.yaml.j2", namespace=namespace_of(stack), deployments=deployments
    )
