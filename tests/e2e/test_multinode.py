"""Multi-node models on the real LeaderWorkerSet controller (sigs.k8s.io/lws, built from
its Go module and started beside the control plane by hack/local-cluster.sh): the operator
makes one LeaderWorkerSet per model, LWS makes the groups' pods on the simulated GPU nodes,
and the stack's status reads the groups. A group restarts as one, rolls as one, and a stack
made of the per-group Deployments of before moves onto LeaderWorkerSet without losing its
cache or its serving leaders."""

from __future__ import annotations

import time
from typing import Any

from operator_process import OperatorProcess
from stacks import conditions, deployments, pods, routes, wait_phase

LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
REVISION = "leaderworkerset.sigs.k8s.io/template-revision-hash"
TIMEOUT = 120


def stack(name: str, **model: Any) -> dict[str, Any]:
    """A stack of one model "big" (``model`` on top of a 2-node default), nothing else."""
    big = {"name": "big", "source": "Qwen/Qwen2.5-7B-Instruct", "nodes": 2, "gpus": 2, **model}
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": name},
        "spec": {
            "models": [big],
            "ray": {"enabled": False},
            "mlflow": {"enabled": False},
        },
    }


def group_pods(cluster: Any, ns: str, lws: str) -> list[dict[str, Any]]:
    return pods(cluster, ns, f"{LWS_NAME}={lws}")


