"""Autoscaling: the API's rules, the ScaledObjects and what they change in the models'
Deployments, the hand-over of the replica count to the scaler, and the status."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from aistack import names
from aistack.api import AIStack, rules
from aistack.api.v1alpha1 import AUTOSCALING_METRICS
from aistack.components import KEDA_CRD, RenderConfig, autoscaling
from aistack.controller import Reconciler, StackView
from aistack.plan import make_plan, with_owner
from aistack.render import render
from aistack.render.autoscaling import prometheus_label
from aistack.status import AUTOSCALING, Observed, compute_status
from helpers import ROOT, all_permitted, by_name, stack, stack_doc, validate_manifest
from test_controller import FakeKube, permit_all

T0 = "2026-01-01T00:00:00Z"
PROM = "http://prometheus.monitoring.svc:9090"
#: A cluster with KEDA and the Prometheus Operator, and a Prometheus the operator knows.
ON = RenderConfig(keda=True, monitoring_crds=True, prometheus_address=PROM)
SCALED = {"minReplicas": 1, "maxReplicas": 4}


def scaled_stack(**spec: Any) -> AIStack:
    spec.setdefault(
        "models",
        [
            {"name": "chat", "source": "org/chat", "replicas": 2, "autoscaling": SCALED},
            {"name": "fixed", "source": "org/fixed", "replicas": 3},
        ],
    )
    return stack(**spec)


def objects(s: AIStack, config: RenderConfig = ON, **permitted: bool) -> dict[str, Any]:
    p = all_permitted(s) | permitted
    return {f"{m['kind']}/{m['metadata']['name']}": m for m in render(s, p, config)}


# ---------------------------------------------------------------- API


def test_the_range_is_checked_and_min_defaults_to_one() -> None:
    with pytest.raises(ValidationError, match=rules.AUTOSCALING_RANGE):
        scaled_stack(models=[{"name": "m", "source": "o/m", "autoscaling": {
            "minReplicas": 5, "maxReplicas": 4}}])  # fmt: skip
    s = scaled_stack()
    scaling = s.spec.autoscaling_of(s.spec.models[0])
    assert scaling is not None and scaling.min_replicas == 1 and scaling.max_replicas == 4


def test_each_signal_reads_a_vllm_gauge_with_its_default_target() -> None:
    for metric, (series, default) in AUTOSCALING_METRICS.items():
        s = scaled_stack(models=[{"name": "m", "source": "o/m", "autoscaling": {
            "maxReplicas": 2, "metric": metric}}])  # fmt: skip
        scaling = s.spec.autoscaling_of(s.spec.models[0])
        assert scaling is not None
        assert (scaling.series, scaling.per_replica) == (series, default)
        assert series.startswith("vllm:")


def test_the_stack_default_applies_to_models_on_one_node_without_their_own() -> None:
    s = stack(
        vllm={"autoscaling": {"maxReplicas": 3}},
        models=[
            {"name": "a", "source": "o/a"},
            {"name": "b", "source": "o/b", "autoscaling": {"maxReplicas": 9}},
            {"name": "big", "source": "o/big", "nodes": 2},
        ],
    )
    a, b, big = s.spec.models
    assert s.spec.autoscaling_of(a) == s.spec.vllm.autoscaling
    assert (s.spec.autoscaling_of(b) or SCALED).max_replicas == 9  # type: ignore[union-attr]
    assert s.spec.autoscaling_of(big) is None  # groups of nodes keep their replicas


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ({"models": [{"name": "m", "source": "o/m", "nodes": 2, "autoscaling": SCALED}]},
         rules.AUTOSCALING_MULTINODE),
        ({"models": [{"name": "m", "source": "o/m", "autoscaling": SCALED}],
          "monitoring": {"enabled": False}}, rules.AUTOSCALING_METRICS),
        ({"vllm": {"autoscaling": SCALED}, "monitoring": {"enabled": False}},
         rules.AUTOSCALING_METRICS),
    ],
)  # fmt: skip
def test_combinations_that_cannot_scale_are_refused(spec: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValidationError, match=rule.split(":")[0]):
        stack(**spec)


def test_aistack_render_refuses_them_with_exit_2_naming_the_field(tmp_path: Any) -> None:
    doc = stack_doc(models=[{"name": "m", "source": "o/m", "autoscaling": {"maxReplicas": 0}}])
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(doc))
    run = subprocess.run(
        [sys.executable, "-m", "aistack.cli", "render", "-f", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "spec.models[0].autoscaling.maxReplicas" in run.stderr
    assert "Traceback" not in run.stderr


# ---------------------------------------------------------------- render


def test_a_scaled_model_gets_a_scaledobject_and_its_deployment_no_replicas() -> None:
    s = scaled_stack()
    objs = objects(s)
    chat, fixed = "demo-vllm-chat", "demo-vllm-fixed"
    so = objs[f"ScaledObject/{chat}"]
    validate_manifest(so)  # KEDA's own CRD (tests/schemas)
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": chat}  # fmt: skip
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 4)
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["serverAddress"] == PROM
    assert trigger["metadata"]["threshold"] == "5"
    delay = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert delay["stabilizationWindowSeconds"] == so["spec"]["cooldownPeriod"] == 300
    deployment = objs[f"Deployment/{chat}"]
    assert "replicas" not in deployment["spec"]
    assert deployment["metadata"]["annotations"][names.STARTING_REPLICAS_ANNOTATION] == "2"
    # A fixed model is as before; it gets no scaler.
    assert objs[f"Deployment/{fixed}"]["spec"]["replicas"] == 3
    assert f"ScaledObject/{fixed}" not in objs
    assert names.STARTING_REPLICAS_ANNOTATION not in objs[f"Deployment/{fixed}"]["metadata"].get(
        "annotations", {}
    )
    # A budget for the scaled model: it may run more than one replica.
    assert f"PodDisruptionBudget/{chat}" in objs


def test_the_query_sums_the_models_series_as_its_podmonitor_labels_them() -> None:
    s = scaled_stack()
    objs = objects(s)
    query = objs["ScaledObject/demo-vllm-chat"]["spec"]["triggers"][0]["metadata"]["query"]
    # The PodMonitor copies the stack's pod label onto the target, with '.' and '/' as '_'.
    monitor = objs["PodMonitor/demo-model-server"]
    assert monitor["spec"]["podTargetLabels"] == [names.STACK_LABEL]
    assert prometheus_label(names.STACK_LABEL) == "aistack_dev_stack"
    assert query == (
        'sum(vllm:num_requests_waiting{namespace="ml",aistack_dev_stack="demo",model_name="chat"})'
    )


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (RenderConfig(keda=False, monitoring_crds=True, prometheus_address=PROM), "KEDAMissing"),
        (RenderConfig(manage_keda=False, monitoring_crds=True, prometheus_address=PROM),
         "TurnedOff"),
        (RenderConfig(keda=True, monitoring_crds=True), "NoPrometheus"),
        (RenderConfig(keda=True, monitoring_crds=False, prometheus_address=PROM), "NoMetrics"),
    ],
)  # fmt: skip
def test_without_what_it_needs_a_model_runs_at_its_replicas(
    config: RenderConfig, reason: str
) -> None:
    s = scaled_stack()
    objs = objects(s, config)
    assert not [k for k in objs if k.startswith("ScaledObject/")]
    assert objs["Deployment/demo-vllm-chat"]["spec"]["replicas"] == 2
    state = autoscaling(s, config)
    assert (state.scaled, state.reason) == (False, reason)
    if reason == "KEDAMissing":
        assert KEDA_CRD in state.message and "kubectl apply" in state.message


def test_a_stack_address_wins_over_the_operators() -> None:
    s = scaled_stack(monitoring={"prometheusAddress": "http://mine:9090"})
    so = objects(s)["ScaledObject/demo-vllm-chat"]
    assert so["spec"]["triggers"][0]["metadata"]["serverAddress"] == "http://mine:9090"


def test_a_model_that_may_not_run_gets_no_scaler_and_stays_at_zero() -> None:
    s = scaled_stack()
    objs = objects(s, chat=False)
    assert "ScaledObject/demo-vllm-chat" not in objs
    deployment = objs["Deployment/demo-vllm-chat"]
    assert deployment["spec"]["replicas"] == 0
    assert names.STARTING_REPLICAS_ANNOTATION not in deployment["metadata"].get("annotations", {})
    # Nor when the image it runs is not permitted.
    objs = objects(s, ON, **{names.image_key("vllm"): False})
    assert not [k for k in objs if k.startswith("ScaledObject/")]
    assert objs["Deployment/demo-vllm-chat"]["spec"]["replicas"] == 0


def render_kinds(example: str, *flags: str) -> list[str]:
    """The kinds ``aistack render -f examples/EXAMPLE FLAGS...`` prints."""
    run = subprocess.run(
        [sys.executable, "-m", "aistack.cli", "render", "-f", str(ROOT / "examples" / example),
         *flags],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [d["kind"] for d in yaml.safe_load_all(run.stdout) if d]


def test_aistack_render_shows_the_scalers_of_a_stack_that_names_its_prometheus(
    tmp_path: Path,
) -> None:
    assert render_kinds("autoscaling.yaml").count("ScaledObject") == 2
    assert "ScaledObject" not in render_kinds("quickstart.yaml")
    # A stack that names none: only with the operator's address, as `aistack run` has it.
    no_address = yaml.safe_load((ROOT / "examples/autoscaling.yaml").read_text())
    del no_address["spec"]["monitoring"]["prometheusAddress"]
    path = tmp_path / "autoscaling-no-address.yaml"
    path.write_text(yaml.safe_dump(no_address))
    assert "ScaledObject" not in render_kinds(str(path))
    kinds = render_kinds(str(path), "--prometheus-address", "http://prom:9090")
    assert kinds.count("ScaledObject") == 2


# ---------------------------------------------------------------- plan


def deployment(replicas: int | None, **annotations: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"matchLabels": {"a": "b"}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ml", "annotations": dict(annotations)},
        "spec": spec,
    }


STARTING = names.STARTING_REPLICAS_ANNOTATION
KEY = ("Deployment", "ml", "d")


def test_the_scaler_takes_over_the_replicas_once() -> None:
    want = deployment(None, **{STARTING: "2"})
    # New: created, then started at the starting size.
    assert make_plan([want], [], "uid").start == {KEY: 2}
    # Running at a fixed size: keeps its current replicas, handed over before the apply.
    plan = make_plan([want], [deployment(5)], "uid")
    assert plan.start == {KEY: 5} and plan.apply == [want]
    # The scaler's already: nothing, and whatever it chose is no drift.
    have = deployment(7, **{STARTING: "2"})
    assert make_plan([want], [have], "uid").empty
    # Stopped by the license gate: starts again at the starting size, not at zero.
    stopped = deployment(0, **{names.LICENSE_BLOCKED_ANNOTATION: "true"})
    assert make_plan([want], [stopped], "uid").start == {KEY: 2}
    # A fixed workload is never handed over.
    assert make_plan([deployment(3)], [deployment(1)], "uid").start == {}


def test_a_scaler_no_longer_wanted_is_deleted_before_anything_is_written() -> None:
    owner = {"apiVersion": "aistack.dev/v1alpha1", "kind": "AIStack",
             "metadata": {"name": "demo", "uid": "uid"}}  # fmt: skip
    so = with_owner({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                     "metadata": {"name": "d", "namespace": "ml"}, "spec": {}}, owner)  # fmt: skip
    plan = make_plan([deployment(0)], [so, deployment(None)], "uid")
    assert plan.stop == [("ScaledObject", "ml", "d")] and plan.delete == []


# ---------------------------------------------------------------- controller


def reconcile_twice(kube: FakeKube, rec: Reconciler, doc: dict[str, Any]) -> None:
    for _ in range(2):
        current = dict(doc, status=copy.deepcopy(kube.status or {}))
        rec.reconcile_once(("ml", "demo"), StackView(
            stack=current, children=[copy.deepcopy(o) for o in kube.objects.values()]))  # fmt: skip


def body(**spec: Any) -> dict[str, Any]:
    doc = stack_doc(**spec)
    doc["metadata"].update(uid="uid-1", generation=1, resourceVersion="1")
    return doc


def test_the_operator_starts_a_new_model_at_its_size_and_never_writes_its_replicas_again() -> None:
    kube = FakeKube()
    rec = Reconciler(kube=kube, licensing=permit_all, config=ON, clock=lambda: T0)  # type: ignore[arg-type]
    models = [{"name": "chat", "source": "org/chat", "replicas": 2, "autoscaling": SCALED}]
    doc = body(models=models)
    reconcile_twice(kube, rec, doc)
    d = ("Deployment", "ml", "demo-vllm-chat")
    applied = [c for c in kube.calls if c[0] in ("apply", "start") and c[1] in (d, (d, 2))]
    assert applied == [("apply", d), ("start", (d, 2))]
    assert ("ScaledObject", "ml", "demo-vllm-chat") in kube.objects
    # KEDA scales it to 4: the next reconciles write nothing to it.
    kube.objects[d]["spec"]["replicas"] = 4
    kube.calls.clear()
    reconcile_twice(kube, rec, doc)
    assert not [c for c in kube.writes() if c[0] != "status"]
    assert kube.objects[d]["spec"]["replicas"] == 4


def test_turning_autoscaling_on_hands_over_the_current_size_first() -> None:
    kube = FakeKube()
    rec = Reconciler(kube=kube, licensing=permit_all, config=ON, clock=lambda: T0)  # type: ignore[arg-type]
    fixed = [{"name": "chat", "source": "org/chat", "replicas": 3}]
    reconcile_twice(kube, rec, body(models=fixed))
    kube.calls.clear()
    scaled = [dict(fixed[0], autoscaling=SCALED)]
    reconcile_twice(kube, rec, body(models=scaled))
    d = ("Deployment", "ml", "demo-vllm-chat")
    order = [c for c in kube.calls if c[0] in ("apply", "start") and c[1] in (d, (d, 3))]
    assert order == [("start", (d, 3)), ("apply", d)]


def test_a_model_the_policy_stops_loses_its_scaler_before_it_is_scaled_down() -> None:
    kube = FakeKube()
    verdict: dict[str, bool] = {"chat": True}

    def licensing(s: AIStack, policies: list[Any]) -> Any:
        out = permit_all(s, policies)
        out["chat"] = out["chat"].__class__(verdict["chat"], not verdict["chat"],
                                             "LicenseDenied" if not verdict["chat"] else "ok",
                                             "m", "MIT", "Catalog")  # fmt: skip
        return out

    rec = Reconciler(kube=kube, licensing=licensing, config=ON, clock=lambda: T0)  # type: ignore[arg-type]
    doc = body(models=[{"name": "chat", "source": "org/chat", "autoscaling": SCALED}])
    reconcile_twice(kube, rec, doc)
    kube.calls.clear()
    verdict["chat"] = False
    reconcile_twice(kube, rec, doc)
    so, d = ("ScaledObject", "ml", "demo-vllm-chat"), ("Deployment", "ml", "demo-vllm-chat")
    writes = [c for c in kube.writes() if c[1] in (so, d)]
    assert writes[:2] == [("delete", so), ("apply", d)]
    assert kube.objects[d]["spec"]["replicas"] == 0 and so not in kube.objects


# ---------------------------------------------------------------- status


def status_of(s: AIStack, deployments: dict[str, Any], config: RenderConfig = ON) -> Any:
    verdicts = permit_all(s, [])
    return compute_status(s, verdicts, Observed(deployments=deployments), now=T0, config=config)


def test_the_status_reports_what_the_scaler_chose_and_the_condition_why() -> None:
    s = scaled_stack()
    d = {"metadata": {"generation": 1, "annotations": {STARTING: "2"}},
         "spec": {"replicas": 4},
         "status": {"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 4}}  # fmt: skip
    st = status_of(s, {"demo-vllm-chat": d})
    chat = st.models[0]
    assert (chat.replicas, chat.ready_replicas) == (4, 3)
    cond = {c.type: c for c in st.conditions}[AUTOSCALING]
    assert cond.status == "True" and cond.reason == "Scaling"
    assert "chat 1..4 on RequestsWaiting (target 5)" in cond.message
    missing = status_of(s, {"demo-vllm-chat": d}, RenderConfig(keda=False, monitoring_crds=True))
    cond = {c.type: c for c in missing.conditions}[AUTOSCALING]
    assert cond.status == "False" and cond.reason == "KEDAMissing"
    # Never part of Ready: both say the same of it.
    ready = [next(c for c in x.conditions if c.type == "Ready") for x in (st, missing)]
    assert ready[0].reason == ready[1].reason


def test_a_stack_without_autoscaled_models_has_no_autoscaling_condition() -> None:
    st = status_of(stack(), {})
    assert AUTOSCALING not in {c.type for c in st.conditions}


def test_every_rendered_scaledobject_names_an_existing_deployment() -> None:
    s = scaled_stack()
    objs = render(s, all_permitted(s), ON)
    deployments = by_name(objs, "Deployment")
    for so in by_name(objs, "ScaledObject").values():
        assert so["spec"]["scaleTargetRef"]["name"] in deployments


# ---------------------------------------------------------------- scale to zero

SLEEPS = {"minReplicas": 0, "maxReplicas": 4, "wakeTimeoutSeconds": 120}


def sleepy_stack(**spec: Any) -> AIStack:
    spec.setdefault(
        "models",
        [
            {"name": "chat", "source": "org/chat", "autoscaling": SLEEPS,
             "adapters": [{"name": "sql", "source": "org/sql-lora"}]},
            {"name": "always", "source": "org/always", "autoscaling": SCALED},
        ],
    )  # fmt: skip
    return stack(**spec)


def test_a_model_that_may_sleep_is_woken_by_its_activity_and_kept_up_at_first() -> None:
    s = sleepy_stack()
    objs = objects(s)
    so = objs["ScaledObject/demo-vllm-chat"]
    validate_manifest(so)
    assert so["spec"]["minReplicaCount"] == 0
    assert so["spec"]["initialCooldownPeriod"] == so["spec"]["cooldownPeriod"] == 300
    load, activity = so["spec"]["triggers"]
    assert load["name"] == "requestswaiting" and "activationThreshold" not in load["metadata"]
    assert activity["name"] == "activity"
    assert activity["metadata"]["activationThreshold"] == "0"
    # Only whether it is awake: its target is beyond any count.
    assert float(activity["metadata"]["threshold"]) >= 1_000_000
    query = activity["metadata"]["query"]
    for series in ("aistack_gateway_held_requests{", "vllm:num_requests_running{",
                   "vllm:num_requests_waiting{"):  # fmt: skip
        assert series in query
    assert query.count("or vector(0)") == 3
    # A model that may not sleep has no activity trigger.
    always = objs["ScaledObject/demo-vllm-always"]
    assert [t["name"] for t in always["spec"]["triggers"]] == ["requestswaiting"]
    assert "initialCooldownPeriod" not in always["spec"]


def test_the_gateway_holds_the_sleeping_models_routes_and_rolls_when_they_change() -> None:
    s = sleepy_stack()
    objs = objects(s)
    cm = objs["ConfigMap/demo-gateway-config"]
    assert json.loads(cm["data"]["hold.json"]) == {
        "chat": {"model": "chat", "wait": 120},
        "sql": {"model": "chat", "wait": 120},  # an adapter wakes its model
    }
    assert "class HoldWhileAsleep" in cm["data"]["aistack_hold.py"]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["litellm_settings"]["callbacks"][0] == "aistack_hold.proxy_handler_instance"
    checksum = names.CONFIG_CHECKSUM_ANNOTATION

    def rolled(st: AIStack) -> str:
        d = objects(st)["Deployment/demo-gateway"]
        return str(d["spec"]["template"]["metadata"]["annotations"][checksum])

    longer = sleepy_stack(models=[
        {"name": "chat", "source": "org/chat", "autoscaling": dict(SLEEPS, wakeTimeoutSeconds=300),
         "adapters": [{"name": "sql", "source": "org/sql-lora"}]},
        {"name": "always", "source": "org/always", "autoscaling": SCALED},
    ])  # fmt: skip
    assert rolled(longer) != rolled(s)


def test_nothing_is_held_where_nothing_sleeps_or_nothing_scales() -> None:
    for s, config in ((scaled_stack(), ON),
                      (sleepy_stack(), RenderConfig(keda=False, monitoring_crds=True,
                                                    prometheus_address=PROM))):  # fmt: skip
        cm = objects(s, config)["ConfigMap/demo-gateway-config"]
        assert set(cm["data"]) == {"config.yaml"}
        config_yaml = yaml.safe_load(cm["data"]["config.yaml"])
        assert not [c for c in config_yaml["litellm_settings"]["callbacks"] if "hold" in c]


@pytest.mark.parametrize(
    "gateway", [{"enabled": False}, {"authSecretRef": {"name": "gw", "key": "k"}}]
)
def test_sleeping_needs_a_gateway_that_prometheus_scrapes(gateway: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="may sleep"):
        sleepy_stack(gateway=gateway)
    with pytest.raises(ValidationError, match="may sleep"):
        stack(vllm={"autoscaling": SLEEPS}, gateway=gateway)
    stack(vllm={"autoscaling": SCALED}, gateway=gateway)  # never asleep: fine


def test_an_asleep_model_is_idle_and_the_stack_stays_ready() -> None:
    s = sleepy_stack(models=[{"name": "chat", "source": "org/chat", "autoscaling": SLEEPS}])
    asleep = {"metadata": {"generation": 2, "annotations": {STARTING: "1"}},
              "spec": {"replicas": 0},
              "status": {"observedGeneration": 2}}  # fmt: skip
    st = status_of(s, {"demo-vllm-chat": asleep})
    chat = st.models[0]
    assert (chat.reason, chat.replicas, chat.ready_replicas) == ("Idle", 0, 0)
    models_ready = {c.type: c for c in st.conditions}["ModelsReady"]
    assert models_ready.status == "True"
    # Without KEDA scaling it, the same Deployment at zero is just scaled to zero.
    fixed = status_of(s, {"demo-vllm-chat": asleep}, RenderConfig(keda=False))
    assert fixed.models[0].reason == "ScaledToZero"


def test_falling_asleep_and_waking_are_events_once_each() -> None:
    from aistack.status import transitions

    s = sleepy_stack(models=[{"name": "chat", "source": "org/chat", "autoscaling": SLEEPS}])

    def at(replicas: int) -> Any:
        d = {"metadata": {"generation": 1}, "spec": {"replicas": replicas},
             "status": {"observedGeneration": 1, "readyReplicas": replicas,
                        "updatedReplicas": replicas}}  # fmt: skip
        return status_of(s, {"demo-vllm-chat": d})

    awake, asleep = at(1), at(0)
    reasons = [e.reason for e in transitions(awake, asleep)]
    assert reasons.count("ModelAsleep") == 1
    assert "ModelAsleep" not in [e.reason for e in transitions(asleep, at(0))]
    assert "ModelReady" in [e.reason for e in transitions(asleep, awake)]
