"""Ray: the head, the worker groups and their Service."""

from __future__ import annotations

from typing import Any

from aistack import names
from aistack.api.v1alpha1 import AIStack, ModelSpec, RayWorkerGroup
from aistack.components import (
    RAY_AGENT_PORT,
    RAY_CLIENT_PORT,
    RAY_DASHBOARD_PORT,
    RAY_GCS_PORT,
    RAY_METRICS_PORT,
    RenderConfig,
    mlflow_uri,
    namespace_of,
    svc_host,
)
from aistack.render.common import (
    Manifest,
    container_resources,
    container_security,
    fill_template,
    pod_security,
    tolerations,
)

#: The registry's part this module writes (``aistack.components``).
PART = "ray"


def render_part(stack: AIStack, served: list[ModelSpec], config: RenderConfig) -> list[Manifest]:
    """The part's objects (``render.stack`` finds this function by ``PART``)."""
    return render_ray(stack, config)


def render_ray(stack: AIStack, config: RenderConfig) -> list[Manifest]:
    stack_name = stack.metadata.name
    ray = stack.spec.ray
    head = names.ray_head(stack_name)
    env: list[dict[str, Any]] = [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}]
    if stack.spec.mlflow.enabled:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri(stack, config)})

    def worker(group: RayWorkerGroup) -> dict[str, Any]:
        return {
            "name": names.ray_worker(stack_name, group.name),
            "group": group,
            "labels": names.common_labels(stack_name, "ray-worker", "ray", ray_group=group.name),
            "selector": names.selector_labels(stack_name, "ray-worker", ray_group=group.name),
            "resources": container_resources(group.resources, gpus=group.gpus),
            "tolerations": tolerations(group.tolerations, gpu=group.gpus > 0),
            "node_selector": dict(group.node_selector),
            "args": [
                "start",
                f"--address={svc_host(head, namespace_of(stack), config)}:{RAY_GCS_PORT}",
                f"--num-gpus={group.gpus}",
                f"--dashboard-agent-listen-port={RAY_AGENT_PORT}",
                f"--metrics-export-port={RAY_METRICS_PORT}",
                "--block",
            ],
        }

    return fill_template(
        "ray.yaml.j2",
        namespace=namespace_of(stack),
        head=head,
        image=ray.image or config.images["ray"],
        head_labels=names.common_labels(stack_name, "ray-head", "ray"),
        head_selector=names.selector_labels(stack_name, "ray-head"),
        head_resources=container_resources(ray.head.resources),
        head_args=[
            "start",
            "--head",
            f"--port={RAY_GCS_PORT}",
            "--dashboard-host=0.0.0.0",
            f"--dashboard-port={RAY_DASHBOARD_PORT}",
            f"--ray-client-server-port={RAY_CLIENT_PORT}",
            f"--metrics-export-port={RAY_METRICS_PORT}",
            "--num-gpus=0",
            "--block",
        ],
        workers=[worker(g) for g in ray.worker_groups],
        env=env,
        ports={
            "gcs": RAY_GCS_PORT,
            "dashboard": RAY_DASHBOARD_PORT,
            "client": RAY_CLIENT_PORT,
            "metrics": RAY_METRICS_PORT,
            "agent": RAY_AGENT_PORT,
        },
        pod_security=pod_security(),
        container_security=container_security(),
    )
