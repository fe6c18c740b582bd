"""Models on the CPU engine (Ollama), against the real API server, scheduler and the
operator with its license webhook: examples/cpu.yaml's model lands on the node without
GPUs and reaches Ready behind the gateway's route; a model whose license the policy does
not permit is refused at `kubectl apply` as it would be on vLLM; what the engine cannot do
is refused by the CRD's rules (tests/bad_inputs.py holds those cases)."""

from __future__ import annotations

from typing import Any

import pytest
from operator_process import OperatorProcess
from stacks import apply, deployments, get_stack, load, pods, routes, wait_phase

pytestmark = pytest.mark.e2e

NC = "CohereForAI/c4ai-command-r-plus"  # CC-BY-NC-4.0 on its model card


def test_a_cpu_model_runs_on_a_node_without_gpus_behind_the_gateway(
    cluster: Any, governed: OperatorProcess, namespace: str
) -> None:
    doc = load("cpu.yaml")
    result = apply(cluster, doc, namespace)
    assert result.returncode == 0, result.stderr
    stack = wait_phase(cluster, namespace, "cpu", "Ready")
    (model,) = stack["status"]["models"]
    assert (model["name"], model["permitted"], model["license"], model["licenseSource"]) == (
        "qwen", True, "Apache-2.0", "Catalog",
    )  # fmt: skip
    assert model["readyReplicas"] == 1
    assert model["endpoint"] == f"http://cpu-vllm-qwen.{namespace}.svc.cluster.local:8000/v1"

    dep = deployments(cluster, namespace)["cpu-vllm-qwen"]
    template = dep["spec"]["template"]
    assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "ollama"
    assert [c["name"] for c in template["spec"]["initContainers"]] == ["import-model"]
    (pod,) = pods(cluster, namespace, "aistack.dev/model=qwen")
    # The scheduler put it where it fits without a GPU toleration: the CPU node.
    gpu_nodes = set(cluster.gpu_nodes())
    assert pod["spec"]["nodeName"] not in gpu_nodes, pod["spec"]["nodeName"]
    limits = pod["spec"]["containers"][0]["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in limits
    assert routes(cluster, namespace, "cpu") == ["qwen"]


def test_a_cpu_model_whose_license_is_not_permitted_is_refused(
    cluster: Any, governed: OperatorProcess, namespace: str
) -> None:
    doc = load("cpu.yaml")
    doc["spec"]["models"] = [{"name": "research", "source": NC}]
    result = apply(cluster, doc, namespace)
    assert result.returncode != 0, result.stdout
    assert "admission webhook" in result.stderr, result.stderr
    assert f"{NC} is under CC-BY-NC-4.0, which policy default denies" in result.stderr
    assert cluster.get_json("aistacks", "-n", namespace)["items"] == []
    # A GGUF on a PVC declares its license, and is judged by it the same way.
    doc["spec"]["models"] = [
        {"name": "research", "source": "pvc://models/nc.gguf", "license": "CC-BY-NC-4.0"}
    ]
    result = apply(cluster, doc, namespace)
    assert result.returncode != 0, result.stdout
    assert "CC-BY-NC-4.0" in result.stderr and "admission webhook" in result.stderr
    assert cluster.get_json("aistacks", "-n", namespace)["items"] == []


def test_a_model_moved_to_the_cpu_engine_keeps_its_objects(
    cluster: Any, governed: OperatorProcess, namespace: str
) -> None:
    """Switching a model's engine replaces its pods, not its Deployment or Service (their
    names are the model's): the gateway's route stays."""
    doc = load("cpu.yaml")
    doc["spec"]["engine"] = "vllm"
    doc["spec"]["models"] = [
        {"name": "qwen", "source": "Qwen/Qwen2.5-0.5B-Instruct", "maxModelLen": 4096}
    ]
    assert apply(cluster, doc, namespace).returncode == 0
    wait_phase(cluster, namespace, "cpu", "Ready")
    before = deployments(cluster, namespace)["cpu-vllm-qwen"]["metadata"]["uid"]
    assert [c["name"] for c in _containers(cluster, namespace)] == ["vllm"]

    doc["spec"]["models"][0] |= {"engine": "ollama", "source": "Qwen/Qwen2.5-0.5B-Instruct-GGUF"}
    assert apply(cluster, doc, namespace).returncode == 0
    stack = wait_phase(cluster, namespace, "cpu", "Ready")
    assert stack["status"]["models"][0]["permitted"] is True
    assert deployments(cluster, namespace)["cpu-vllm-qwen"]["metadata"]["uid"] == before
    assert [c["name"] for c in _containers(cluster, namespace)] == ["ollama"]
    assert routes(cluster, namespace, "cpu") == ["qwen"]
    assert get_stack(cluster, namespace, "cpu")["status"]["phase"] == "Ready"


def _containers(cluster: Any, ns: str) -> list[dict[str, Any]]:
    dep = deployments(cluster, ns)["cpu-vllm-qwen"]
    return dep["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]
