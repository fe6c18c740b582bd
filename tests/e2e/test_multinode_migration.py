"""A stack the operator made before LeaderWorkerSet (a leader and a worker Deployment per
group, tests/e2e/fixtures/pre-lws-stack.yaml) moves onto LeaderWorkerSet when the new
operator starts, without a manual step: the old groups keep serving until the
LeaderWorkerSet's groups are all ready, then they are pruned; the weight cache PVC stays.

To see the old groups serve while the new ones cannot start (and not only for the moment
the simulated nodes take to run a pod), the GPU nodes are first filled up to the old
groups' GPUs by placeholder pods: the new group waits, Unschedulable, as it would on a busy
cluster, until the placeholders go."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml
from operator_process import OperatorProcess
from stacks import default_policy, deployments, wait_phase

FIXTURE = Path(__file__).parent / "fixtures" / "pre-lws-stack.yaml"
IMAGE = "registry.example.com/vllm-openai-ray"
OLD = ("moved-vllm-big-g0-leader", "moved-vllm-big-g0-worker")
LWS = "moved-vllm-big-lws"
TIMEOUT = 120


def the_stack() -> dict[str, Any]:
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": "moved"},
        "spec": {
            "models": [{
                "name": "big", "source": "Qwen/Qwen2.5-7B-Instruct", "nodes": 2, "gpus": 2,
                "image": f"{IMAGE}:v0.34.0-ray2.60.0", "cache": {"size": "1Gi"},
            }],
            "ray": {"enabled": False},
            "mlflow": {"enabled": False},
        },
    }  # fmt: skip


def old_objects(namespace: str, owner: dict[str, Any]) -> list[dict[str, Any]]:
    text = FIXTURE.read_text().replace("NAMESPACE", namespace)
    docs = [d for d in yaml.safe_load_all(text) if d]
    ref = {
        "apiVersion": owner["apiVersion"], "kind": owner["kind"],
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": True, "blockOwnerDeletion": True,
    }  # fmt: skip
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        if doc["metadata"].get("annotations", {}).get("aistack.dev/retain") != "true":
            doc["metadata"]["ownerReferences"] = [ref]
        out.append(doc)
    return out


def fill_gpus(cluster: Any, namespace: str) -> list[str]:
    """A placeholder pod bound to each GPU node that requests all of its GPUs: the
    scheduler then places nothing new there, whatever else runs or is still going away
    (the simulated nodes run a pod bound by name without checking what it requests)."""
    made = []
    for node in cluster.get_json("nodes", "-l", "nvidia.com/gpu.present=true")["items"]:
        name = node["metadata"]["name"]
        pod = f"gpu-placeholder-{name}"
        gpus = node["status"]["allocatable"]["nvidia.com/gpu"]
        cluster.apply({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "labels": {"app": "gpu-placeholder"}},
            "spec": {
                "nodeName": name,
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "containers": [{"name": "hold", "image": "registry.k8s.io/pause:3.10",
                                "resources": {"limits": {"nvidia.com/gpu": gpus}}}],
            },
        }, namespace=namespace)  # fmt: skip
        made.append(pod)
    return made


def serving_leaders(cluster: Any, namespace: str) -> int:
    """Ready endpoints behind the model's Service (what the gateway routes to)."""
    slices = cluster.get_json(
        "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=moved-vllm-big"
    )["items"]
    return sum(
        1
        for s in slices
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
    )


def test_a_stack_of_per_group_deployments_moves_onto_leaderworkerset(
    cluster: Any, crds: None, namespace: str, policy: Any, tmp_path: Path
) -> None:
    policy(**default_policy(images={"allow": [IMAGE]}))
    cluster.apply(the_stack(), namespace=namespace)
    owner = cluster.get_json("aistack", "moved", "-n", namespace)
    # What the operator of before had made, by its field manager.
    text = "\n---\n".join(yaml.safe_dump(d) for d in old_objects(namespace, owner))
    cluster.kubectl("apply", "--server-side", "--field-manager=aistack-operator", "-f", "-",
                    input=text)  # fmt: skip
    cluster.wait_until(
        lambda: serving_leaders(cluster, namespace) == 1,
        timeout=TIMEOUT, message="the old group's leader behind the model's Service",
    )  # fmt: skip
    pvc = cluster.get_json("pvc", "moved-vllm-big-cache", "-n", namespace)["metadata"]["uid"]
    placeholders = fill_gpus(cluster, namespace)

    op = OperatorProcess(cluster.env, tmp_path)
    op.start()
    try:
        # The new group cannot be placed: the old groups keep serving, and the status says
        # both what holds the new one back and that the old ones serve meanwhile.
        def waiting() -> dict[str, Any] | None:
            s = cluster.get_json("aistack", "moved", "-n", namespace)
            model = ((s.get("status") or {}).get("models") or [{}])[0]
            return model if model.get("reason") == "Unschedulable" else None

        model = cluster.wait_until(waiting, timeout=TIMEOUT, message="the new group waiting")
        assert "Deployments from before LeaderWorkerSet serve" in model["message"]
        assert model["readyReplicas"] == 1
        time.sleep(3)  # a few reconciles later: nothing of the old groups has gone
        assert all(d in deployments(cluster, namespace) for d in OLD)
        assert serving_leaders(cluster, namespace) == 1

        for pod in placeholders:
            cluster.kubectl("delete", "pod", pod, "-n", namespace, "--wait=false")
        snapshots: list[tuple[int, bool, int]] = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            # The old groups first, then the new group's readiness: old groups seen gone
            # were pruned before this read of readiness, so a group ready only after the
            # prune shows as not ready here (read the other way round, a group that became
            # ready, and then let the prune happen, between the two reads would look like
            # a prune before readiness).
            present = deployments(cluster, namespace)
            old = all(d in present for d in OLD)
            lws = cluster.kubectl("get", "leaderworkerset", LWS, "-n", namespace, "-o",
                                  "jsonpath={.status.readyReplicas}", check=False)  # fmt: skip
            ready_groups = int(lws.stdout or 0) if lws.returncode == 0 else 0
            snapshots.append((ready_groups, old, serving_leaders(cluster, namespace)))
            if not old and ready_groups == 1:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(
                f"no move within {TIMEOUT} s: {snapshots[-5:]}\n{op.log()[-3000:]}"
            )
        for ready_groups, old, serving in snapshots:
            assert old or ready_groups == 1, "old groups pruned before the new ones were ready"
            assert serving >= 1, f"the model stopped serving during the move: {snapshots}"
        stack = wait_phase(cluster, namespace, "moved", "Ready", timeout=TIMEOUT)
        assert stack["status"]["models"][0]["message"] == "1/1 groups ready"
        for gone in ("service/moved-vllm-big-g0", "networkpolicy/moved-vllm-big-g0"):
            assert cluster.kubectl("get", gone, "-n", namespace, check=False).returncode != 0
        # The weight cache is the same claim: nothing lost.
        assert (
            cluster.get_json("pvc", "moved-vllm-big-cache", "-n", namespace)["metadata"]["uid"]
            == pvc
        )
        lws = cluster.get_json("leaderworkerset", LWS, "-n", namespace)
        volumes = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["volumes"]
        assert {
            "name": "cache",
            "persistentVolumeClaim": {"claimName": "moved-vllm-big-cache"},
        } in volumes
    finally:
        op.stop()
