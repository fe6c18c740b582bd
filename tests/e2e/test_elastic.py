"""Elastic serving end to end: the operator's ScaledObjects, acted on by the real KEDA
(``hack/local-cluster.sh up --keda``), from values a real Prometheus scrapes from stand-ins
for the model servers' and the gateway's metrics, labelled as the stack's PodMonitors label
them (``keda_infra.py``).

One stack (``examples/autoscaling.yaml``'s shape, with short delays): ``chat`` scales 1..4
on requests waiting in vLLM's queue, ``coder`` 0..2 and sleeps when idle. Shown, in order:
the idle model goes to sleep (1 -> 0, and the stack stays Ready with it Idle); load scales
``chat`` 1 -> 4, and 4 -> 1 once it is gone; a request the gateway holds wakes ``coder``
(0 -> 1) and it sleeps again after; the operator writes none of those replica counts; a
model the policy stops loses its ScaledObject, and held requests no longer wake it.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from keda_infra import (
    Prometheus,
    StandInExporter,
    component_log,
    keda_cluster_fixture,
    running_prometheus,
)
from operator_process import REPO_ROOT, OperatorProcess

from conftest import HACK_DIR, Cluster, wait_until

STACK = "elastic"
STACK_LABEL = "aistack_dev_stack"  # the stack's pod label as a PodMonitor target label
DELAY_S = 5  # scaleDownDelaySeconds: KEDA's cooldown and the HPA's scale-down window
#: KEDA reads every 15 s (the rendered pollingInterval), the HPA every 2 s (local cluster).
STEP_S = 90


@dataclass
class Elastic:
    cluster: Cluster
    prometheus: Prometheus
    chat: StandInExporter
    gateway: StandInExporter
    namespace: str
    operator: OperatorProcess


@pytest.fixture(scope="module")
def keda_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    yield from keda_cluster_fixture(request, tmp_path_factory, "aistack-elastic")


def install_crds(cluster: Cluster) -> None:
    """The operator's CRDs, and the Prometheus Operator's PodMonitor (the stack's monitors,
    which the ScaledObjects' queries read)."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    crds = subprocess.run(
        [str(HACK_DIR / "prometheus-crds.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    cluster.kubectl("apply", "--server-side", "-f",
                    str(Path(crds) / "monitoring.coreos.com_podmonitors.yaml"))  # fmt: skip
    cluster.wait_established("aistacks.aistack.dev", "licensepolicies.aistack.dev",
                             "podmonitors.monitoring.coreos.com")  # fmt: skip


def the_stack(namespace: str, prometheus: str) -> dict[str, Any]:
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": STACK, "namespace": namespace},
        "spec": {
            "models": [
                {"name": "chat", "source": "mistralai/Mistral-7B-Instruct-v0.3",
                 "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "target": 2,
                                 "scaleDownDelaySeconds": DELAY_S}},
                {"name": "coder", "source": "microsoft/Phi-3.5-mini-instruct",  # MIT
                 "autoscaling": {"minReplicas": 0, "maxReplicas": 2,
                                 "scaleDownDelaySeconds": DELAY_S,
                                 "wakeTimeoutSeconds": 60}},
            ],
            "ray": {"enabled": False},
            "mlflow": {"enabled": False},
            "monitoring": {"enabled": True, "prometheusAddress": prometheus},
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def elastic(keda_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Elastic]:
    cluster = keda_cluster
    install_crds(cluster)
    namespace = f"e2e-elastic-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    labels = {STACK_LABEL: STACK}
    chat = StandInExporter(namespace=namespace, pod="elastic-vllm-chat-0", labels=labels)
    chat.set("chat", waiting=0, running=0)
    gateway = StandInExporter(namespace=namespace, pod="elastic-gateway-0", labels=labels)
    gateway.hold("coder", 0)
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), [chat, gateway]) as prom:
        op = OperatorProcess(cluster.env, tmp_path_factory.mktemp("operator"))
        op.start()
        try:
            cluster.apply(the_stack(namespace, prom.url))
            yield Elastic(cluster, prom, chat, gateway, namespace, op)
        finally:
            op.stop()


def replicas(e: Elastic, model: str) -> tuple[int, int]:
    d = e.cluster.get_json("deployment", f"{STACK}-vllm-{model}", "-n", e.namespace)
    return int(d["spec"].get("replicas", 1)), int(d.get("status", {}).get("readyReplicas") or 0)


def wait_replicas(e: Elastic, model: str, want: int, why: str) -> None:
    try:
        wait_until(lambda: replicas(e, model) == (want, want), timeout=STEP_S, interval=1,
                   message=f"{model} at {want} replicas ({why})")  # fmt: skip
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nkeda-operator:\n{component_log(e.cluster, 'keda-operator')}"
        ) from None


