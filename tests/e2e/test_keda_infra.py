"""Proof of the infrastructure for elastic serving: the real KEDA scales a Deployment in
the local cluster (``hack/local-cluster.sh up --keda``) from the values a real Prometheus
scrapes from a stand-in for vLLM's metrics (see ``keda_infra.py``).

The chain under test: the stand-in's ``vllm:num_requests_waiting`` -> Prometheus (scrape
every second) -> KEDA's Prometheus scaler in keda-operator (polling every second; it scales
between 0 and 1 itself) -> keda-metrics-apiserver over gRPC (mutual TLS) -> the API
server's aggregator (external.metrics.k8s.io) -> kube-controller-manager's HPA controller
(the HPA KEDA made; it scales from 1 up, every 2 s) -> the Deployment -> the scheduler and
kwok's simulated CPU node, where the pods become Ready.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from keda_infra import (
    Prometheus,
    StandInExporter,
    component_log,
    keda_cluster_fixture,
    running_prometheus,
)

from conftest import Cluster, wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"  # vLLM's model_name: the served model's name
THRESHOLD = 2  # waiting requests per replica
ACTIVATION = 0  # any waiting request wakes the model from zero
COOLDOWN_S = 5


@dataclass
class Scenario:
    cluster: Cluster
    prometheus: Prometheus
    exporter: StandInExporter
    namespace: str
    query: str


@pytest.fixture(scope="module")
def keda_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    yield from keda_cluster_fixture(request, tmp_path_factory, "aistack-keda")


@pytest.fixture(scope="module")
def scenario(keda_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    namespace = f"e2e-keda-{uuid.uuid4().hex[:6]}"
    keda_cluster.kubectl("create", "namespace", namespace)
    exporter = StandInExporter(namespace=namespace, pod="llama-0")
    exporter.set(MODEL, waiting=0, running=0)
    query = f'sum(vllm:num_requests_waiting{{namespace="{namespace}",model_name="{MODEL}"}})'
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), [exporter]) as prometheus:
        yield Scenario(keda_cluster, prometheus, exporter, namespace, query)


def deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                # No GPU: it lands on kwok's cpu-node-0 (the GPU nodes are tainted).
                "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.0"}]},
            },
        },
    }


def scaled_object(name: str, server: str, query: str) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": 0,
            "maxReplicaCount": 4,
            "pollingInterval": 1,
            "cooldownPeriod": COOLDOWN_S,
            # The HPA's default downscale stabilization (5 min) would hold the replicas.
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": server,
                        "query": query,
                        "threshold": str(THRESHOLD),
                        "activationThreshold": str(ACTIVATION),
                    },
                }
            ],
        },
    }


def replicas(cluster: Cluster, namespace: str, name: str) -> tuple[int, int]:
    """The Deployment's (spec.replicas, status.readyReplicas)."""
    d = cluster.get_json("deployment", name, "-n", namespace)
    return int(d["spec"].get("replicas", 1)), int(d.get("status", {}).get("readyReplicas", 0))


def wait_replicas(s: Scenario, name: str, want: int, timeout: float, why: str) -> None:
    try:
        wait_until(
            lambda: replicas(s.cluster, s.namespace, name) == (want, want),
            timeout=timeout, interval=0.5, message=f"{name}: {want} ready replicas ({why})",
        )  # fmt: skip
    except AssertionError as exc:
        hpa = s.cluster.kubectl("get", "hpa", "-n", s.namespace, "-o", "yaml", check=False)
        so = s.cluster.kubectl("get", "scaledobject", name, "-n", s.namespace, "-o", "yaml",
                               check=False)  # fmt: skip
        raise AssertionError(
            f"{exc}\nPrometheus: {s.query} = {s.prometheus.value(s.query)}\n"
            f"ScaledObject:\n{so.stdout}\nHPA:\n{hpa.stdout}\n"
            f"keda-operator:\n{component_log(s.cluster, 'keda-operator')}\n"
            f"keda-metrics-apiserver:\n{component_log(s.cluster, 'keda-metrics-apiserver')}"
        ) from exc


def test_external_metrics_api_is_served_by_keda(keda_cluster: Cluster) -> None:
    service = keda_cluster.get_json("apiservice", "v1beta1.external.metrics.k8s.io")
    available = {c["type"]: c["status"] for c in service["status"]["conditions"]}
    assert available == {"Available": "True"}
    assert keda_cluster.kubectl("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1").stdout


def test_prometheus_has_the_stand_in_series_with_target_labels(scenario: Scenario) -> None:
    scenario.exporter.set(MODEL, waiting=3, running=2)
    scenario.prometheus.wait_for_value(scenario.query, 3)
    series = scenario.prometheus.query("vllm:num_requests_running")
    assert [s["metric"] for s in series] == [
        {
            "__name__": "vllm:num_requests_running",
            "instance": scenario.exporter.address,
            "job": "vllm",
            "model_name": MODEL,
            "namespace": scenario.namespace,
            "pod": "llama-0",
        }
    ]
    assert float(series[0]["value"][1]) == 2
    scenario.exporter.set(MODEL, waiting=0, running=0)
    scenario.prometheus.wait_for_value(scenario.query, 0)


def test_keda_scales_a_deployment_from_zero_up_and_back_to_zero(scenario: Scenario) -> None:
    name = "llama"
    s = scenario
    s.cluster.apply(deployment(name), namespace=s.namespace)
    s.cluster.apply(scaled_object(name, s.prometheus.url, s.query), namespace=s.namespace)
    wait_until(
        lambda: s.cluster.get_json("hpa", f"keda-hpa-{name}", "-n", s.namespace),
        timeout=60, message="the HPA KEDA makes for the ScaledObject",
    )  # fmt: skip
    assert replicas(s.cluster, s.namespace, name) == (0, 0)

    # One waiting request: KEDA activates the target (0 -> 1); 1/2 per replica keeps it at 1.
    s.exporter.set(MODEL, waiting=1)
    s.prometheus.wait_for_value(s.query, 1)
    wait_replicas(s, name, 1, timeout=60, why="one waiting request")

    # Five waiting: the HPA wants ceil(5 / 2) = 3 replicas.
    s.exporter.set(MODEL, waiting=5, running=2)
    s.prometheus.wait_for_value(s.query, 5)
    wait_replicas(s, name, 3, timeout=90, why="five waiting requests, two per replica")

    # Nine: ceil(9 / 2) = 5, held at maxReplicaCount 4.
    s.exporter.set(MODEL, waiting=9, running=4)
    s.prometheus.wait_for_value(s.query, 9)
    wait_replicas(s, name, 4, timeout=90, why="nine waiting requests, at most 4 replicas")

    # Nothing waiting: inactive; after the cooldown KEDA scales the target to zero.
    s.exporter.set(MODEL, waiting=0, running=0)
    s.prometheus.wait_for_value(s.query, 0)
    wait_replicas(s, name, 0, timeout=90, why=f"no waiting request, {COOLDOWN_S}s cooldown")
