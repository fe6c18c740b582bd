"""KEDA ScaledObjects for the autoscaled models, and what autoscaling changes in their
Deployments (``components.autoscaling`` says whether they are rendered)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from aistack import names
from aistack.api.v1alpha1 import AIStack, AutoscalingSpec, ModelSpec
from aistack.components import namespace_of
from aistack.render.common import Manifest, fill_template

#: Seconds between KEDA's reads of the query (KEDA's default is 30).
POLLING_INTERVAL = 15
#: What the gateway's hold exports per model (aistack/data/gateway_hold.py).
HELD_SERIES = "aistack_gateway_held_requests"
#: The per-replica target of a sleeping model's activity trigger: far above any count, so
#: that it only decides whether the model is awake (above 0: one replica at least) and
#: never how many replicas it gets (the load trigger does).
ACTIVITY_TARGET = 1_000_000


def prometheus_label(label: str) -> str:
    """A pod label as a target label of a PodMonitor's ``podTargetLabels`` (the
    Prometheus Operator replaces what a Prometheus label name may not hold with ``_``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def _selector(stack: AIStack, model_label: str, model: str) -> str:
    return ",".join(
        f'{label}="{value}"'
        for label, value in (
            ("namespace", namespace_of(stack)),
            (prometheus_label(names.STACK_LABEL), stack.metadata.name),
            (model_label, model),
        )
    )


def load_query(stack: AIStack, model: ModelSpec, scaling: AutoscalingSpec) -> str:
    """PromQL: the model's load, summed over its servers (vLLM labels its series with the
    served model name; the PodMonitor adds the namespace and the stack's label)."""
    return f"sum({scaling.series}{{{_selector(stack, 'model_name', model.name)}}})"


def activity_query(stack: AIStack, model: ModelSpec) -> str:
    """PromQL: whether a sleeping model has anything to do: the requests the gateway holds
    for it (its hold labels them with the model's name), and those its servers run or
    queue (0 where a series is missing: a model at zero replicas exports none)."""
    vllm = _selector(stack, "model_name", model.name)
    parts = [
        f"sum({HELD_SERIES}{{{_selector(stack, 'model', model.name)}}})",
        f"sum(vllm:num_requests_running{{{vllm}}})",
        f"sum(vllm:num_requests_waiting{{{vllm}}})",
    ]
    return " + ".join(f"({p} or vector(0))" for p in parts)


def scaled_models(stack: AIStack, served: Sequence[ModelSpec]) -> list[ModelSpec]:
    """The served models that autoscale (on one node: ``AIStackSpec.autoscaling_of``)."""
    return [m for m in served if stack.spec.autoscaling_of(m) is not None]


def render_scaled_objects(
    stack: AIStack, models: Sequence[ModelSpec], address: str
) -> list[Manifest]:
    """A ScaledObject per model, named like (and scaling) the model's Deployment."""
    stack_name = stack.metadata.name
    scaled = []
    for model in models:
        scaling = stack.spec.autoscaling_of(model)
        assert scaling is not None
        scaled.append(
            {
                "name": names.model_base(stack_name, model.name),
                "labels": names.common_labels(stack_name, "autoscaling", "keda", model=model.name),
                "min": scaling.min_replicas,
                "max": scaling.max_replicas,
                "delay": scaling.scale_down_delay_seconds,
                "metric_name": scaling.metric.lower(),
                "query": load_query(stack, model, scaling),
                "threshold": str(scaling.per_replica),
                "activity": activity_query(stack, model) if scaling.sleeps else None,
            }
        )
    return fill_template(
        "autoscaling.yaml.j2",
        namespace=namespace_of(stack),
        address=address,
        polling_interval=POLLING_INTERVAL,
        activity_target=str(ACTIVITY_TARGET),
        scaled=scaled,
    )


def hand_replicas_to_the_scaler(
    manifests: list[Manifest], stack: AIStack, models: Sequence[ModelSpec]
) -> None:
    """The Deployments of ``models`` without ``spec.replicas`` (KEDA sets it; the operator's
    apply must not own it), their starting size in ``names.STARTING_REPLICAS_ANNOTATION``."""
    starting = {names.model_base(stack.metadata.name, m.name): m.replicas for m in models}
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        if manifest["kind"] == "Deployment" and name in starting:
            manifest["spec"].pop("replicas", None)
            annotations = manifest["metadata"].setdefault("annotations", {})
            annotations[names.STARTING_REPLICAS_ANNOTATION] = str(starting[name])
