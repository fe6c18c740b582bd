"""Stack monitoring on the local cluster: without the Prometheus Operator's CRDs a stack gets
no monitors and says why; once the CRDs are installed (from the Prometheus Operator's own
release, hack/prometheus-crds.sh) the operator notices, renders PodMonitors and the API
server accepts them; removed, the stack goes back. The chart's ServiceMonitor and
PrometheusRule are accepted by the same CRDs."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_process import REPO_ROOT, OperatorProcess
from stacks import conditions, get_stack, load, wait_phase

from aistack.kube import Kube, load_client

CRDS = ("podmonitors", "servicemonitors", "prometheusrules")


@functools.cache
def crd_dir() -> Path:
    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "prometheus-crds.sh")],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1])


def crd_files() -> list[Path]:
    return [crd_dir() / f"monitoring.coreos.com_{plural}.yaml" for plural in CRDS]


def install_crds(cluster: Any) -> None:
    """The Prometheus Operator's CRDs, installed and established."""
    for path in crd_files():
        cluster.kubectl("apply", "--server-side", "-f", str(path))
    cluster.wait_established(*(f"{plural}.monitoring.coreos.com" for plural in CRDS))


def remove_crds(cluster: Any, *, missing_ok: bool = True) -> None:
    """The CRDs deleted (and every object of theirs with them)."""
    for path in crd_files():
        cluster.kubectl(
            "delete", "-f", str(path), "--wait=true", *(["--ignore-not-found"] * missing_ok)
        )


@pytest.fixture(scope="module", autouse=True)
def no_crds_after(cluster: Any) -> Iterator[None]:
    """Later modules' stacks must not meet the CRDs."""
    yield
    remove_crds(cluster)


def monitoring(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    return conditions(get_stack(cluster, ns, name)).get("Monitoring", {})


def wait_monitoring(cluster: Any, ns: str, name: str, reason: str) -> dict[str, Any]:
    return cluster.wait_until(  # type: ignore[no-any-return]
        lambda: (c := monitoring(cluster, ns, name)).get("reason") == reason and c,
        timeout=90, message=f"{name}: Monitoring {reason}",
    )  # fmt: skip


def podmonitors(cluster: Any, ns: str) -> dict[str, dict[str, Any]]:
    items = cluster.get_json("podmonitors", "-n", ns)["items"]
    return {p["metadata"]["name"]: p for p in items}


def test_monitors_follow_the_prometheus_operator_crds(
    cluster: Any, operator: OperatorProcess, namespace: str
) -> None:
    auto = load("quickstart.yaml")  # monitoring left unset: on when the CRDs exist
    off = load("quickstart.yaml")
    off["metadata"]["name"] = "quiet"
    off["spec"]["monitoring"] = {"enabled": False}
    for doc in (auto, off):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    wait_phase(cluster, namespace, "quickstart", "Ready")

    # No CRDs: no monitors (the API server has no such kind), and the condition says so.
    absent = wait_monitoring(cluster, namespace, "quickstart", "CRDsAbsent")
    assert absent["status"] == "False"
    assert "podmonitors.monitoring.coreos.com" in absent["message"]
    assert cluster.kubectl("get", "podmonitors", "-n", namespace, check=False).returncode != 0
    assert wait_monitoring(cluster, namespace, "quiet", "Disabled")["status"] == "False"
    kube = Kube(load_client(cluster.kubeconfig, 1))
    assert kube.serves("PodMonitor") is False  # what a starting operator asks

    # The CRDs arrive (e.g. kube-prometheus-stack installed after the operator): the
    # operator notices without a restart, and the API server accepts every monitor.
    install_crds(cluster)
    assert kube.serves("PodMonitor") is True
    rendered = wait_monitoring(cluster, namespace, "quickstart", "Rendered")
    assert rendered["status"] == "True"
    assert "MLflow is not scraped" in rendered["message"]
    expected = {"quickstart-model-server", "quickstart-ray", "quickstart-gateway"}
    found = cluster.wait_until(
        lambda: (pms := podmonitors(cluster, namespace)) and set(pms) == expected and pms,
        timeout=60, message="the stack's PodMonitors",
    )  # fmt: skip
    for pm in found.values():
        assert pm["metadata"]["ownerReferences"][0]["name"] == "quickstart"
        path = "/metrics/" if pm["metadata"]["name"].endswith("-gateway") else "/metrics"
        assert pm["spec"]["podMetricsEndpoints"][0]["path"] == path
    # The stack with monitoring off has none, and stays so.
    assert not [n for n in found if n.startswith("quiet-")]
    assert monitoring(cluster, namespace, "quiet")["reason"] == "Disabled"
    # Ready never depended on it.
    wait_phase(cluster, namespace, "quickstart", "Ready")

    # A monitor removed by hand comes back (the operator owns it).
    cluster.kubectl("delete", "podmonitor", "quickstart-gateway", "-n", namespace)
    cluster.wait_until(
        lambda: "quickstart-gateway" in podmonitors(cluster, namespace),
        timeout=60, message="the deleted PodMonitor to come back",
    )  # fmt: skip

    # A restart keeps them: the new operator knows the CRDs are there before it reconciles
    # (it neither deletes nor writes a monitor).
    uids = {n: pm["metadata"]["uid"] for n, pm in podmonitors(cluster, namespace).items()}
    operator.restart()
    cluster.wait_until(
        lambda: "Handler 'stack_event' succeeded" in operator.log(),
        timeout=60, message="the restarted operator to see the stacks",
    )  # fmt: skip
    wait_phase(cluster, namespace, "quickstart", "Ready")
    assert monitoring(cluster, namespace, "quickstart")["reason"] == "Rendered"
    after = {n: pm["metadata"]["uid"] for n, pm in podmonitors(cluster, namespace).items()}
    assert after == uids
    # (The operator serves every namespace: only this test's stack is its to judge.)
    assert not [w for w in operator.writes() if f"/namespaces/{namespace}/podmonitors" in w]

    # The CRDs go: the stack says so again, and is still Ready.
    remove_crds(cluster, missing_ok=False)
    wait_monitoring(cluster, namespace, "quickstart", "CRDsAbsent")
    wait_phase(cluster, namespace, "quickstart", "Ready")
    # Gone before the namespace is: a stack left in a terminating namespace has the
    # operators of later tests write into it, and be refused.
    cluster.kubectl("delete", "aistack", "quickstart", "quiet", "-n", namespace, "--wait=true")


def test_the_api_server_accepts_the_charts_monitoring_objects(cluster: Any, tmp_path: Path) -> None:
    from test_helm_rbac import helm_binary  # the helm the e2e suite builds

    install_crds(cluster)
    try:
        out = subprocess.run(
            [helm_binary(), "template", "aistack-operator",
             str(REPO_ROOT / "charts" / "aistack-operator"), "--namespace", "default",
             "--set", "monitoring.serviceMonitor.enabled=true",
             "--set", "monitoring.prometheusRule.enabled=true"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        objs = [
            d for d in yaml.safe_load_all(out.stdout)
            if d and d.get("apiVersion") == "monitoring.coreos.com/v1"
        ]  # fmt: skip
        assert sorted(o["kind"] for o in objs) == ["PrometheusRule", "ServiceMonitor"]
        manifest = tmp_path / "monitoring.yaml"
        manifest.write_text(yaml.safe_dump_all(objs))
        cluster.kubectl("apply", "--dry-run=server", "-f", str(manifest))
    finally:
        remove_crds(cluster)
