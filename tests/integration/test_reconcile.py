"""The reconcile against a real API server, without kopf: apply, drift, prune, status,
Events and policy changes, each checked in what the API server holds afterwards."""

from __future__ import annotations

import time
from typing import Any

from aistack.components import DEFAULT_IMAGES
from aistack.controller import Reconciler, write_policy_status
from aistack.names import LICENSE_BLOCKED_ANNOTATION, RETAIN_ANNOTATION
from conftest import Api

PHI = {"name": "phi", "source": "microsoft/Phi-3.5-mini-instruct", "gpus": 1}  # MIT
MISTRAL = {"name": "mistral", "source": "mistralai/Mistral-7B-Instruct-v0.3", "gpus": 1}


def stack(namespace: str, *models: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": "s", "namespace": namespace},
        "spec": {"models": list(models), "ray": {"enabled": False}, **spec},
    }


def reconcile(api: Api, rec: Reconciler, namespace: str) -> Any:
    result = rec.reconcile_once((namespace, "s"), api.view(namespace, "s"))
    assert result is not None and result.error is None, result
    return result


def deployments(api: Api, namespace: str) -> dict[str, dict[str, Any]]:
    items = api.kube.list("Deployment", namespace)
    return {d["metadata"]["name"]: d for d in items}


def conditions(api: Api, namespace: str) -> dict[str, dict[str, Any]]:
    got = api.get("aistack", "s", namespace) or {}
    return {c["type"]: c for c in (got.get("status") or {}).get("conditions") or []}


def events(api: Api, namespace: str) -> list[str]:
    return [e["reason"] for e in api.kube.list("Event", namespace)]


def test_a_new_stack_gets_its_children_its_status_and_an_event(
    api: Api, namespace: str, reconciler: Reconciler
) -> None:
    api.apply(stack(namespace, PHI, MISTRAL))
    result = reconcile(api, reconciler, namespace)
    made = set(deployments(api, namespace))
    assert {"s-vllm-phi", "s-vllm-mistral", "s-mlflow", "s-gateway"} <= made
    # What was applied is exactly what now carries the stack's label, each owned by it.
    labelled = {
        (o["kind"], namespace, o["metadata"]["name"]): o for o in api.view(namespace, "s").children
    }
    assert set(result.applied) == set(labelled)
    for key, obj in labelled.items():
        if (obj["metadata"].get("annotations") or {}).get(RETAIN_ANNOTATION) == "true":
            assert "ownerReferences" not in obj["metadata"], key  # MLflow's data is kept
        else:
            assert obj["metadata"]["ownerReferences"][0]["name"] == "s", key
    status = (api.get("aistack", "s", namespace) or {})["status"]
    assert status["observedGeneration"] == 1
    assert conditions(api, namespace)["LicenseCompliant"]["status"] == "True"
    assert "Applied" in events(api, namespace)


def test_a_second_reconcile_of_an_unchanged_stack_writes_nothing(
    api: Api, namespace: str, reconciler: Reconciler
) -> None:
    api.apply(stack(namespace, PHI))
    reconcile(api, reconciler, namespace)
    generations = {n: d["metadata"]["generation"] for n, d in deployments(api, namespace).items()}
    again = reconcile(api, reconciler, namespace)
    # Nothing is applied or deleted again: no child's spec moves (its generation), whatever
    # the simulated nodes do to the Deployments' status meanwhile.
    assert again.applied == [] and again.deleted == []
    after = {n: d["metadata"]["generation"] for n, d in deployments(api, namespace).items()}
    assert after == generations