def stack_status(e: Elastic) -> dict[str, Any]:
    status: dict[str, Any] = e.cluster.get_json("aistack", STACK, "-n", e.namespace).get(
        "status", {}
    )
    return status


def model_status(e: Elastic, model: str) -> dict[str, Any]:
    return next(m for m in stack_status(e).get("models", []) if m["name"] == model)


def operator_applied(e: Elastic, model: str) -> int:
    """How often the operator's log says it applied the model's Deployment."""
    return e.operator.log().count(f"applied Deployment/{STACK}-vllm-{model} ")


def test_the_idle_model_sleeps_and_the_stack_stays_ready(elastic: Elastic) -> None:
    e = elastic
    wait_until(
        lambda: {c["type"]: c["reason"] for c in stack_status(e).get("conditions", [])}.get(
            "Autoscaling") == "Scaling",
        timeout=60, message="the Autoscaling condition",
    )  # fmt: skip
    names = {s["metadata"]["name"] for s in e.cluster.get_json("scaledobjects", "-n",
                                                             e.namespace)["items"]}  # fmt: skip
    assert names == {f"{STACK}-vllm-chat", f"{STACK}-vllm-coder"}
    wait_replicas(e, "chat", 1, "its starting size, and its minimum")
    wait_replicas(e, "coder", 0, "idle: asleep after its delay")
    wait_until(lambda: model_status(e, "coder").get("reason") == "Idle", timeout=60,
               message="coder reported Idle")  # fmt: skip
    wait_until(lambda: stack_status(e).get("phase") == "Ready", timeout=60,
               message="the stack Ready with a model asleep")  # fmt: skip


def test_load_scales_a_model_out_and_back_without_the_operator(elastic: Elastic) -> None:
    e = elastic
    before = operator_applied(e, "chat")
    e.chat.set("chat", waiting=7)  # 7 waiting, 2 per replica: 4 (its maximum)
    wait_replicas(e, "chat", 4, "7 requests waiting, target 2")
    wait_until(lambda: model_status(e, "chat")["replicas"] == 4, timeout=30,
               message="the status to say what KEDA chose")  # fmt: skip
    e.chat.set("chat", waiting=0)
    wait_replicas(e, "chat", 1, "no load for the delay: back to its minimum")
    # KEDA and the HPA moved the count; the operator never wrote the Deployment.
    assert operator_applied(e, "chat") == before


def test_a_held_request_wakes_the_sleeping_model(elastic: Elastic) -> None:
    e = elastic
    wait_replicas(e, "coder", 0, "asleep")
    before = operator_applied(e, "coder")
    e.gateway.hold("coder", 1)
    wait_replicas(e, "coder", 1, "a request held for it")
    e.gateway.hold("coder", 0)
    wait_replicas(e, "coder", 0, "nothing held or served for its delay: asleep again")
    assert operator_applied(e, "coder") == before


def test_a_model_the_policy_stops_is_never_woken(elastic: Elastic) -> None:
    e = elastic
    policy = f"e2e-no-mit-{uuid.uuid4().hex[:6]}"
    e.cluster.apply({"apiVersion": "aistack.dev/v1alpha1", "kind": "LicensePolicy",
                     "metadata": {"name": policy},
                     "spec": {"allow": ["Apache-2.0"], "deny": ["MIT"],
                              "enforcement": "Deny"}})  # fmt: skip
    try:
        so = f"{STACK}-vllm-coder"
        wait_until(
            lambda: so not in {s["metadata"]["name"] for s in e.cluster.get_json(
                "scaledobjects", "-n", e.namespace)["items"]},
            timeout=60, message="the stopped model's ScaledObject to go",
        )  # fmt: skip
        wait_until(
            lambda: not [h for h in e.cluster.get_json("hpa", "-n", e.namespace)["items"]
                         if h["spec"]["scaleTargetRef"]["name"] == so],
            timeout=60, message="KEDA to remove its HPA",
        )  # fmt: skip
        e.gateway.hold("coder", 3)
        # What would have woken it in one KEDA poll wakes the other model all the same,
        # while the stopped one stays at zero: KEDA is live, it just has nothing to act on.
        e.chat.set("chat", waiting=3)
        wait_replicas(e, "chat", 2, "3 waiting, target 2: KEDA still acts")
        assert replicas(e, "coder") == (0, 0)
        assert model_status(e, "coder")["permitted"] is False
    finally:
        e.gateway.hold("coder", 0)
        e.chat.set("chat", waiting=0)
        e.cluster.kubectl("delete", "licensepolicy", policy, "--ignore-not-found")
