"""Operations: an operator limited to some namespaces, and two replicas through peering.

Each test runs its own operator processes (the cluster-wide one of test_operator.py is
stopped by then: its fixture is module-scoped)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess
from stacks import get_stack, load, wait_exists, wait_phase


@pytest.fixture
def other_namespace(cluster: Any) -> Iterator[str]:
    name = f"e2e-other-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_until(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=60,
        message="default ServiceAccount",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_a_namespaced_operator_serves_only_its_namespaces(
    cluster: Any, crds: None, namespace: str, other_namespace: str, tmp_path: Path
) -> None:
    op = OperatorProcess(cluster.env, tmp_path, ["-n", namespace])
    op.start()
    try:
        for ns in (namespace, other_namespace):
            cluster.apply(load("quickstart.yaml"), namespace=ns)
        wait_phase(cluster, namespace, "quickstart", "Ready")
        time.sleep(5)
        untouched = get_stack(cluster, other_namespace, "quickstart")
        assert "status" not in untouched
        children = cluster.get_json("deployments", "-n", other_namespace)["items"]
        assert children == []
        assert not [w for w in op.writes() if f"/namespaces/{other_namespace}/" in w]
    finally:
        op.stop()


def test_two_replicas_elect_one_through_peering(
    cluster: Any, crds: None, namespace: str, tmp_path: Path
) -> None:
    peering = f"aistack-e2e-{uuid.uuid4().hex[:6]}"
    cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}}
    )
    active = OperatorProcess(
        cluster.env, tmp_path / "a", ["--peering", peering, "--priority", "100"]
    )
    standby = OperatorProcess(
        cluster.env, tmp_path / "b", ["--peering", peering, "--priority", "50"]
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    active.start()
    standby.start()
    try:
        cluster.apply(load("quickstart.yaml"), namespace=namespace)
        wait_phase(cluster, namespace, "quickstart", "Ready")
        assert [w for w in active.writes() if f"/namespaces/{namespace}/" in w]
        assert not [w for w in standby.writes() if f"/namespaces/{namespace}/" in w]
        assert "aistack.controller" not in standby.log(), "the standby reconciled"

        # The active replica goes away: the standby takes over and undoes drift.
        active.stop()
        cluster.kubectl("delete", "service", "quickstart-gateway", "-n", namespace)
        wait_exists(cluster, "service", "quickstart-gateway", namespace, timeout=90)
        assert [w for w in standby.writes() if f"/namespaces/{namespace}/" in w]
    finally:
        active.stop()
        standby.stop()
        cluster.kubectl("delete", "clusterkopfpeering", peering, check=False)