def test_drift_is_repaired_and_a_removed_model_is_pruned(
    api: Api, namespace: str, reconciler: Reconciler
) -> None:
    api.apply(stack(namespace, PHI, MISTRAL))
    reconcile(api, reconciler, namespace)
    # Someone edits a child by hand: the next reconcile puts it back.
    api.run("set", "image", "deployment/s-vllm-phi", "vllm=example.com/other:1", "-n", namespace)
    reconcile(api, reconciler, namespace)
    phi = deployments(api, namespace)["s-vllm-phi"]
    image = phi["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == DEFAULT_IMAGES["vllm"]
    # A model leaves the spec: its Deployment and Service go.
    api.apply(stack(namespace, PHI))
    result = reconcile(api, reconciler, namespace)
    assert "s-vllm-mistral" not in deployments(api, namespace)
    assert api.get("service", "s-vllm-mistral", namespace) is None
    assert {k[2] for k in result.deleted} >= {"s-vllm-mistral"}


def test_a_tightened_policy_stops_a_model_and_says_why(
    api: Api, namespace: str, reconciler: Reconciler
) -> None:
    api.apply(stack(namespace, PHI, MISTRAL))
    reconcile(api, reconciler, namespace)
    name = f"{namespace}-no-mit"
    policy = {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "LicensePolicy",
        "metadata": {"name": name},
        "spec": {"allow": ["Apache-2.0"], "deny": ["MIT"], "enforcement": "Deny"},
    }
    api.apply(policy)
    try:
        reconcile(api, reconciler, namespace)
        phi = deployments(api, namespace)["s-vllm-phi"]
        assert phi["spec"]["replicas"] == 0
        assert LICENSE_BLOCKED_ANNOTATION in phi["metadata"]["annotations"]
        assert deployments(api, namespace)["s-vllm-mistral"]["spec"]["replicas"] == 1
        license = conditions(api, namespace)["LicenseCompliant"]
        assert license["status"] == "False" and f"policy {name} denies" in license["message"]
        assert "ModelBlocked" in events(api, namespace)
        # The policy's own status: the reconcile of a LicensePolicy, without kopf.
        write_policy_status(api.kube, name, api.get("licensepolicy", name) or {})
        valid = (api.get("licensepolicy", name) or {})["status"]["conditions"][0]
        assert (valid["type"], valid["status"]) == ("Valid", "True")
    finally:
        api.run("delete", "licensepolicy", name)
    reconcile(api, reconciler, namespace)
    phi = deployments(api, namespace)["s-vllm-phi"]
    assert phi["spec"]["replicas"] == 1
    assert LICENSE_BLOCKED_ANNOTATION not in (phi["metadata"].get("annotations") or {})


def test_the_stack_becomes_ready_when_its_pods_do(
    api: Api, namespace: str, reconciler: Reconciler
) -> None:
    """The simulated nodes run the pods (kwok): the status follows the real Deployments'."""
    api.apply(stack(namespace, PHI))
    reconcile(api, reconciler, namespace)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        reconcile(api, reconciler, namespace)
        if conditions(api, namespace).get("Ready", {}).get("status") == "True":
            break
        time.sleep(1)
    assert conditions(api, namespace)["Ready"]["status"] == "True"
    assert (api.get("aistack", "s", namespace) or {})["status"]["phase"] == "Ready"
    assert "StackReady" in events(api, namespace)


def test_a_multi_node_model_is_a_leaderworkerset_judged_like_a_deployment(
    api: Api, namespace: str, reconciler: Reconciler
) -> None:
    """The real LeaderWorkerSet API takes what the render makes; the groups' pods run; and a
    LeaderWorkerSet is stopped like a Deployment when the policies stop permitting what it
    runs, even while its stack's spec cannot be read (judged from its record)."""
    assert reconciler.config.leaderworkersets, "the local control plane runs LeaderWorkerSet"
    big = {**MISTRAL, "name": "big", "nodes": 2, "replicas": 2}
    api.apply(stack(namespace, big))
    reconcile(api, reconciler, namespace)
    lws = api.get("leaderworkerset", "s-vllm-big-lws", namespace)
    assert lws is not None and lws["spec"]["replicas"] == 2
    assert not [d for d in deployments(api, namespace) if "big" in d]

    def groups_ready() -> bool:
        got = api.get("leaderworkerset", "s-vllm-big-lws", namespace) or {}
        return int((got.get("status") or {}).get("readyReplicas") or 0) == 2

    deadline = time.monotonic() + 90
    while not groups_ready():
        assert time.monotonic() < deadline, "the LeaderWorkerSet's groups never became ready"
        time.sleep(1)
    reconcile(api, reconciler, namespace)
    model = (api.get("aistack", "s", namespace) or {})["status"]["models"][0]
    assert (model["readyReplicas"], model["message"]) == (2, "2/2 groups ready")

    # A spec the operator cannot read (as from a newer CRD): nothing is rendered, and the
    # LeaderWorkerSet is judged from its record against a policy that denies Apache-2.0.
    name = f"{namespace}-no-apache"
    spec = {"allow": ["MIT"], "deny": ["Apache-2.0"], "enforcement": "Deny"}
    api.apply({"apiVersion": "aistack.dev/v1alpha1", "kind": "LicensePolicy",
               "metadata": {"name": name}, "spec": spec})  # fmt: skip
    try:
        view = api.view(namespace, "s")
        assert view.stack is not None
        view.stack["spec"]["models"][0]["gpus"] = "many"
        result = reconciler.reconcile_once((namespace, "s"), view)
        assert result is not None and result.invalid
        lws = api.get("leaderworkerset", "s-vllm-big-lws", namespace) or {}
        assert lws["spec"]["replicas"] == 0
        assert LICENSE_BLOCKED_ANNOTATION in lws["metadata"]["annotations"]
    finally:
        api.run("delete", "licensepolicy", name)
    reconcile(api, reconciler, namespace)
    lws = api.get("leaderworkerset", "s-vllm-big-lws", namespace) or {}
    assert lws["spec"]["replicas"] == 2
    assert LICENSE_BLOCKED_ANNOTATION not in (lws["metadata"].get("annotations") or {})


def _install_crd(api: Api, text: str, name: str) -> None:
    api.run("apply", "--server-side", "-f", "-", input=text)
    api.wait_established(name)


def _replica_managers(deployment: dict[str, Any]) -> set[tuple[str, str]]:
    """The (manager, operation) entries of managedFields that own spec.replicas."""
    return {
        (m["manager"], m["operation"])
        for m in deployment["metadata"].get("managedFields") or []
        if "f:replicas" in ((m.get("fieldsV1") or {}).get("f:spec") or {})
    }


def test_an_autoscaled_models_replicas_are_the_scalers_and_no_apply_resets_them(
    api: Api, namespace: str, reconciler: Reconciler
) -> None:
    """Server-side apply as the real API server does it: once autoscaling is on, the
    operator's apply never owns spec.replicas, so neither a reconcile nor a change of the
    model's pod template resets what the scaler (here `kubectl scale`, through the scale
    subresource as the HPA does) chose; and the starting size is written once."""
    import gzip
    import subprocess
    from pathlib import Path

    from aistack.components import RenderConfig
    from aistack.kube import FIELD_MANAGER, STARTING_SIZE_FIELD_MANAGER

    root = Path(__file__).resolve().parents[2]
    keda = gzip.decompress((root / "tests/schemas/keda.sh_scaledobjects.yaml.gz").read_bytes())
    _install_crd(api, keda.decode(), "scaledobjects.keda.sh")
    crds = subprocess.run(
        [str(root / "hack/prometheus-crds.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    podmonitor = Path(crds) / "monitoring.coreos.com_podmonitors.yaml"
    _install_crd(api, podmonitor.read_text(), "podmonitors.monitoring.coreos.com")
    try:
        config = reconciler.config.model_copy(
            update={"keda": True, "monitoring_crds": True,
                    "prometheus_address": "http://prometheus.monitoring.svc:9090"}
        )  # fmt: skip
        rec = Reconciler(api.kube, reconciler.licensing, config=config,
                         judge_record=reconciler.judge_record)  # fmt: skip
        assert isinstance(config, RenderConfig)
        fixed = dict(PHI, replicas=3)
        api.apply(stack(namespace, fixed))
        reconcile(api, rec, namespace)
        assert deployments(api, namespace)["s-vllm-phi"]["spec"]["replicas"] == 3

        # Autoscaling on: the current size is kept, and the operator's apply lets go of it.
        scaled = dict(fixed, autoscaling={"minReplicas": 1, "maxReplicas": 4})
        api.apply(stack(namespace, scaled))
        reconcile(api, rec, namespace)
        phi = deployments(api, namespace)["s-vllm-phi"]
        assert phi["spec"]["replicas"] == 3
        assert (FIELD_MANAGER, "Apply") not in _replica_managers(phi)
        assert (STARTING_SIZE_FIELD_MANAGER, "Apply") in _replica_managers(phi)
        so = api.get("scaledobject", "s-vllm-phi", namespace)
        assert so is not None and so["spec"]["scaleTargetRef"]["name"] == "s-vllm-phi"

        # The scaler chooses 4: a reconcile writes nothing to it, and a new pod template
        # (another maxModelLen) rolls the pods without touching the count.
        api.run("scale", "deployment/s-vllm-phi", "--replicas=4", "-n", namespace)
        again = reconcile(api, rec, namespace)
        assert ("Deployment", namespace, "s-vllm-phi") not in again.applied
        api.apply(stack(namespace, dict(scaled, maxModelLen=4096)))
        changed = reconcile(api, rec, namespace)
        assert ("Deployment", namespace, "s-vllm-phi") in changed.applied
        phi = deployments(api, namespace)["s-vllm-phi"]
        assert phi["spec"]["replicas"] == 4
        assert "--max-model-len" in phi["spec"]["template"]["spec"]["containers"][0]["args"]
        status = (api.get("aistack", "s", namespace) or {})["status"]
        assert status["models"][0]["replicas"] == 4
        assert conditions(api, namespace)["Autoscaling"]["reason"] == "Scaling"

        # Autoscaling off: the spec's replicas again, and the scaler is gone.
        api.apply(stack(namespace, fixed))
        off = reconcile(api, rec, namespace)
        assert deployments(api, namespace)["s-vllm-phi"]["spec"]["replicas"] == 3
        assert api.get("scaledobject", "s-vllm-phi", namespace) is None
        assert ("ScaledObject", namespace, "s-vllm-phi") in off.deleted

        # A new autoscaled model starts at its replicas.
        api.apply(
            stack(namespace, fixed, dict(MISTRAL, replicas=2, autoscaling={"maxReplicas": 3}))
        )
        reconcile(api, rec, namespace)
        assert deployments(api, namespace)["s-vllm-mistral"]["spec"]["replicas"] == 2
    finally:
        api.run("delete", "crd", "scaledobjects.keda.sh", "podmonitors.monitoring.coreos.com")
