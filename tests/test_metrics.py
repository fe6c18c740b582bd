"""The operator's Prometheus metrics: what each records, and that /metrics serves them in
the exposition format with every name ``aistack_``-prefixed."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import kopf
import kubernetes
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from aistack import handlers, metrics
from aistack.api import AIStack
from aistack.controller import ReconcileError, Reconciler, StackView
from aistack.hub import HfHub, HubUnavailable
from aistack.kube import Kube, KubeError
from aistack.licenses import decide_stack
from aistack.status import Observed, compute_status
from helpers import stack, stack_doc, trusting_policy
from hubserver import REPO, REV, FakeHubServer
from test_controller import KEY, setup
from test_status import T0, deployments_for


def value(name: str, **labels: str) -> float:
    got = REGISTRY.get_sample_value(name, labels)
    return 0.0 if got is None else got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- reconciles


def test_each_reconcile_is_timed_and_counted_by_result() -> None:
    before = {r: value("aistack_reconciles_total", result=r) for r in ("ok", "error", "invalid")}
    observed = value("aistack_reconcile_duration_seconds_count")
    kube, rec, body = setup()
    kube.fail[("Deployment", "ml", "demo-gateway")] = KubeError(403, "forbidden")
    with pytest.raises(ReconcileError, match="forbidden"):
        rec.reconcile_once(KEY, StackView(stack=body))
    _, rec, body = setup()
    rec.reconcile_once(KEY, StackView(stack=body))
    body["spec"]["models"][0]["gpus"] = 0  # slipped past the schema: reported, not retried
    rec.reconcile_once(KEY, StackView(stack=body))
    # An invalid stack is Degraded in the gauges too.
    assert value("aistack_stack_ready", namespace="ml", stack="demo") == 0
    after = {r: value("aistack_reconciles_total", result=r) for r in before}
    assert {r: after[r] - before[r] for r in before} == {"ok": 1, "error": 1, "invalid": 1}
    assert value("aistack_reconcile_duration_seconds_count") - observed == 3


def test_stacks_by_phase_readiness_and_license_decisions_follow_the_status() -> None:
    s = stack(name="gauged", namespace="metrics", models=[
        {"name": "m", "source": "microsoft/phi-4", "adapters": [
            {"name": "ok", "source": "o/ok", "license": "MIT"},
            {"name": "nc", "source": "o/nc", "license": "CC-BY-NC-4.0"}]}],
        gateway={"providers": [{"name": "gpt", "provider": "openai", "model": "gpt-4o",
                                "credentialsSecretRef": {"name": "k", "key": "k"}}],
                 "authSecretRef": {"name": "gw", "key": "key"}})  # fmt: skip
    verdicts = decide_stack(s, [trusting_policy()])
    degraded = compute_status(s, verdicts, Observed(deployments_for(s)), now=T0)
    assert degraded.phase == "Degraded"
    before = value("aistack_stacks", phase="Degraded")
    kinds = metrics.route_kinds(s)
    assert kinds == {"m": "model", "ok": "adapter", "nc": "adapter", "gpt": "provider"}
    metrics.record_stack("metrics", "gauged", degraded, kinds, verdicts)
    metrics.record_stack("metrics", "gauged", degraded, kinds, verdicts)  # counted once
    assert value("aistack_stacks", phase="Degraded") - before == 1
    assert value("aistack_stack_ready", namespace="metrics", stack="gauged") == 0
    lic = {(k, d): value("aistack_license_verdicts", namespace="metrics", stack="gauged",
                         kind=k, decision=d)
           for k in metrics.KINDS for d in metrics.DECISIONS}  # fmt: skip
    assert {kd: n for kd, n in lic.items() if n} == {
        ("model", "permitted"): 1, ("adapter", "permitted"): 1, ("adapter", "blocked"): 1,
        ("provider", "blocked"): 1,
    }  # fmt: skip
    ready = degraded.model_copy(update={"phase": "Ready"})
    ready_before = value("aistack_stacks", phase="Ready")
    metrics.record_stack("metrics", "gauged", ready, kinds, verdicts)
    assert value("aistack_stacks", phase="Degraded") - before == 0
    assert value("aistack_stacks", phase="Ready") - ready_before == 1
    assert value("aistack_stack_ready", namespace="metrics", stack="gauged") == 1
    metrics.forget_stack("metrics", "gauged")
    assert value("aistack_stacks", phase="Ready") == ready_before
    assert (
        REGISTRY.get_sample_value(
            "aistack_stack_ready", {"namespace": "metrics", "stack": "gauged"}
        )
        is None
    )


def test_a_deleted_stack_leaves_the_gauges() -> None:
    _kube, rec, body = setup()
    rec.reconcile_once(KEY, StackView(stack=body))
    assert (
        REGISTRY.get_sample_value("aistack_stack_ready", {"namespace": "ml", "stack": "demo"})
        is not None
    )
    rec.reconcile_once(KEY, StackView(stack=None))
    assert (
        REGISTRY.get_sample_value("aistack_stack_ready", {"namespace": "ml", "stack": "demo"})
        is None
    )


def test_the_queue_depth_counts_stacks_waiting_for_a_reconcile() -> None:
    from aistack.queue import StackQueue

    # A thread event, not the loop's: a reconcile that starts after the loop has ended
    # (the other stacks, after close) must not wait on a loop that will never run again,
    # which left a worker thread blocked and the test process hanging at exit.
    release = threading.Event()

    async def run() -> list[int]:
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def reconcile(key: Any, view: Any) -> None:
            loop.call_soon_threadsafe(started.set)
            release.wait()

        queue = StackQueue(reconcile, lambda key: StackView(stack=None), workers=1, debounce=0)
        depths = [queue.depth()]
        for i in range(3):
            queue.request(("ns", f"s{i}"))
        depths.append(queue.depth())
        await started.wait()
        depths.append(queue.depth())  # one runs, two wait for the only thread
        release.set()
        await queue.close()
        return depths

    depths = asyncio.run(run())
    assert depths == [0, 3, 2]


# ---------------------------------------------------------------- API, webhook, hub


def test_api_requests_are_counted_by_verb_and_code() -> None:
    config = kubernetes.client.Configuration()
    config.host = f"http://127.0.0.1:{free_port()}"  # nobody listens: no answer
    kube = Kube(kubernetes.client.ApiClient(configuration=config))
    before = value("aistack_api_requests_total", verb="apply", code="error")
    with pytest.raises(KubeError):
        kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "x", "namespace": "ns"}})  # fmt: skip
    assert value("aistack_api_requests_total", verb="apply", code="error") - before == 1


@pytest.fixture
def hub_server() -> Iterator[FakeHubServer]:
    s = FakeHubServer()
    try:
        yield s
    finally:
        s.close()


def test_hub_lookups_are_counted_by_result(hub_server: FakeHubServer) -> None:
    hub = HfHub(endpoint=hub_server.url, timeout=0.3)
    before = {r: value("aistack_hub_lookups_total", result=r)
              for r in ("found", "no_license", "unavailable")}  # fmt: skip
    assert hub.card_license(REPO, REV) is not None
    hub.card_license(REPO, REV)  # from the cache: not a lookup
    hub_server.hang = True
    with pytest.raises(HubUnavailable):
        hub.card_license(REPO, "another-revision")
    after = {r: value("aistack_hub_lookups_total", result=r) for r in before}
    assert {r: after[r] - before[r] for r in before} == {
        "found": 1, "no_license": 0, "unavailable": 1,
    }  # fmt: skip


def test_webhook_admissions_are_counted_by_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "_current_policies", lambda: [])
    # A started replica (its client is never asked: no stack here has provider keys).
    started = Reconciler(Kube(kubernetes.client.ApiClient()), decide_stack)
    monkeypatch.setattr(handlers.RUNTIME, "reconciler", started)

    def admit(**spec: Any) -> None:
        asyncio.run(handlers.admit_stack(body=stack_doc(**spec), warnings=[], dryrun=False))  # type: ignore[arg-type]

    before = {r: value("aistack_webhook_admissions_total", result=r)
              for r in ("allowed", "warned", "denied", "error")}  # fmt: skip
    admit(models=[{"name": "m", "source": "microsoft/phi-4"}])
    with pytest.raises(kopf.AdmissionError):
        admit(models=[{"name": "m", "source": "CohereForAI/c4ai-command-r-plus"}])
    with pytest.raises(kopf.AdmissionError):
        admit(models=[{"name": "m", "source": "o/m", "gpus": 0}])
    after = {r: value("aistack_webhook_admissions_total", result=r) for r in before}
    assert {r: after[r] - before[r] for r in before} == {
        "allowed": 1, "warned": 0, "denied": 2, "error": 0,
    }  # fmt: skip


# ---------------------------------------------------------------- /metrics


def test_metrics_are_served_in_the_exposition_format() -> None:
    _, rec, body = setup()
    rec.reconcile_once(KEY, StackView(stack=body))
    port = free_port()
    metrics.serve(port, addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ours = {name for name in families if name.startswith("aistack_")}
    assert ours == {
        "aistack_reconcile_duration_seconds", "aistack_reconciles", "aistack_queue_depth",
        "aistack_api_requests", "aistack_stacks", "aistack_stack_ready",
        "aistack_license_verdicts", "aistack_webhook_admissions", "aistack_hub_lookups",
        "aistack_model_replicas",
    }  # fmt: skip
    assert families["aistack_reconciles"].type == "counter"
    assert families["aistack_reconcile_duration_seconds"].type == "histogram"
    assert "process_resident_memory_bytes" in families or "python_info" in families
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert name.startswith(("aistack_", "process_", "python_")), name


def test_the_cli_refuses_a_metrics_port_it_cannot_use() -> None:
    from aistack.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["run"]).metrics_port == 9090
    assert parser.parse_args(["run", "--metrics-port", "0"]).metrics_port == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--metrics-port", "70000"])
    assert AIStack  # the API imports alongside the metrics without a cycle
