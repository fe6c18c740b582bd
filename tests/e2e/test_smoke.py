"""Smoke tests: the e2e cluster is a real Kubernetes control plane.

They check what the operator relies on: CRDs with schema validation, the
scheduler honouring extended resources (nvidia.com/gpu), taints and node
selectors, controllers turning Deployments into running pods, and RBAC.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

DEADLINE = 90  # seconds for anything to happen
PENDING_DEADLINE = 60  # seconds to see a pod reported unschedulable
GPU_TOLERATION = {
    "key": "nvidia.com/gpu",
    "operator": "Equal",
    "value": "present",
    "effect": "NoSchedule",
}
IMAGE = "registry.k8s.io/pause:3.10"  # never pulled on the local (simulated) nodes


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def pod_spec(
    gpus: int | None = None, tolerate: bool = False, node_selector: dict | None = None
) -> dict:
    container: dict[str, Any] = {"name": "main", "image": IMAGE}
    if gpus is not None:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 0}
    if tolerate:
        spec["tolerations"] = [GPU_TOLERATION]
    if node_selector:
        spec["nodeSelector"] = node_selector
    return spec


def deployment(name: str, **kwargs: Any) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec(**kwargs)},
        },
    }


def pod(name: str, **kwargs: Any) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": pod_spec(**kwargs),
    }


def condition(obj: dict, ctype: str) -> dict | None:
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == ctype:
            return cond
    return None


def pods_with_label(cluster, namespace: str, app: str) -> list[dict]:
    return cluster.get_json("pods", "-n", namespace, "-l", f"app={app}")["items"]


def wait_running_ready(cluster, namespace: str, app: str) -> dict:
    def ready_pod():
        for p in pods_with_label(cluster, namespace, app):
            ready = condition(p, "Ready")
            if p["status"].get("phase") == "Running" and ready and ready["status"] == "True":
                return p
        return None

    return cluster.wait_until(ready_pod, timeout=DEADLINE, message=f"a Running+Ready pod app={app}")


def wait_unschedulable(cluster, namespace: str, app: str) -> dict:
    """Wait until the scheduler reported the pod unschedulable; return the condition."""

    def unschedulable():
        for p in pods_with_label(cluster, namespace, app):
            cond = condition(p, "PodScheduled")
            if cond and cond["status"] == "False" and cond.get("reason") == "Unschedulable":
                return p, cond
        return None

    p, cond = cluster.wait_until(
        unschedulable,
        timeout=PENDING_DEADLINE,
        message=f"pod app={app} to be reported Unschedulable",
    )
    assert p["status"]["phase"] == "Pending"
    assert not p["spec"].get("nodeName"), p["spec"].get("nodeName")
    return cond


def failed_scheduling_messages(cluster, namespace: str, pod_name: str) -> list[str]:
    events = cluster.get_json(
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=Pod,involvedObject.name={pod_name},reason=FailedScheduling",
    )["items"]
    return [e.get("message") or e.get("note") or "" for e in events]


# --------------------------------------------------------------------------- #
# (a) CRDs with a structural schema
# --------------------------------------------------------------------------- #
@pytest.fixture
def widget_crd(cluster):
    # Unique group: CRDs are cluster-wide and runs may share a cluster.
    group = f"s{uuid.uuid4().hex[:8]}.smoke.aistack.dev"
    name = f"widgets.{group}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "plural": "widgets",
                "singular": "widget",
                "kind": "Widget",
                "listKind": "WidgetList",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                        "color": {"type": "string", "enum": ["red", "blue"]},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }
    cluster.apply(crd)
    try:
        cluster.wait_established(name, timeout=DEADLINE)
        yield group
    finally:
        cluster.kubectl("delete", "crd", name, "--wait=false", "--ignore-not-found", check=False)


def test_crd_accepts_valid_and_rejects_invalid_objects(cluster, namespace, widget_crd):
    group = widget_crd
    valid = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "good"},
        "spec": {"size": 3, "color": "blue"},
    }
    # Discovery of a new group can lag a moment behind Established.
    cluster.wait_until(
        lambda: (
            cluster.kubectl(
                "apply", "-n", namespace, "-f", "-", input=json.dumps(valid), check=False
            ).returncode
            == 0
        ),
        timeout=DEADLINE,
        message="the Widget to be created",
    )
    got = cluster.get_json(f"widgets.{group}", "good", "-n", namespace)
    assert got["spec"] == {"size": 3, "color": "blue"}
    assert got["metadata"]["uid"]

    invalid = {**valid, "metadata": {"name": "bad"}, "spec": {"size": 100, "color": "green"}}
    proc = cluster.kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(invalid), check=False
    )
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr
    assert "is invalid" in err, err
    assert "spec.size" in err and "less than or equal to 10" in err, err
    assert 'Unsupported value: "green"' in err, err

    missing = {**valid, "metadata": {"name": "empty"}, "spec": {"color": "red"}}
    proc = cluster.kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(missing), check=False
    )
    assert proc.returncode != 0
    assert "spec.size: Required value" in proc.stderr, proc.stderr

    names = [
        w["metadata"]["name"]
        for w in cluster.get_json(f"widgets.{group}", "-n", namespace)["items"]
    ]
    assert names == ["good"]


# --------------------------------------------------------------------------- #
# (b)-(d) GPU scheduling
# --------------------------------------------------------------------------- #
def test_gpu_deployment_runs_on_gpu_node(cluster, namespace, gpu_nodes):
    cluster.apply(deployment("gpu-ok", gpus=1, tolerate=True), namespace=namespace)
    p = wait_running_ready(cluster, namespace, "gpu-ok")
    node = p["spec"]["nodeName"]
    assert node in gpu_nodes
    if cluster.simulated_nodes:
        assert node.startswith("gpu-node-"), node
    assert p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The Deployment controller sees the pod as available.
    cluster.kubectl(
        "rollout", "status", "deployment/gpu-ok", "-n", namespace, f"--timeout={DEADLINE}s"
    )
    dep = cluster.get_json("deployment", "gpu-ok", "-n", namespace)
    assert dep["status"].get("availableReplicas") == 1


def test_gpu_deployment_without_toleration_stays_pending(cluster, namespace, gpu_nodes):
    cluster.apply(deployment("gpu-untolerated", gpus=1), namespace=namespace)
    cond = wait_unschedulable(cluster, namespace, "gpu-untolerated")
    msg = cond.get("message", "")
    assert "untolerated taint" in msg or "Insufficient nvidia.com/gpu" in msg, msg
    if cluster.simulated_nodes:
        # 2 GPU nodes are tainted, the CPU node has no GPUs.
        assert "2 node(s) had untolerated taint" in msg, msg
        assert "1 Insufficient nvidia.com/gpu" in msg, msg
    pod_name = pods_with_label(cluster, namespace, "gpu-untolerated")[0]["metadata"]["name"]
    events = cluster.wait_until(
        lambda: failed_scheduling_messages(cluster, namespace, pod_name),
        timeout=PENDING_DEADLINE,
        message="a FailedScheduling event",
    )
    assert any("nodes are available" in e for e in events), events


def test_pod_asking_too_many_gpus_stays_pending(cluster, namespace, gpu_nodes):
    cluster.apply(pod("gpu-greedy", gpus=9, tolerate=True), namespace=namespace)
    cond = wait_unschedulable(cluster, namespace, "gpu-greedy")
    assert "Insufficient nvidia.com/gpu" in cond.get("message", ""), cond


def test_node_selector_is_honoured(cluster, namespace, gpu_nodes):
    target = "gpu-node-1" if cluster.simulated_nodes else gpu_nodes[-1]
    hostname = cluster.get_json("node", target)["metadata"]["labels"]["kubernetes.io/hostname"]
    cluster.apply(
        pod("pinned", gpus=1, tolerate=True, node_selector={"kubernetes.io/hostname": hostname}),
        namespace=namespace,
    )
    p = wait_running_ready(cluster, namespace, "pinned")
    assert p["spec"]["nodeName"] == target


# --------------------------------------------------------------------------- #
# (e) RBAC is enforced
# --------------------------------------------------------------------------- #
def test_serviceaccount_without_rbac_is_forbidden(cluster, namespace, tmp_path: Path):
    sa = "nobody"
    cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=10m").stdout.strip()
    assert token.count(".") == 2, "expected a JWT"

    admin = json.loads(
        cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    )
    server = admin["clusters"][0]["cluster"]
    kubeconfig = tmp_path / "sa-kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": server}],
                "users": [{"name": sa, "user": {"token": token}}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "c", "user": sa, "namespace": namespace}}
                ],
                "current-context": "c",
            }
        )
    )
    kubeconfig.chmod(0o600)
    as_sa = {"kubeconfig": str(kubeconfig)}

    who = cluster.kubectl("auth", "whoami", "-o", "json", **as_sa)
    assert (
        json.loads(who.stdout)["status"]["userInfo"]["username"]
        == f"system:serviceaccount:{namespace}:{sa}"
    )

    proc = cluster.kubectl("get", "pods", "-n", namespace, check=False, **as_sa)
    assert proc.returncode != 0
    assert "Forbidden" in proc.stderr and 'cannot list resource "pods"' in proc.stderr, proc.stderr
    can = cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, check=False, **as_sa)
    assert can.returncode != 0 and can.stdout.strip() == "no", (can.stdout, can.stderr)

    # Granting a Role makes exactly that allowed: RBAC is evaluated, not just "deny all".
    cluster.kubectl(
        "create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:{sa}",
        "-n",
        namespace,
    )
    cluster.wait_until(
        lambda: (
            cluster.kubectl("get", "pods", "-n", namespace, check=False, **as_sa).returncode == 0
        ),
        timeout=DEADLINE,
        message="the RoleBinding to take effect",
    )
    can = cluster.kubectl("auth", "can-i", "delete", "pods", "-n", namespace, check=False, **as_sa)
    assert can.stdout.strip() == "no"
    other = cluster.kubectl("get", "pods", "-n", "kube-system", check=False, **as_sa)
    assert other.returncode != 0 and "Forbidden" in other.stderr, other.stderr


# --------------------------------------------------------------------------- #
# (g) PersistentVolumeClaims get storage
# --------------------------------------------------------------------------- #
def test_pvc_of_default_storage_class_is_bound(cluster, namespace):
    classes = cluster.get_json("storageclass")["items"]
    default = [
        sc["metadata"]["name"]
        for sc in classes
        if sc["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
    ]
    if not default and not cluster.simulated_nodes:
        pytest.skip(f"the {cluster.kind} cluster has no default StorageClass")
    assert default, "the local cluster should have a default StorageClass (hack/storage.yaml)"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "20Gi"}},
            },
        },
        namespace=namespace,
    )
    consumer = pod("uses-data")
    consumer["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    consumer["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    cluster.apply(consumer, namespace=namespace)
    wait_running_ready(cluster, namespace, "uses-data")

    def bound_pvc():
        pvc = cluster.get_json("pvc", "data", "-n", namespace)
        return pvc if pvc["status"].get("phase") == "Bound" else None

    pvc = cluster.wait_until(bound_pvc, timeout=DEADLINE, message="PVC data to be Bound")
    assert pvc["spec"]["storageClassName"] in default
    assert pvc["status"]["capacity"]["storage"] == "20Gi"
