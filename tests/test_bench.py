"""The benchmark's pure parts: percentiles, audit-log counting, goals and the table."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import analysis
import bench


def _event(
    agent: str,
    verb: str,
    resource: str,
    name: str = "x",
    *,
    at: str = "2026-12-02T10:00:01.500000Z",
    stage: str = "ResponseComplete",
    subresource: str | None = None,
    code: int = 200,
) -> str:
    ref: dict[str, Any] = {"resource": resource, "namespace": "bench", "name": name}
    if subresource:
        ref["subresource"] = subresource
    return json.dumps(
        {
            "kind": "Event",
            "stage": stage,
            "verb": verb,
            "userAgent": agent,
            "objectRef": ref,
            "requestReceivedTimestamp": at,
            "responseStatus": {"code": code},
        },
        separators=(",", ":"),
    )


OP = "aistack-operator/0.1.0"
KOPF = "kopf/1.45.2"
KUBECTL = "kubectl/v1.36.3 (linux/amd64) kubernetes/abc"


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(20, 0, -1)]  # order must not matter
    assert analysis.percentile(values, 50) == pytest.approx(10.5)
    assert analysis.percentile(values, 95) == pytest.approx(19.05)
    assert analysis.percentile(values, 0) == 1.0
    assert analysis.percentile(values, 100) == 20.0
    assert analysis.percentile([3.0], 95) == 3.0


@pytest.mark.parametrize(("values", "p"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_refuses_nonsense(values: list[float], p: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        analysis.percentile(values, p)


def test_read_audit_keeps_completed_requests_of_the_agents_asked_for() -> None:
    lines = [
        _event(OP, "patch", "deployments", "a"),
        _event(KOPF, "watch", "aistacks"),
        _event(KUBECTL, "patch", "aistacks", "s1"),
        _event(OP, "patch", "deployments", "a", stage="ResponseStarted"),
        _event(OP, "patch", "aistacks", "s1", subresource="status"),
        _event(OP, "create", "deployments", "b")[:40],  # cut off by a kill
        _event("kube-controller-manager/v1.36.3", "create", "replicasets"),
    ]
    ops = analysis.read_audit(lines, analysis.OPERATOR_AGENTS)
    assert [(r.verb, r.resource, r.name) for r in ops] == [
        ("patch", "deployments", "a"),
        ("watch", "aistacks", "x"),
        ("patch", "aistacks/status", "s1"),
    ]
    assert ops[0].at == datetime(2026, 12, 2, 10, 0, 1, 500000, tzinfo=UTC).timestamp()
    assert [r.write for r in ops] == [True, False, True]
    kubectl = analysis.read_audit(lines, (analysis.KUBECTL_AGENT,))
    assert [(r.verb, r.name) for r in kubectl] == [("patch", "s1")]


def test_window_and_counts_by_verb() -> None:
    lines = [
        _event(OP, "patch", "deployments", "a", at="2026-12-02T10:00:00Z"),
        _event(OP, "list", "licensepolicies", "", at="2026-12-02T10:00:05Z"),
        _event(OP, "patch", "services", "a", at="2026-12-02T10:00:10Z"),
    ]
    reqs = analysis.read_audit(lines, analysis.OPERATOR_AGENTS)
    start = analysis.parse_time("2026-12-02T10:00:04Z")
    inside = analysis.window(reqs, start, start + 10)
    assert analysis.by_verb(inside) == {"list": 1, "patch": 1}
    assert analysis.by_resource_verb(inside) == {"list licensepolicies": 1, "patch services": 1}


def test_write_breakdown_sorts_writes_and_finds_repeats() -> None:
    lines = [
        _event(OP, "patch", "deployments", "a"),
        _event(OP, "patch", "deployments", "a"),
        _event(OP, "patch", "services", "a"),
        _event(OP, "patch", "aistacks", "s1", subresource="status"),
        _event(OP, "create", "events", "s1.1"),
        _event(OP, "get", "deployments", "a"),
        _event(OP, "create", "leases", "l"),
    ]
    b = analysis.write_breakdown(analysis.read_audit(lines, analysis.OPERATOR_AGENTS), 2)
    assert (b.child_writes, b.status_writes, b.event_writes, b.other_writes) == (3, 1, 1, 1)
    assert b.writes_per_child == 1.5
    assert b.repeat_child_writes == {"deployments/bench/a": 2}
    assert analysis.write_breakdown([], 0).writes_per_child == 0.0


def _many(ready: float, rss: float = 120.0, writes_per_child: float = 1.0) -> dict[str, Any]:
    return {
        "exists": ready / 2,
        "ready": ready,
        "operator_peak_rss_mb": rss,
        "operator_cpu_seconds": 10.0,
        "writes": {"writes_per_child": writes_per_child, "status_writes_per_stack": 3.0},
        "idle_seconds": 120.0,
        "idle_writes": 0,
        "resync_interval": 10.0,
        "idle_reads": 0,
        "resync_reads_per_stack_hour": 0.0,
    }


def test_summary_rows_judge_the_goals() -> None:
    results = {
        "single": {
            "operator": {"exists_p50": 1.1, "exists_p95": 1.5, "ready_p50": 2.0, "ready_p95": 3},
            "limit": {"exists_p50": 1.0, "exists_p95": 1.2, "ready_p50": 1.8, "ready_p95": 2},
        },
        "many": {
            "100": {"operator": _many(30.0), "limit": {**_many(25.0), "idle_writes": None}},
            "1000": {"operator": _many(200.0, rss=350.0), "limit": _many(150.0)},
        },
    }
    rows = {r["name"]: r for r in bench.summary_rows(results)}
    assert rows["1 stack, children exist, p50"]["met"] is True  # 1.1x <= 1.2x
    assert rows["100 stacks, all Ready"]["met"] is True  # 1.2x <= 1.5x
    assert rows["1000 stacks, all Ready"]["met"] is False  # 200 s > 180 s
    assert rows["1000 stacks, operator peak RSS"]["met"] is False
    assert rows["100 stacks, writes in 120s idle"]["met"] is True
    (resync,) = [r for name, r in rows.items() if name.startswith("100 stacks, API reads")]
    assert "every 300 s" in resync["name"] and resync["operator"] == 0.0
    text = analysis.table(list(rows.values()))
    assert "1.10x" in text
    assert "NO" in text
    results["many"]["100"]["operator"]["ready"] = 40.0  # 1.6x the limit
    rows = {r["name"]: r for r in bench.summary_rows(results)}
    assert rows["100 stacks, all Ready"]["met"] is False


def test_readiness_predicates() -> None:
    deploy = {
        "metadata": {"generation": 2},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2},
    }
    assert bench.deployment_ready(deploy)
    assert not bench.deployment_ready(
        {**deploy, "status": {**deploy["status"], "readyReplicas": 1}}
    )
    assert not bench.deployment_ready({**deploy, "metadata": {"generation": 3}})
    stack = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert bench.stack_ready(stack)
    assert not bench.stack_ready({**stack, "metadata": {"generation": 2}})


def test_the_bench_stack_has_two_models_ray_mlflow_and_gateway() -> None:
    docs = bench.rendered(["s0001"], "bench")
    kinds = sorted(f"{m['kind']}/{m['metadata']['name']}" for m in docs)
    assert "Deployment/s0001-vllm-chat" in kinds
    assert "Deployment/s0001-vllm-phi" in kinds
    assert "Deployment/s0001-ray-head" in kinds
    assert "Deployment/s0001-mlflow" in kinds
    assert "Deployment/s0001-gateway" in kinds
    assert all(m["metadata"]["namespace"] == "bench" for m in docs)


def test_markdown_table_has_a_row_per_measurement() -> None:
    rows = [
        {"name": "a", "operator": 2.0, "limit": 1.0, "goal": "<= 1.5x", "met": False},
        {"name": "b", "operator": 3.0, "unit": " MB"},
    ]
    text = analysis.markdown(rows).splitlines()
    assert text[0].startswith("| measurement | operator | limit")
    assert text[2] == "| a | 2.00s | 1.00s | 2.00x | <= 1.5x | NO |"
    assert text[3] == "| b | 3.00 MB | - | - | - | - |"
