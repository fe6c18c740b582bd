"""Operator-level settings the renderer needs: default images and the cluster domain.

They belong to the operator installation (chart values, command-line flags), not to a
stack, so upgrading the operator can move the default images forward; a stack that wants
a fixed image names it in its spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RenderConfig(BaseModel):
    """Settings of the operator installation that shape every stack's manifests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The default image of each component, by its image key (``Component.image``): the
    #: ones given here, and the component's built-in default for the others. A key that
    #: names no component is refused.
    images: Mapping[str, str] = Field(default_factory=dict)
    cluster_domain: str = "cluster.local"
    #: MLflow experiment that the gateway's and the model servers' OTLP traces go to, by id
    #: (MLflow's OTLP endpoint takes an id, not a name). "0" is the Default experiment,
    #: which every MLflow server has; each stack has its own MLflow, so it is the stack's.
    mlflow_trace_experiment_id: str = "0"
    #: Whether the cluster has the Prometheus Operator's PodMonitor CRD: the operator
    #: watches for it (True/False); None where nobody looked (``aistack render`` without
    #: ``--monitoring-crds``): then only ``spec.monitoring.enabled: true`` renders monitors.
    monitoring_crds: bool | None = None
    #: Whether this installation renders stacks' monitors at all (``aistack run
    #: --no-stack-monitoring``: its RBAC does not cover PodMonitors).
    stack_monitoring: bool = True

    @model_validator(mode="before")
    @classmethod
    def _default_images(cls, data: Any) -> Any:
        # The registry describes each component's default image, and it imports this
        # module; so it is read here, when a config is built, not when this is imported.
        from aistack.render.components import DEFAULT_IMAGES

        if not isinstance(data, dict):
            return data
        given = dict(data.get("images") or {})
        unknown = sorted(set(given) - set(DEFAULT_IMAGES))
        if unknown:
            raise ValueError(
                f"images: {', '.join(unknown)} is not a component's image key "
                f"(known: {', '.join(DEFAULT_IMAGES)})"
            )
        return {**data, "images": {**DEFAULT_IMAGES, **{k: v for k, v in given.items() if v}}}
