"""The operator against a real API server: stacks become Ready, edits converge, drift is
undone, deletion cleans up but keeps data, and a converged stack is left alone."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_process import REPO_ROOT, OperatorProcess
from stacks import (
    conditions,
    deployments,
    events,
    load,
    pods,
    resource_versions,
    routes,
    wait_exists,
    wait_phase,
)

EXAMPLES = REPO_ROOT / "examples"
READY_TIMEOUT = 90


def test_quickstart_becomes_ready_on_a_gpu_node(
    cluster: Any, operator: OperatorProcess, namespace: str, gpu_nodes: list[str]
) -> None:
    cluster.apply(load("quickstart.yaml"), namespace=namespace)
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    cond = conditions(stack)
    types = (
        "Ready",
        "LicenseCompliant",
        "ModelsReady",
        "RayReady",
        "TrackingReady",
        "GatewayReady",
    )
    # Monitoring is False here (no Prometheus Operator CRDs in this cluster; see
    # test_monitoring.py), and says why, without touching Ready.
    assert {t: c["status"] for t, c in cond.items()} == {
        **dict.fromkeys(types, "True"),
        "Monitoring": "False",
    }
    assert cond["Monitoring"]["reason"] == "CRDsAbsent"
    model = stack["status"]["models"][0]
    assert model["readyReplicas"] == 1 and model["permitted"] is True
    assert (
        model["endpoint"]
        == f"http://quickstart-vllm-phi-3-5-mini.{namespace}.svc.cluster.local:8000/v1"
    )
    assert stack["status"]["endpoints"]["gateway"].startswith("http://quickstart-gateway.")
    assert stack["status"]["modelsReady"] == "1/1"

    gpu_pods = pods(cluster, namespace, "aistack.dev/model=phi-3-5-mini")
    assert len(gpu_pods) == 1
    assert gpu_pods[0]["spec"]["nodeName"] in gpu_nodes
    for pod in pods(
        cluster, namespace, "app.kubernetes.io/component in (ray-head,tracking,gateway)"
    ):
        assert pod["spec"]["nodeName"] not in gpu_nodes, "CPU parts must not take GPU nodes"

    reasons = {r for _, r in events(cluster, namespace, "quickstart")}
    assert {"Applied", "ModelReady", "StackReady"} <= reasons
    table = cluster.kubectl("get", "ais", "-n", namespace).stdout
    assert "READY" in table and "PHASE" in table and "True" in table and "Ready" in table


def test_multi_model_stack_places_every_model_and_routes_them(
    cluster: Any, operator: OperatorProcess, namespace: str, gpu_nodes: list[str], policy: Any
) -> None:
    # The multi-node model is a LeaderWorkerSet on the stock vLLM image: no image of its
    # own, no policy beyond the default.
    doc = load("multi-model.yaml")
    assert not [m for m in doc["spec"]["models"] if "image" in m]
    cluster.apply(doc, namespace=namespace)
    stack = wait_phase(cluster, namespace, "multi", "Ready", timeout=120)
    assert stack["status"]["modelsReady"] == "3/3"
    assert routes(cluster, namespace, "multi") == ["chat", "mixtral", "gpt-oss"]
    group = pods(cluster, namespace, "aistack.dev/model=gpt-oss")
    assert len(group) == 2
    assert {p["metadata"]["labels"]["leaderworkerset.sigs.k8s.io/name"] for p in group} == {
        "multi-vllm-gpt-oss-lws"
    }
    assert {p["metadata"]["labels"]["aistack.dev/role"] for p in group} == {"leader", "worker"}
    nodes = {p["spec"]["nodeName"] for p in group}
    assert len(nodes) == 2 and nodes <= set(gpu_nodes), (
        "a multi-node group spans distinct GPU nodes"
    )
    gpu_worker = pods(cluster, namespace, "aistack.dev/ray-group=gpu")
    assert gpu_worker[0]["spec"]["nodeName"] in gpu_nodes
    cpu_workers = pods(cluster, namespace, "aistack.dev/ray-group=cpu")
    assert len(cpu_workers) == 2 and all(
        p["spec"]["nodeName"] not in gpu_nodes for p in cpu_workers
    )


def test_spec_edits_converge(cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    doc = load("quickstart.yaml")
    doc["spec"]["ray"] = {"enabled": False}
    cluster.apply(doc, namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")
    checksum = deployments(cluster, namespace)["quickstart-gateway"]["spec"]["template"][
        "metadata"
    ]["annotations"]

    doc["spec"]["models"].append(
        {"name": "mistral", "source": "mistralai/Mistral-7B-Instruct-v0.3", "replicas": 2}
    )
    cluster.apply(doc, namespace=namespace)
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    assert stack["status"]["modelsReady"] == "2/2"
    assert routes(cluster, namespace, "quickstart") == ["phi-3-5-mini", "mistral"]
    found = deployments(cluster, namespace)
    assert found["quickstart-vllm-mistral"]["status"]["readyReplicas"] == 2
    assert found["quickstart-gateway"]["spec"]["template"]["metadata"]["annotations"] != checksum

    doc["spec"]["models"] = [doc["spec"]["models"][1]]
    doc["spec"]["models"][0]["replicas"] = 1
    cluster.apply(doc, namespace=namespace)
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    cluster.wait_until(
        lambda: "quickstart-vllm-phi-3-5-mini" not in deployments(cluster, namespace),
        timeout=30,
        message="removed model's Deployment to go",
    )
    assert (
        cluster.kubectl(
            "get", "service", "quickstart-vllm-phi-3-5-mini", "-n", namespace, check=False
        ).returncode
        != 0
    )
    assert routes(cluster, namespace, "quickstart") == ["mistral"]
    assert deployments(cluster, namespace)["quickstart-vllm-mistral"]["spec"]["replicas"] == 1
    assert [m["name"] for m in stack["status"]["models"]] == ["mistral"]
    assert "rayDashboard" not in stack["status"]["endpoints"]


def test_drift_is_undone(cluster: Any, operator: OperatorProcess, namespace: str) -> None:
    cluster.apply(load("quickstart.yaml"), namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")
    before = deployments(cluster, namespace)["quickstart-ray-head"]["metadata"]["uid"]
    cluster.kubectl("delete", "deployment", "quickstart-ray-head", "-n", namespace)
    cluster.kubectl(
        "scale", "deployment", "quickstart-vllm-phi-3-5-mini", "--replicas=0", "-n", namespace
    )
    cluster.kubectl(
        "patch",
        "configmap",
        "quickstart-gateway-config",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"data": {"config.yaml": "model_list: []"}}',
    )

    def restored() -> bool:
        found = deployments(cluster, namespace)
        head = found.get("quickstart-ray-head")
        return bool(
            head
            and head["metadata"]["uid"] != before
            and found["quickstart-vllm-phi-3-5-mini"]["spec"]["replicas"] == 1
            and routes(cluster, namespace, "quickstart") == ["phi-3-5-mini"]
        )

    cluster.wait_until(restored, timeout=30, message="drift to be undone")
    wait_phase(cluster, namespace, "quickstart", "Ready")


def test_deleting_a_stack_removes_its_parts_and_keeps_its_data(
    cluster: Any, operator: OperatorProcess, namespace: str
) -> None:
    keep = load("quickstart.yaml")
    drop = load("quickstart.yaml")
    drop["metadata"]["name"] = "scratch"
    drop["spec"]["mlflow"] = {"storage": {"deleteWithStack": True}}
    for doc in (keep, drop):
        cluster.apply(doc, namespace=namespace)
    for name in ("quickstart", "scratch"):
        wait_phase(cluster, namespace, name, "Ready")
    kept_uid = cluster.get_json("pvc", "quickstart-mlflow-data", "-n", namespace)["metadata"]["uid"]
    cluster.kubectl(
        "delete", "aistack", "quickstart", "scratch", "-n", namespace, "--wait=true", timeout=60
    )

    def gone() -> bool:
        left = cluster.get_json(
            "deployments,services,configmaps", "-n", namespace, "-l", "aistack.dev/stack"
        )["items"]
        return not left

    cluster.wait_until(gone, timeout=60, message="children to be garbage-collected")
    pvcs = {p["metadata"]["name"]: p for p in cluster.get_json("pvc", "-n", namespace)["items"]}
    assert pvcs["quickstart-mlflow-data"]["metadata"]["uid"] == kept_uid

    def scratch_pvc_gone() -> bool:
        names = {p["metadata"]["name"] for p in cluster.get_json("pvc", "-n", namespace)["items"]}
        return "scratch-mlflow-data" not in names

    cluster.wait_until(scratch_pvc_gone, timeout=60, message="the deleteWithStack PVC to go")

    # The same stack again picks its data back up.
    cluster.apply(keep, namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")
    assert (
        cluster.get_json("pvc", "quickstart-mlflow-data", "-n", namespace)["metadata"]["uid"]
        == kept_uid
    )


def test_a_model_server_failing_readiness_degrades_the_stack_until_it_recovers(
    cluster: Any, operator: OperatorProcess, namespace: str
) -> None:
    """A vLLM pod that started but fails its readiness probe (its pod status set the way
    the kubelet would on a real node): Degraded, with the model and the pod named."""
    cluster.apply(load("quickstart.yaml"), namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")
    (pod,) = pods(cluster, namespace, "aistack.dev/model=phi-3-5-mini")
    name = pod["metadata"]["name"]

    def set_ready(ready: bool) -> None:
        current = cluster.get_json("pod", name, "-n", namespace)["status"]
        # Started (its startup probe passed) and running, ready or not, as a kubelet says.
        ops = [op for i in range(len(current["containerStatuses"])) for op in (
            {"op": "add", "path": f"/status/containerStatuses/{i}/ready", "value": ready},
            {"op": "add", "path": f"/status/containerStatuses/{i}/started", "value": True},
        )]  # fmt: skip
        ops += [
            {"op": "replace", "path": f"/status/conditions/{i}/status",
             "value": "True" if ready else "False"}
            for i, c in enumerate(current["conditions"])
            if c["type"] in ("Ready", "ContainersReady")
        ]  # fmt: skip
        cluster.kubectl("patch", "pod", name, "-n", namespace, "--subresource=status",
                        "--type=json", "-p", json.dumps(ops))  # fmt: skip

    set_ready(False)
    stack = wait_phase(cluster, namespace, "quickstart", "Degraded")
    model = stack["status"]["models"][0]
    assert (model["name"], model["reason"]) == ("phi-3-5-mini", "NotReady")
    assert name in model["message"] and "readiness probe" in model["message"]
    cond = conditions(stack)["ModelsReady"]
    assert (cond["status"], cond["reason"]) == ("False", "NotReady")
    assert "phi-3-5-mini" in cond["message"]

    set_ready(True)
    wait_phase(cluster, namespace, "quickstart", "Ready")


def test_the_mlflow_claim_survives_operator_restarts_and_unrelated_edits(
    cluster: Any, operator: OperatorProcess, namespace: str
) -> None:
    doc = load("quickstart.yaml")
    cluster.apply(doc, namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")

    def claim() -> tuple[str, str, str]:
        pvc = cluster.get_json("pvc", "quickstart-mlflow-data", "-n", namespace)
        return (pvc["metadata"]["name"], pvc["metadata"]["uid"], pvc["spec"]["resources"]
                ["requests"]["storage"])  # fmt: skip

    before = claim()
    operator.stop(signal.SIGKILL)
    operator.start()
    doc["spec"]["gateway"] = {"replicas": 2}
    doc["spec"]["mlflow"] = {"resources": {"requests": {"cpu": "200m", "memory": "512Mi"}}}
    cluster.apply(doc, namespace=namespace)
    cluster.wait_until(
        lambda: deployments(cluster, namespace)["quickstart-gateway"]["spec"]["replicas"] == 2,
        timeout=60, message="the edit to be applied",
    )  # fmt: skip
    wait_phase(cluster, namespace, "quickstart", "Ready")
    assert claim() == before


def test_a_model_that_cannot_be_scheduled_is_reported(
    cluster: Any, operator: OperatorProcess, namespace: str
) -> None:
    doc = load("quickstart.yaml")
    doc["spec"]["models"][0].update(gpus=8, replicas=3)  # 24 GPUs; the cluster has 16
    cluster.apply(doc, namespace=namespace)
    stack = wait_phase(cluster, namespace, "quickstart", "Degraded")
    model = stack["status"]["models"][0]
    assert model["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in model["message"]
    # At most two of the three fit (fewer while other tests' GPU pods are still going away).
    assert model["readyReplicas"] <= 2 and model["replicas"] == 3
    assert conditions(stack)["ModelsReady"]["reason"] == "Unschedulable"
    assert ("Warning", "Degraded") in events(cluster, namespace, "quickstart")


def test_restarting_the_operator_on_a_converged_stack_writes_nothing(
    cluster: Any, operator: OperatorProcess, namespace: str
) -> None:
    cluster.apply(load("quickstart.yaml"), namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")
    time.sleep(3)  # let trailing watch events settle
    before = resource_versions(cluster, namespace)
    operator.restart()
    time.sleep(10)
    assert resource_versions(cluster, namespace) == before
    assert [w for w in operator.writes() if f"/namespaces/{namespace}/" in w] == []
    # ...and the restarted operator is alive: it still undoes drift.
    cluster.kubectl("delete", "service", "quickstart-mlflow", "-n", namespace)
    wait_exists(cluster, "service", "quickstart-mlflow", namespace)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"models": [{"name": "m", "source": "o/m", "gpus": 4, "tensorParallelSize": 3}]},
            "tensorParallelSize must divide gpus",
        ),
        (
            {"models": [{"name": "m", "source": "o/a"}, {"name": "m", "source": "o/b"}]},
            "Duplicate value",
        ),
        ({"models": [{"name": "m" * 40, "source": "o/m"}]}, "stay valid DNS labels"),
        (
            {"models": [{"name": "m", "source": "o/m", "gpus": 0}]},
            "should be greater than or equal to 1",
        ),
        ({"models": [{"name": "m", "source": "http://x"}]}, "spec.models[0].source"),
        (
            {"mlflow": {"replicas": 2}},
            "mlflow.replicas > 1 needs both backendStore and artifactStore",
        ),
        (
            {"models": [{"name": "m", "source": "o/m", "cache": {}}]},
            "cache needs exactly one of size",
        ),
        (
            {
                "models": [
                    {"name": "m", "source": "o/m", "nodes": 2, "image": "r/v:1"},
                    {"name": "m-g0-leader", "source": "o/m"},
                ]
            },
            "a model name must not be another model's name followed by -g<N>",
        ),
    ],
)
def test_the_api_server_refuses_bad_stacks_with_a_clear_message(
    cluster: Any, crds: None, namespace: str, change: dict[str, Any], message: str
) -> None:
    doc = {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": "bad-stack"},
        "spec": change,
    }
    result = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_a_stack_name_too_long_for_its_children_is_refused(
    cluster: Any, crds: None, namespace: str
) -> None:
    doc = load("quickstart.yaml")
    doc["metadata"]["name"] = "s" * 41
    result = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False
    )
    assert result.returncode != 0
    assert "the AIStack name must be a DNS-1035 label" in result.stderr


def test_examples_are_accepted_by_the_api_server(cluster: Any, crds: None, namespace: str) -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            doc["metadata"].pop("namespace", None)
            result = cluster.kubectl(
                "apply", "--dry-run=server", "-n", namespace, "-f", "-",
                input=json.dumps(doc), check=False,
            )  # fmt: skip
            assert result.returncode == 0, f"{Path(path).name}: {result.stderr}"
