"""Plan: what a reconcile applies and deletes, and when it does nothing."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from aistack import names
from aistack.plan import differences, key_of, make_plan, quantity, with_owner
from aistack.render import render
from helpers import stack

OWNER = {
    "apiVersion": "aistack.dev/v1alpha1",
    "kind": "AIStack",
    "metadata": {"name": "demo", "namespace": "ml", "uid": "uid-1"},
}


def desired() -> list[dict[str, Any]]:
    s = stack()
    return [with_owner(m, OWNER) for m in render(s, {"m": True})]


def as_server_returns(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the API server hands back: our fields, rewritten quantities, its own additions."""
    obj = copy.deepcopy(manifest)
    obj["metadata"].update(uid="x", resourceVersion="7", managedFields=[{"manager": "x"}])
    obj["metadata"].setdefault("labels", {})["team"] = "someone-else"
    obj["status"] = {"observedGeneration": 1}
    if obj["kind"] == "Deployment":
        obj["spec"].setdefault("progressDeadlineSeconds", 600)
        pod = obj["spec"].setdefault("template", {}).setdefault("spec", {})
        pod["dnsPolicy"] = "ClusterFirst"
        for c in pod.get("containers", []):
            c["terminationMessagePath"] = "/dev/termination-log"
            limits = c.get("resources", {}).get("limits", {})
            for k, v in limits.items():
                limits[k] = str(v)  # 1 -> "1"
    return obj


def test_nothing_observed_applies_everything_in_kind_order() -> None:
    plan = make_plan(desired(), [], "uid-1")
    assert len(plan.apply) == len(desired())
    kinds = [m["kind"] for m in plan.apply]
    assert kinds == sorted(
        kinds,
        key=["NetworkPolicy", "PersistentVolumeClaim", "ConfigMap", "Service", "Deployment"].index,
    )
    assert plan.delete == []


def test_a_converged_stack_needs_no_write() -> None:
    want = desired()
    plan = make_plan(want, [as_server_returns(m) for m in want], "uid-1")
    assert plan.empty, plan.reasons


def test_drift_in_a_field_we_set_is_corrected() -> None:
    want = desired()
    observed = [as_server_returns(m) for m in want]
    deploy = next(o for o in observed if o["metadata"]["name"] == "demo-vllm-m")
    deploy["spec"]["replicas"] = 0
    plan = make_plan(want, observed, "uid-1")
    assert [key_of(m) for m in plan.apply] == [("Deployment", "ml", "demo-vllm-m")]
    assert plan.reasons[("Deployment", "ml", "demo-vllm-m")] == [".spec.replicas"]


def test_a_removed_child_is_deleted_only_if_this_stack_owns_it() -> None:
    want = desired()
    observed = [as_server_returns(m) for m in want]
    old = {
        "kind": "Deployment",
        "metadata": {"name": "demo-vllm-old", "namespace": "ml"},
        "spec": {},
    }
    extra = as_server_returns(with_owner(old, OWNER))
    by_hand = {
        "kind": "Service",
        "metadata": {"name": "demo-by-hand", "namespace": "ml"},
        "spec": {},
    }
    foreign = as_server_returns(by_hand)
    plan = make_plan(want, [*observed, extra, foreign], "uid-1")
    assert plan.delete == [("Deployment", "ml", "demo-vllm-old")]
    assert plan.apply == []


def test_retained_pvc_has_no_owner_and_is_never_pruned() -> None:
    want = desired()
    pvc = next(m for m in want if m["kind"] == "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"][names.RETAIN_ANNOTATION] == "true"
    assert "ownerReferences" not in pvc["metadata"]
    owned = [m for m in want if m["kind"] != "PersistentVolumeClaim"]
    assert all(m["metadata"]["ownerReferences"][0]["uid"] == "uid-1" for m in owned)
    # Mlflow disabled: the PVC is no longer desired but stays.
    plan = make_plan(owned, [as_server_returns(m) for m in want], "uid-1")
    assert plan.delete == []


def test_pvc_spec_is_never_reapplied() -> None:
    want = desired()
    observed = [as_server_returns(m) for m in want]
    pvc = next(o for o in observed if o["kind"] == "PersistentVolumeClaim")
    pvc["spec"]["resources"]["requests"]["storage"] = "20Gi"
    pvc["spec"]["volumeName"] = "pv-1"
    assert make_plan(want, observed, "uid-1").empty


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [("1", 1, True), ("500m", "0.5", True), ("16Gi", "17179869184", True), ("1Gi", "1G", False),
     ("8Gi", "8Gi", True), ("abc", "abd", False), ("2", "2", True)],
)  # fmt: skip
def test_quantities_compare_by_value(a: Any, b: Any, equal: bool) -> None:
    assert (differences({"q": a}, {"q": b}) == []) is equal


def test_quantity_parsing() -> None:
    assert quantity("250m") == Decimal("0.25")
    assert quantity("2Ki") == 2048
    assert quantity("1e3") == 1000
    assert quantity("x") is None
    assert quantity(True) is None


def test_list_length_changes_are_differences() -> None:
    assert differences({"a": [1, 2]}, {"a": [1, 2, 3]}) == [".a"]
    assert differences({"a": [{"x": 1}]}, {"a": [{"x": 1, "y": 2}]}) == []
