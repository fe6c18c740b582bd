"""Status: conditions, phase, per-model status and Events from observed children."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aistack.api import AIStack
from aistack.components import RenderConfig
from aistack.render import render
from aistack.status import (
    Observed,
    compute_status,
    status_dict,
    transitions,
)
from aistack.verdicts import LicenseVerdict
from helpers import ROOT, all_permitted, example, stack_doc

GOLDEN = ROOT / "tests" / "golden" / "status"
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"
OK = LicenseVerdict(True, False, "LicenseAllowed", "Apache-2.0 is allowed", "Apache-2.0", "Catalog")
NC = LicenseVerdict(
    False, True, "LicenseDenied", "org/nc is under CC-BY-NC-4.0, which policy default denies",
    "CC-BY-NC-4.0", "Catalog",
)  # fmt: skip
WARNED = LicenseVerdict(
    True, True, "LicenseDenied", "org/nc is under CC-BY-NC-4.0 (Warn: deployed anyway)",
    "CC-BY-NC-4.0", "Catalog",
)  # fmt: skip


def _deployment_status(want: int, have: int) -> dict[str, Any]:
    return {"observedGeneration": 1, "replicas": want, "readyReplicas": have,
            "updatedReplicas": want}  # fmt: skip


def _lws_status(want: int, have: int) -> dict[str, Any]:
    # As LeaderWorkerSet v0.8.0 reports it: no observedGeneration; Available when every
    # group is ready on the current template, Progressing otherwise.
    condition = {"type": "Available" if have >= want else "Progressing", "status": "True"}
    return {"replicas": want, "readyReplicas": have, "updatedReplicas": want,
            "conditions": [condition]}  # fmt: skip


_REPORTED = {"Deployment": _deployment_status, "LeaderWorkerSet": _lws_status}


def _reported(s: AIStack, kind: str, ready: bool, overrides: dict[str, int]) -> dict[str, Any]:
    """Every workload of ``kind`` render makes for the stack, by name, as the API server
    would report it: ``overrides`` (name -> ready replicas, or groups), else all ready or
    none."""
    out = {}
    for m in render(s, all_permitted(s)):
        if m["kind"] != kind:
            continue
        name = m["metadata"]["name"]
        want = m["spec"]["replicas"]
        have = overrides.get(name, want if ready else 0)
        m = dict(m, metadata=dict(m["metadata"], generation=1))
        m["status"] = _REPORTED[kind](want, have)
        out[name] = m
    return out


def deployments_for(s: AIStack, ready: bool = True, **overrides: int) -> dict[str, Any]:
    """Every Deployment render makes for the stack, as the API server would report them."""
    return _reported(s, "Deployment", ready, overrides)


def lws_for(s: AIStack, ready: bool = True, **overrides: int) -> dict[str, Any]:
    """Every LeaderWorkerSet render makes for the stack, as the API server reports them:
    ``overrides`` by name, the groups that are ready."""
    return _reported(s, "LeaderWorkerSet", ready, overrides)


def unschedulable_pod(model: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"demo-vllm-{model}-abc",
            "labels": {
                "aistack.dev/stack": "demo",
                "app.kubernetes.io/component": "model-server",
                "aistack.dev/model": model,
            },
        },
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ],
        },
    }


def make(**spec: Any) -> AIStack:
    doc = stack_doc(**spec)
    doc["metadata"].update(generation=3, uid="u")
    return AIStack.model_validate(doc)


def conditions(status: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_everything_ready() -> None:
    s = make()
    st = compute_status(s, {"m": OK}, Observed(deployments_for(s)), now=T0)
    assert st.phase == "Ready"
    assert st.observed_generation == 3
    assert st.models_ready == "1/1"
    # Every condition True but Monitoring: monitors are not detected in a pure render,
    # and that never makes a stack less Ready.
    assert all(c.status == "True" for c in st.conditions if c.type != "Monitoring")
    assert [c.type for c in st.conditions] == [
        "Ready", "LicenseCompliant", "ModelsReady", "RayReady", "TrackingReady", "GatewayReady",
        "Monitoring",
    ]  # fmt: skip
    assert st.conditions[-1].reason == "NotDetected"
    assert all(c.observed_generation == 3 and c.last_transition_time == T0 for c in st.conditions)
    model = st.models[0]
    assert (model.permitted, model.ready_replicas, model.replicas) == (True, 1, 1)
    assert model.license == "Apache-2.0" and model.license_source == "Catalog"
    assert model.endpoint == "http://demo-vllm-m.ml.svc.cluster.local:8000/v1"
    assert (
        st.endpoints is not None
        and st.endpoints.gateway == "http://demo-gateway.ml.svc.cluster.local:4000/v1"
    )
    tracking = next(c for c in st.conditions if c.type == "TrackingReady")
    assert "demo-mlflow-data is kept when the stack is deleted" in tracking.message


def test_nothing_created_yet_is_pending() -> None:
    st = compute_status(make(), {"m": OK}, Observed({}), now=T0)
    assert st.phase == "Pending"
    assert conditions(st)["ModelsReady"] == ("False", "Creating")


def test_starting_is_progressing() -> None:
    s = make()
    st = compute_status(s, {"m": OK}, Observed(deployments_for(s, ready=False)), now=T0)
    assert st.phase == "Progressing"
    assert conditions(st)["Ready"][0] == "False"
    assert st.models[0].reason == "Starting"


def test_unschedulable_gpu_pods_are_named_with_the_schedulers_message() -> None:
    s = make(models=[{"name": "big", "source": "o/big", "gpus": 8, "replicas": 3}])
    msg = "0/3 nodes are available: 2 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint."
    observed = Observed(
        deployments_for(s, **{"demo-vllm-big": 2}), pods=[unschedulable_pod("big", msg)]
    )
    st = compute_status(s, {"big": OK}, observed, now=T0)
    assert st.phase == "Degraded"
    assert conditions(st)["ModelsReady"] == ("False", "Unschedulable")
    assert conditions(st)["Ready"] == ("False", "Unschedulable")
    assert st.models[0].reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in (st.models[0].message or "")
    assert st.models[0].ready_replicas == 2


def test_a_denied_model_blocks_alone_and_degrades_the_stack() -> None:
    s = make(models=[{"name": "ok", "source": "o/ok"}, {"name": "nc", "source": "org/nc"}])
    deployments = {k: v for k, v in deployments_for(s).items() if "vllm-nc" not in k}
    st = compute_status(s, {"ok": OK, "nc": NC}, Observed(deployments), now=T0)
    assert st.phase == "Degraded"
    assert conditions(st)["LicenseCompliant"] == ("False", "LicenseDenied")
    assert conditions(st)["ModelsReady"] == ("True", "Ready")
    assert conditions(st)["Ready"] == ("False", "LicenseDenied")
    nc = next(m for m in st.models if m.name == "nc")
    assert (nc.permitted, nc.reason, nc.endpoint) == (False, "LicenseDenied", None)
    assert st.models_ready == "1/2"


def test_all_models_denied_is_blocked() -> None:
    s = make(models=[{"name": "nc", "source": "org/nc"}])
    deployments = {k: v for k, v in deployments_for(s).items() if "vllm" not in k}
    st = compute_status(s, {"nc": NC}, Observed(deployments), now=T0)
    assert st.phase == "Blocked"
    assert conditions(st)["ModelsReady"] == ("False", "AllModelsBlocked")


def test_a_warned_violation_is_reported_but_does_not_make_the_stack_unready() -> None:
    s = make(models=[{"name": "nc", "source": "org/nc"}])
    st = compute_status(s, {"nc": WARNED}, Observed(deployments_for(s)), now=T0)
    assert conditions(st)["LicenseCompliant"] == ("False", "LicenseDenied")
    assert conditions(st)["Ready"] == ("True", "Ready")
    assert st.phase == "Ready"


def test_a_model_without_a_verdict_is_not_served() -> None:
    s = make()
    st = compute_status(s, {}, Observed(deployments_for(s)), now=T0)
    assert st.models[0].permitted is False
    assert st.models[0].reason == "LicenseNotChecked"


def test_stuck_containers_and_deadlines_degrade() -> None:
    s = make()
    pod = unschedulable_pod("m", "")
    pod["status"] = {"containerStatuses": [{"name": "vllm", "state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "hf" not found'}}}]}  # fmt: skip
    st = compute_status(
        s, {"m": OK}, Observed(deployments_for(s, **{"demo-vllm-m": 0}), [pod]), now=T0
    )
    assert st.models[0].reason == "CreateContainerConfigError"
    assert 'secret "hf" not found' in (st.models[0].message or "")
    assert st.phase == "Degraded"

    deployments = deployments_for(s, **{"demo-mlflow": 0})
    deployments["demo-mlflow"]["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": 'ReplicaSet "demo-mlflow-1" has timed out progressing.'}
    ]  # fmt: skip
    st = compute_status(s, {"m": OK}, Observed(deployments), now=T0)
    assert conditions(st)["TrackingReady"] == ("False", "ProgressDeadlineExceeded")
    assert st.phase == "Degraded"


def test_a_server_failing_readiness_after_starting_degrades_a_starting_one_does_not() -> None:
    s = make()
    pod = unschedulable_pod("m", "")
    running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    pod["status"] = {"containerStatuses": [
        {"name": "vllm", "state": running, "started": False, "ready": False}]}  # fmt: skip
    observed = Observed(deployments_for(s, **{"demo-vllm-m": 0}), [pod])
    st = compute_status(s, {"m": OK}, observed, now=T0)
    assert (st.models[0].reason, st.phase) == ("Starting", "Progressing")

    pod["status"]["containerStatuses"][0]["started"] = True
    st = compute_status(s, {"m": OK}, observed, now=T0)
    assert st.models[0].reason == "NotReady"
    assert "failing its readiness probe" in (st.models[0].message or "")
    assert st.phase == "Degraded"
    assert conditions(st)["ModelsReady"] == ("False", "NotReady")


def test_a_rollout_not_yet_observed_is_not_ready() -> None:
    s = make()
    deployments = deployments_for(s)
    deployments["demo-gateway"]["metadata"]["generation"] = 2
    st = compute_status(s, {"m": OK}, Observed(deployments), now=T0)
    assert conditions(st)["GatewayReady"] == ("False", "Starting")


def test_multi_node_model_serves_only_when_whole_groups_are_ready() -> None:
    s = make(models=[{"name": "huge", "source": "o/h", "gpus": 8, "nodes": 2, "replicas": 2}])
    lws = "demo-vllm-huge-lws"
    observed = Observed(deployments_for(s), leaderworkersets=lws_for(s, **{lws: 1}))
    st = compute_status(s, {"huge": OK}, observed, now=T0)
    assert st.models[0].ready_replicas == 1
    assert st.models[0].reason == "Starting"
    assert st.models[0].message == f"1/2 groups ready ({lws})"
    observed = Observed(deployments_for(s), leaderworkersets=lws_for(s))
    st = compute_status(s, {"huge": OK}, observed, now=T0)
    assert st.models[0].ready_replicas == 2 and st.models[0].reason == "Ready"
    assert st.models[0].message == "2/2 groups ready"
    # Not made yet.
    st = compute_status(s, {"huge": OK}, Observed(deployments_for(s)), now=T0)
    assert (st.models[0].ready_replicas, st.models[0].reason) == (0, "Creating")


def test_a_rolling_leaderworkerset_says_so() -> None:
    s = make(models=[{"name": "huge", "source": "o/h", "nodes": 2, "replicas": 2}])
    lws = lws_for(s)
    obj = lws["demo-vllm-huge-lws"]
    obj["status"] |= {"updatedReplicas": 1, "readyReplicas": 1, "conditions": [
        {"type": "UpdateInProgress", "status": "True"}, {"type": "Progressing", "status": "True"}
    ]}  # fmt: skip
    st = compute_status(s, {"huge": OK}, Observed(deployments_for(s), leaderworkersets=lws), now=T0)
    assert (st.models[0].reason, st.models[0].ready_replicas) == ("Updating", 1)
    assert conditions(st)["ModelsReady"] == ("False", "Updating")


def test_without_leaderworkersets_a_multi_node_model_says_what_to_install() -> None:
    s = make(models=[{"name": "one", "source": "o/one"},
                     {"name": "huge", "source": "o/h", "nodes": 2}])  # fmt: skip
    verdicts = {"one": OK, "huge": OK}
    config = RenderConfig(leaderworkersets=False)
    st = compute_status(s, verdicts, Observed(deployments_for(s)), now=T0, config=config)
    one, huge = st.models
    assert (one.reason, one.ready_replicas) == ("Ready", 1), "single-node models are unaffected"
    assert (huge.reason, huge.ready_replicas) == ("LeaderWorkerSetMissing", 0)
    assert "leaderworkersets.leaderworkerset.x-k8s.io" in (huge.message or "")
    install = "kubectl apply --server-side -f https://github.com/kubernetes-sigs/lws"
    assert install in (huge.message or "")
    assert conditions(st)["ModelsReady"] == ("False", "LeaderWorkerSetMissing")
    assert st.phase == "Degraded"
    config = RenderConfig(manage_leaderworkersets=False)
    st = compute_status(s, verdicts, Observed(deployments_for(s)), now=T0, config=config)
    assert "--no-leaderworkersets" in (st.models[1].message or "")


def test_during_the_move_to_leaderworkerset_the_old_groups_still_count() -> None:
    # A stack made before LeaderWorkerSet: its groups' Deployments serve until the
    # LeaderWorkerSet's groups are all ready (aistack.migration keeps them until then).
    s = make(models=[{"name": "huge", "source": "o/h", "nodes": 2, "replicas": 2}])
    old = {}
    for g in range(2):
        for role in ("leader", "worker"):
            name = f"demo-vllm-huge-g{g}-{role}"
            old[name] = {"metadata": {"name": name, "generation": 1}, "spec": {"replicas": 1},
                         "status": {"observedGeneration": 1, "readyReplicas": 1,
                                    "updatedReplicas": 1}}  # fmt: skip
    lws = lws_for(s, ready=False)
    st = compute_status(s, {"huge": OK}, Observed(old, leaderworkersets=lws), now=T0)
    (huge,) = st.models
    assert huge.ready_replicas == 2
    assert huge.reason == "Starting"
    assert "2 group(s) of the Deployments from before LeaderWorkerSet serve" in (huge.message or "")


def test_disabled_parts_are_ready_by_definition() -> None:
    s = make(ray={"enabled": False}, mlflow={"enabled": False}, gateway={"enabled": False})
    st = compute_status(s, {"m": OK}, Observed(deployments_for(s)), now=T0)
    assert conditions(st)["RayReady"] == ("True", "Disabled")
    assert st.phase == "Ready"
    assert st.endpoints is None


def test_last_transition_time_moves_only_on_a_real_transition() -> None:
    s = make()
    first = compute_status(s, {"m": OK}, Observed(deployments_for(s, ready=False)), now=T0)
    doc = s.model_dump(by_alias=True)
    doc["status"] = status_dict(first)
    again = AIStack.model_validate(doc)
    same = compute_status(again, {"m": OK}, Observed(deployments_for(s, ready=False)), now=T1)
    assert status_dict(same) == status_dict(first)
    ready = compute_status(again, {"m": OK}, Observed(deployments_for(s)), now=T1)
    times = {c.type: c.last_transition_time for c in ready.conditions}
    assert times["ModelsReady"] == T1 and times["Ready"] == T1
    assert times["LicenseCompliant"] == T0 and times["RayReady"] == T1


def test_transitions_post_events_only_for_changes() -> None:
    s = make(models=[{"name": "ok", "source": "o/ok"}, {"name": "nc", "source": "org/nc"}])
    verdicts = {"ok": OK, "nc": NC}
    starting = compute_status(s, verdicts, Observed(deployments_for(s, ready=False)), now=T0)
    ready = compute_status(s, verdicts, Observed(deployments_for(s)), now=T1)
    first = transitions(None, starting)
    assert [(e.type, e.reason) for e in first] == [
        ("Warning", "ModelBlocked"),
        ("Warning", "Degraded"),
    ]
    then = transitions(starting, ready)
    assert ("Normal", "ModelReady") in [(e.type, e.reason) for e in then]
    assert ("Warning", "ModelBlocked") not in [(e.type, e.reason) for e in then]
    assert transitions(ready, ready) == []


@pytest.mark.parametrize("scenario", ["ready", "unschedulable"])
def test_status_golden(scenario: str, update_goldens: bool) -> None:
    s = example(ROOT / "examples" / "multi-model.yaml")
    verdicts = {m.name: OK for m in s.spec.models}
    if scenario == "ready":
        observed = Observed(deployments_for(s), leaderworkersets=lws_for(s))
    else:
        msg = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        pod = unschedulable_pod("chat", msg)
        pod["metadata"]["labels"]["aistack.dev/stack"] = "multi"
        observed = Observed(
            deployments_for(s, **{"multi-vllm-chat": 1}), [pod], leaderworkersets=lws_for(s)
        )
    text = json.dumps(status_dict(compute_status(s, verdicts, observed, now=T0)), indent=2) + "\n"
    golden = GOLDEN / f"{scenario}.json"
    if update_goldens:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def test_a_leaderworkerset_is_ready_only_when_it_says_available() -> None:
    # Its status has no observedGeneration: counts that still describe the last template
    # are not enough; LeaderWorkerSet's Available condition says all groups run this one.
    s = make(models=[{"name": "huge", "source": "o/h", "nodes": 2, "replicas": 2}])
    lws = lws_for(s)
    lws["demo-vllm-huge-lws"]["status"]["conditions"] = [{"type": "Progressing", "status": "True"}]
    st = compute_status(s, {"huge": OK}, Observed(deployments_for(s), leaderworkersets=lws), now=T0)
    assert st.models[0].reason == "Starting"
