"""Operator-level settings the renderer needs: default images and the cluster domain.

They belong to the operator installation (chart values, command-line flags), not to a
stack, so upgrading the operator can move the default images forward; a stack that wants
a fixed image names it in its spec.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
DEFAULT_RAY_IMAGE = "rayproject/ray:2.49.2"
DEFAULT_MLFLOW_IMAGE = "ghcr.io/mlflow/mlflow:v3.6.0"
DEFAULT_GATEWAY_IMAGE = "ghcr.io/berriai/litellm:v1.79.3-stable"


class RenderConfig(BaseModel):
    """Settings of the operator installation that shape every stack's manifests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vllm_image: str = DEFAULT_VLLM_IMAGE
    ray_image: str = DEFAULT_RAY_IMAGE
    mlflow_image: str = DEFAULT_MLFLOW_IMAGE
    gateway_image: str = DEFAULT_GATEWAY_IMAGE
    cluster_domain: str = "cluster.local"
    #: MLflow experiment the gateway writes its request traces to.
    mlflow_experiment: str = "aistack-gateway"
    #: MLflow experiment id vLLM's OTLP traces go to ("0" is MLflow's Default experiment).
    mlflow_trace_experiment_id: str = "0"
