"""Operator-level settings the renderer needs: default images and the cluster domain.

They belong to the operator installation (chart values, command-line flags), not to a
stack, so upgrading the operator can move the default images forward; a stack that wants
a fixed image names it in its spec.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: The program version of each default image: one pin per component. The conformance
#: suite (tests/conformance) runs exactly these versions, and a unit test fails when its
#: environments (tests/conformance/envs/*.txt) and these pins drift apart. A version moves
#: only when the suite passes at the new one.
VLLM_VERSION = "0.34.0"
RAY_VERSION = "2.60.0"
MLFLOW_VERSION = "3.17.2"
LITELLM_VERSION = "1.110.2"

DEFAULT_VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
DEFAULT_RAY_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311"
DEFAULT_MLFLOW_IMAGE = f"ghcr.io/mlflow/mlflow:v{MLFLOW_VERSION}"
DEFAULT_GATEWAY_IMAGE = f"ghcr.io/berriai/litellm:v{LITELLM_VERSION}"


class RenderConfig(BaseModel):
    """Settings of the operator installation that shape every stack's manifests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vllm_image: str = DEFAULT_VLLM_IMAGE
    ray_image: str = DEFAULT_RAY_IMAGE
    mlflow_image: str = DEFAULT_MLFLOW_IMAGE
    gateway_image: str = DEFAULT_GATEWAY_IMAGE
    cluster_domain: str = "cluster.local"
    #: MLflow experiment that the gateway's and the model servers' OTLP traces go to, by id
    #: (MLflow's OTLP endpoint takes an id, not a name). "0" is the Default experiment,
    #: which every MLflow server has; each stack has its own MLflow, so it is the stack's.
    mlflow_trace_experiment_id: str = "0"
