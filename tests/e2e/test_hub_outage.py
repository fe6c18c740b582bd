"""An outage of the Hugging Face Hub, against the real API server and the real operator
(`aistack run --hub`, pointed by HF_ENDPOINT at a loopback stand-in of the Hub's API).

A model the Hub permitted keeps serving while the Hub does not answer, even across an
operator restart (nothing cached): its Deployment keeps its replicas, the stack says the
verdict is stale. When the Hub answers again, the stack is fresh again without anyone
touching it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess
from stacks import conditions, deployments, get_stack, load, wait_phase

from hubserver import REPO, REV, FakeHubServer


@pytest.fixture
def hub() -> Iterator[FakeHubServer]:
    server = FakeHubServer()
    server.hang_for = 6.0  # longer than the operator's 3 s timeout
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def hub_operator(cluster: Any, crds: None, hub: FakeHubServer, tmp_path: Path) -> Iterator[Any]:
    env = {**cluster.env, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    op = OperatorProcess(env, tmp_path, ["--hub"])
    op.start()
    try:
        yield op
    finally:
        op.stop()


def compliant(cluster: Any, ns: str) -> dict[str, Any]:
    return conditions(get_stack(cluster, ns, "quickstart"))["LicenseCompliant"]


def test_a_hub_outage_never_stops_a_serving_model(
    cluster: Any, hub: FakeHubServer, hub_operator: OperatorProcess, namespace: str
) -> None:
    doc = load("quickstart.yaml")
    doc["spec"]["models"] = [{"name": "open", "source": REPO, "revision": REV, "gpus": 1}]
    doc["spec"]["ray"] = {"enabled": False}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    (model,) = stack["status"]["models"]
    assert (model["permitted"], model["license"], model["licenseSource"]) == (
        True, "Apache-2.0", "Hub",
    )  # fmt: skip
    server = "quickstart-vllm-open"
    assert deployments(cluster, namespace)[server]["spec"]["replicas"] == 1

    # The Hub stops answering, and the operator restarts: nothing is cached. An edit of
    # the stack makes it judge the model again.
    hub.hang = True
    hub_operator.restart()
    cluster.kubectl("patch", "aistack", "quickstart", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"gateway": {"replicas": 2}}}))  # fmt: skip
    cluster.wait_until(
        lambda: compliant(cluster, namespace)["reason"] == "LicenseVerdictStale",
        timeout=60, message="the verdict marked stale",
    )  # fmt: skip
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    assert "did not answer" in compliant(cluster, namespace)["message"]
    assert stack["status"]["models"][0]["permitted"] is True
    assert deployments(cluster, namespace)[server]["spec"]["replicas"] == 1, "never zero"

    # The Hub is back: without any edit, the stack is looked at again and is fresh.
    hub.hang = False
    cluster.wait_until(
        lambda: compliant(cluster, namespace)["reason"] == "LicensesPermitted",
        timeout=90, message="a fresh verdict once the Hub answers",
    )  # fmt: skip
    assert deployments(cluster, namespace)[server]["spec"]["replicas"] == 1
