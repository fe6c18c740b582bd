"""The operator's Prometheus metrics, scraped from the real operator on the local cluster:
its reconcile and license metrics move when a stack is created, its webhook counts the
admissions it judged, and (when promtool is built) `promtool check metrics` accepts what it
serves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import REPO_ROOT, OperatorProcess
from prometheus_client.parser import text_string_to_metric_families
from stacks import load, wait_phase

from conftest import free_port

NC_MODEL = "CohereForAI/c4ai-command-r-plus"  # CC-BY-NC-4.0


class Scraped:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` that has ``labels`` (and any others)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))


@pytest.fixture(scope="module")
def measured(cluster: Any, crds: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The operator with its webhook and its metrics on a port of its own."""
    port = free_port()
    webhook = f"e2e-{uuid.uuid4().hex[:6]}.aistack.dev"
    op = OperatorProcess(
        cluster.env,
        tmp_path_factory.mktemp("measured"),
        ["--metrics-port", str(port), "--webhook-port", str(free_port()),
         "--webhook-addr", "127.0.0.1", "--webhook-host", "127.0.0.1",
         "--webhook-managed", webhook],
    )  # fmt: skip
    op.start()
    try:
        cluster.wait_until(
            lambda: cluster.kubectl(
                "get", "validatingwebhookconfiguration", webhook, check=False
            ).returncode == 0,
            timeout=30, message="the webhook configuration",
        )  # fmt: skip

        def scrape() -> Scraped:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                return Scraped(response.read().decode())

        yield scrape
    finally:
        op.stop()
        cluster.kubectl("delete", "validatingwebhookconfiguration", webhook, check=False)


def promtool() -> str | None:
    """The promtool `make` builds (hack/build-tools.sh), if it is there."""
    found = shutil.which("promtool")
    if found:
        return found
    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-tools.sh"), "--promtool", "--print-bin-dir"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    path = Path(out.stdout.strip().splitlines()[-1]) / "promtool" if out.stdout.strip() else None
    return str(path) if out.returncode == 0 and path is not None and path.is_file() else None


def test_reconcile_and_license_metrics_move_when_a_stack_is_created(
    cluster: Any, measured: Any, namespace: str
) -> None:
    before = measured()
    doc = load("quickstart.yaml")
    doc["spec"]["ray"] = {"enabled": False}
    doc["spec"]["models"].append({"name": "nc", "source": NC_MODEL, "replicas": 0})
    # Refused by the webhook (a non-commercial model): counted as denied.
    refused = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False
    )
    assert refused.returncode != 0
    doc["spec"]["models"].pop()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    wait_phase(cluster, namespace, "quickstart", "Ready")

    after = measured()
    grew = lambda name, **labels: after.get(name, **labels) - before.get(name, **labels)  # noqa: E731
    assert grew("aistack_reconciles_total", result="ok") >= 1
    assert grew("aistack_reconcile_duration_seconds_count") >= 1
    applied = after.total("aistack_api_requests_total", verb="apply")
    assert applied - before.total("aistack_api_requests_total", verb="apply") >= 1
    codes = {dict(ls)["code"] for (n, ls) in after.samples if n == "aistack_api_requests_total"}
    assert codes and all(c.isdigit() or c == "error" for c in codes), codes
    assert grew("aistack_webhook_admissions_total", result="denied") == 1
    assert grew("aistack_webhook_admissions_total", result="allowed") >= 1
    stack = {"namespace": namespace, "stack": "quickstart"}
    assert after.get("aistack_stack_ready", **stack) == 1
    assert after.get("aistack_license_verdicts", **stack, kind="model", decision="permitted") == 1
    assert after.get("aistack_license_verdicts", **stack, kind="model", decision="blocked") == 0
    assert grew("aistack_stacks", phase="Ready") >= 1
    assert after.get("aistack_queue_depth") >= 0

    # Deleted, the stack leaves the per-stack gauges.
    cluster.kubectl("delete", "aistack", "quickstart", "-n", namespace, "--wait=true")

    def gone() -> bool:
        return ("aistack_stack_ready", tuple(sorted(stack.items()))) not in measured().samples

    cluster.wait_until(gone, timeout=60, message="the deleted stack to leave the metrics")


def test_promtool_accepts_the_metrics(measured: Any, tmp_path: Path) -> None:
    tool = promtool()
    if tool is None:
        if os.environ.get("CI") == "true" or os.environ.get("AISTACK_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is not built: run make promtool-rules")
        pytest.skip("promtool is not built (make promtool-rules)")
    text = measured().text
    result = subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    # promtool's lint findings go to stdout/stderr and set a non-zero exit status.
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_operator_series_the_dashboard_and_alerts_read_is_served(
    cluster: Any, measured: Any, namespace: str
) -> None:
    """The dashboard's and the alerts' queries of the operator (``aistack_*``, and the
    process metrics of prometheus_client) against what the real operator serves with a
    stack in place: each metric is there, with every label the query matches on (but those
    Prometheus adds to a target)."""
    from test_alerts import (
        TARGET_LABELS,
        alert_rules,
        dashboard,
        dashboard_queries,
        selectors,
    )

    doc = load("quickstart.yaml")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    wait_phase(cluster, namespace, "quickstart", "Ready")
    served: dict[str, set[str]] = {}
    for name, labels in measured().samples:
        served.setdefault(name, set()).update(k for k, _ in labels)
    queries = [*dashboard_queries(dashboard()), *((r["alert"], r["expr"]) for r in alert_rules())]
    checked = 0
    for where, expr in queries:
        for sel in selectors(expr):
            if not sel.metric.startswith(("aistack_", "process_")):
                continue  # vLLM's (the conformance suite) and Prometheus' own (`up`)
            assert sel.metric in served, f"{where}: {sel.metric} is not served"
            missing = sel.labels - TARGET_LABELS - served[sel.metric]
            assert not missing, f"{where}: {sel.metric} has no label {missing}"
            checked += 1
    assert checked >= 15, checked
    cluster.kubectl("delete", "aistack", "quickstart", "-n", namespace, "--wait=true")
