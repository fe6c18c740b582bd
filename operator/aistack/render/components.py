"""The parts of a stack, each described once.

A ``Component`` says everything the operator needs to know about one part: whether the
stack enables it (its spec section), the objects it renders (its template, through its
render function), how it reports readiness (its Deployments, its pods, its condition),
its endpoints, the operator setting of its default image (``aistack run --<image>-image``,
the chart's ``images.<image>``), and who may reach it (the NetworkPolicies).

Render, status, the network policies, the CLI flags and the chart all read ``COMPONENTS``:
adding a part to the stack is its entry here, its template and its API section
(docs/adding-a-component.md lists the files).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from aistack import names
from aistack.api.v1alpha1 import AIStack, AIStackSpec, ModelSpec
from aistack.render import render as parts
from aistack.render.config import RenderConfig

Manifest = parts.Manifest
Ingress = Literal["stack", "public"]


@dataclass(frozen=True)
class Component:
    #: Short name (the ``app.kubernetes.io/component`` of most of its objects).
    name: str
    #: What people call it, in condition messages ("Ray: 1/1 replicas ready").
    title: str
    #: Its status condition (True when ready or disabled).
    condition: str
    #: Whether the stack has this part.
    enabled: Callable[[AIStackSpec], bool]
    #: Its objects: the stack, the models that are served (permitted), the settings.
    render: Callable[[AIStack, list[ModelSpec], RenderConfig], list[Manifest]]
    #: The Deployments whose readiness is the part's (they act as one).
    workloads: Callable[[AIStack], list[str]]
    #: The labels of its pods (their problems explain a part that is not ready).
    pod_selector: Callable[[str], dict[str, str]]
    #: Its in-cluster URLs (``status.endpoints``).
    endpoints: Callable[[AIStack, RenderConfig], dict[str, str]]
    #: Key of its default image: ``RenderConfig.<image>_image``, ``--<image>-image``,
    #: the chart's ``images.<image>``.
    image: str
    #: Who may reach it: ``stack`` = the stack's own pods and ``spec.network.allowFrom``
    #: (the ``<stack>-internal`` NetworkPolicy); ``public`` = its own policy, open to
    #: anyone unless ``spec.network.gatewayFrom`` narrows it.
    ingress: Ingress = "stack"
    #: Something its condition adds to its message, when there is (e.g. what happens to
    #: MLflow's data when the stack is deleted).
    note: Callable[[AIStack], str | None] | None = None

    @property
    def image_setting(self) -> str:
        return f"{self.image}_image"


def _models(stack: AIStack, served: list[ModelSpec], config: RenderConfig) -> list[Manifest]:
    out: list[Manifest] = []
    for model in stack.spec.models:
        out += parts.render_model(stack, model, config, permitted=model in served)
    return out


def _model_workloads(stack: AIStack) -> list[str]:
    out: list[str] = []
    for model in stack.spec.models:
        out += parts.model_workloads(stack.metadata.name, model)
    return out


def _ray_workloads(stack: AIStack) -> list[str]:
    name = stack.metadata.name
    return [names.ray_head(name)] + [
        names.ray_worker(name, g.name) for g in stack.spec.ray.worker_groups
    ]


def _mlflow_note(stack: AIStack) -> str | None:
    mlflow = stack.spec.mlflow
    if not mlflow.needs_pvc:
        return None
    kept = (
        "deleted with the stack"
        if mlflow.storage.delete_with_stack
        else "kept when the stack is deleted"
    )
    return f"data PVC {names.mlflow_data(stack.metadata.name)} is {kept}"


COMPONENTS: tuple[Component, ...] = (
    Component(
        name="model-server",
        title="vLLM",
        condition="ModelsReady",
        enabled=lambda spec: bool(spec.models),
        render=_models,
        workloads=_model_workloads,
        pod_selector=lambda stack: names.selector_labels(stack, "model-server"),
        endpoints=lambda stack, config: {},
        image="vllm",
    ),
    Component(
        name="ray",
        title="Ray",
        condition="RayReady",
        enabled=lambda spec: spec.ray.enabled,
        render=lambda stack, served, config: parts.render_ray(stack, config),
        workloads=_ray_workloads,
        pod_selector=lambda stack: {names.STACK_LABEL: stack, "app.kubernetes.io/name": "ray"},
        endpoints=parts.ray_endpoints,
        image="ray",
    ),
    Component(
        name="tracking",
        title="MLflow",
        condition="TrackingReady",
        enabled=lambda spec: spec.mlflow.enabled,
        render=lambda stack, served, config: parts.render_mlflow(stack, config),
        workloads=lambda stack: [names.mlflow(stack.metadata.name)],
        pod_selector=lambda stack: names.selector_labels(stack, "tracking"),
        endpoints=lambda stack, config: {"mlflow": parts.mlflow_uri(stack, config)},
        image="mlflow",
        note=_mlflow_note,
    ),
    Component(
        name="gateway",
        title="Gateway",
        condition="GatewayReady",
        enabled=lambda spec: spec.gateway.enabled,
        render=parts.render_gateway,
        workloads=lambda stack: [names.gateway(stack.metadata.name)],
        pod_selector=lambda stack: names.selector_labels(stack, "gateway"),
        endpoints=parts.gateway_endpoints,
        image="gateway",
        ingress="public",
    ),
)
#: The component that serves the models (its readiness is per model; see status).
MODELS = COMPONENTS[0]
BY_NAME: dict[str, Component] = {c.name: c for c in COMPONENTS}


def enabled(stack: AIStack) -> list[Component]:
    return [c for c in COMPONENTS if c.enabled(stack.spec)]


def render(
    stack: AIStack,
    permitted: Mapping[str, bool],
    config: RenderConfig | None = None,
) -> list[Manifest]:
    """Every manifest the stack needs: its NetworkPolicies, then each enabled component's
    objects, in the order of ``COMPONENTS``.

    ``permitted`` maps model name to whether its license is permitted; a model that is not
    permitted (or missing from the map) runs no pod and gets no gateway route.
    """
    config = config or RenderConfig()
    served = parts.served_models(stack, permitted)
    on = enabled(stack)
    manifests: list[Manifest] = []
    if stack.spec.network.policies:
        manifests += parts.render_network(
            stack,
            internal=any(c.ingress == "stack" for c in on),
            public=any(c.ingress == "public" for c in on),
        )
    for component in on:
        manifests += component.render(stack, served, config)
    return manifests


def endpoints(stack: AIStack, config: RenderConfig | None = None) -> dict[str, str]:
    """In-cluster URLs of the enabled parts (status.endpoints)."""
    config = config or RenderConfig()
    out: dict[str, str] = {}
    for component in enabled(stack):
        out |= component.endpoints(stack, config)
    return out