def by_position(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Pods by (group index, index in the group)."""
    return {
        (p["metadata"]["labels"][GROUP_INDEX], p["metadata"]["labels"][WORKER_INDEX]): p
        for p in items
        if not p["metadata"].get("deletionTimestamp")
    }


def ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def test_a_two_node_model_with_two_groups_is_a_leaderworkerset_on_gpu_nodes(
    cluster: Any, operator: OperatorProcess, namespace: str, gpu_nodes: list[str]
) -> None:
    cluster.apply(stack("mn", replicas=2), namespace=namespace)
    stack_obj = wait_phase(cluster, namespace, "mn", "Ready", timeout=TIMEOUT)
    (model,) = stack_obj["status"]["models"]
    assert (model["readyReplicas"], model["message"]) == (2, "2/2 groups ready")
    lws = cluster.get_json("leaderworkerset", "mn-vllm-big-lws", "-n", namespace)
    assert lws["spec"]["replicas"] == 2 and lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert lws["status"]["readyReplicas"] == 2
    assert not [d for d in deployments(cluster, namespace) if "big" in d], "no Deployments"

    found = by_position(group_pods(cluster, namespace, "mn-vllm-big-lws"))
    assert sorted(found) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    for (group, index), pod in found.items():
        labels = pod["metadata"]["labels"]
        assert labels["aistack.dev/role"] == ("leader" if index == "0" else "worker")
        assert pod["spec"]["nodeName"] in gpu_nodes, "GPU pods land on GPU nodes"
        (c,) = pod["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
        env = {e["name"]: e.get("value") for e in c["env"]}
        # What LWS gives each pod, which the rendered argv expands.
        assert env["LWS_LEADER_ADDRESS"].startswith(f"mn-vllm-big-lws-{group}.mn-vllm-big-lws.")
        assert env["LWS_WORKER_INDEX"] == index
        assert "$(LWS_WORKER_INDEX)" in c["args"]
    for group in ("0", "1"):
        nodes = {found[(group, i)]["spec"]["nodeName"] for i in ("0", "1")}
        assert len(nodes) == 2, "a group's pods on distinct nodes"
    # Only the leaders are behind the model's Service, which the gateway routes to.
    service = cluster.get_json("service", "mn-vllm-big", "-n", namespace)
    assert service["spec"]["selector"]["aistack.dev/role"] == "leader"
    assert routes(cluster, namespace, "mn") == ["big"]
    # Each group's own NetworkPolicy, and one disruption budget over the groups.
    for group in ("0", "1"):
        policy = cluster.get_json("networkpolicy", f"mn-vllm-big-lws-{group}", "-n", namespace)
        assert policy["spec"]["podSelector"]["matchLabels"][GROUP_INDEX] == group
    pdb = cluster.get_json("poddisruptionbudget", "mn-vllm-big-lws", "-n", namespace)
    assert pdb["spec"]["selector"]["matchLabels"] == {LWS_NAME: "mn-vllm-big-lws"}


def test_gpu_capacity_and_taints_still_decide_where_groups_go(
    cluster: Any, operator: OperatorProcess, namespace: str, gpu_nodes: list[str]
) -> None:
    # No node has 9 GPUs: the group cannot be placed, and the status says why.
    cluster.apply(stack("toobig", gpus=9), namespace=namespace)

    def unschedulable() -> dict[str, Any] | None:
        s = cluster.get_json("aistack", "toobig", "-n", namespace)
        model = ((s.get("status") or {}).get("models") or [{}])[0]
        return s if model.get("reason") == "Unschedulable" else None

    s = cluster.wait_until(unschedulable, timeout=TIMEOUT, message="toobig Unschedulable")
    assert "nvidia.com/gpu" in s["status"]["models"][0]["message"]
    assert conditions(s)["ModelsReady"]["status"] == "False"
    assert not [p for p in group_pods(cluster, namespace, "toobig-vllm-big-lws")
                if p["spec"].get("nodeName")]  # fmt: skip


def test_a_failed_worker_restarts_its_whole_group_and_only_it(
    cluster: Any, operator: OperatorProcess, namespace: str
) -> None:
    cluster.apply(stack("restart", replicas=2), namespace=namespace)
    wait_phase(cluster, namespace, "restart", "Ready", timeout=TIMEOUT)
    lws = "restart-vllm-big-lws"
    before = {
        k: p["metadata"]["uid"] for k, p in by_position(group_pods(cluster, namespace, lws)).items()
    }
    cluster.kubectl("delete", "pod", f"{lws}-1-1", "-n", namespace, "--wait=false")

    def recreated() -> dict[tuple[str, str], dict[str, Any]] | None:
        now = by_position(group_pods(cluster, namespace, lws))
        if len(now) == 4 and now[("1", "0")]["metadata"]["uid"] != before[("1", "0")]:
            return now if all(ready(p) for p in now.values()) else None
        return None

    after = cluster.wait_until(recreated, timeout=TIMEOUT, message="group 1 recreated")
    assert after[("1", "1")]["metadata"]["uid"] != before[("1", "1")]
    assert after[("0", "0")]["metadata"]["uid"] == before[("0", "0")], "group 0 untouched"
    assert after[("0", "1")]["metadata"]["uid"] == before[("0", "1")]
    wait_phase(cluster, namespace, "restart", "Ready", timeout=TIMEOUT)


def test_a_spec_change_rolls_the_groups_one_at_a_time(
    cluster: Any, operator: OperatorProcess, namespace: str
) -> None:
    doc = stack("roll", replicas=2)
    cluster.apply(doc, namespace=namespace)
    wait_phase(cluster, namespace, "roll", "Ready", timeout=TIMEOUT)
    lws = "roll-vllm-big-lws"
    old = {p["metadata"]["labels"][REVISION] for p in group_pods(cluster, namespace, lws)}
    assert len(old) == 1
    doc["spec"]["models"][0]["maxModelLen"] = 4096  # a new pod template
    cluster.apply(doc, namespace=namespace)
    # Watch the groups while they roll: which revision each runs, and whether it is whole.
    snapshots: list[dict[str, tuple[set[str], bool]]] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        members: dict[str, list[dict[str, Any]]] = {}
        for (group, _), pod in by_position(group_pods(cluster, namespace, lws)).items():
            members.setdefault(group, []).append(pod)
        # Per group: the revisions its pods run, and whether it is whole (2 pods, ready).
        groups = {
            g: (
                {p["metadata"]["labels"][REVISION] for p in ps},
                len(ps) == 2 and all(ready(p) for p in ps),
            )
            for g, ps in members.items()
        }
        snapshots.append(groups)
        if len(groups) == 2 and all(not (r & old) and whole for r, whole in groups.values()):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the groups did not roll within {TIMEOUT} s: {snapshots[-1]}")
    for snap in snapshots:
        # Never both groups down (or missing) at once: maxUnavailable 1, no surge.
        down = [g for g in ("0", "1") if g not in snap or not snap[g][1]]
        assert len(down) <= 1, snapshots
    # A moment with one group on the new template while the other still ran the old one.
    mixed = [
        snap
        for snap in snapshots
        if len(snap) == 2
        and sorted(bool(revisions & old) for revisions, _ in snap.values()) == [False, True]
    ]
    assert mixed, f"no moment with one group rolled and the other not: {snapshots}"
    wait_phase(cluster, namespace, "roll", "Ready", timeout=TIMEOUT)
