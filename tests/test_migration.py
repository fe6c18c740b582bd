"""The move of multi-node models from per-group Deployments to LeaderWorkerSet: the old
objects keep serving until the LeaderWorkerSet's groups are all ready, then are pruned."""

from __future__ import annotations

from typing import Any

from aistack.migration import keep_until_migrated, legacy_group_objects
from aistack.plan import key_of, make_plan, with_owner
from aistack.render import render
from helpers import all_permitted, stack

UID = "uid-1"
OWNER = {"apiVersion": "aistack.dev/v1alpha1", "kind": "AIStack",
         "metadata": {"name": "demo", "uid": UID}}  # fmt: skip


def owned(kind: str, name: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ml", "ownerReferences": [
        {"uid": UID, "controller": True}]}  # fmt: skip
    return {"kind": kind, "metadata": meta, "spec": {"replicas": 1}}


#: What a stack made before LeaderWorkerSet had for a 2-group model "huge".
OLD = [
    *(
        owned("Deployment", f"demo-vllm-huge-g{g}-{role}")
        for g in (0, 1)
        for role in ("leader", "worker")
    ),
    *(owned("Service", f"demo-vllm-huge-g{g}") for g in (0, 1)),
    *(owned("NetworkPolicy", f"demo-vllm-huge-g{g}") for g in (0, 1)),
    owned("PodDisruptionBudget", "demo-vllm-huge-g0-worker"),
]


def lws(ready: int, desired: int = 2) -> dict[str, Any]:
    obj = owned("LeaderWorkerSet", "demo-vllm-huge-lws")
    obj["metadata"]["generation"] = 1
    obj["spec"] = {"replicas": desired}
    condition = {"type": "Available" if ready >= desired else "Progressing", "status": "True"}
    obj["status"] = {"readyReplicas": ready, "updatedReplicas": desired, "conditions": [condition]}
    return obj


def test_the_old_groups_are_recognised_by_name_and_kind() -> None:
    keys = [key_of(o) for o in OLD] + [
        ("Deployment", "ml", "demo-vllm-huge"),  # the model's own Service/Deployment names
        ("Service", "ml", "demo-vllm-huge"),
        ("Deployment", "ml", "demo-vllm-huge-g0-leader-x"),
        ("ConfigMap", "ml", "demo-vllm-huge-g0"),
        ("Deployment", "ml", "demo-vllm-hugeg0-leader"),
    ]
    assert legacy_group_objects("demo", "huge", keys) == {key_of(o) for o in OLD}


def test_old_groups_serve_until_the_leaderworkerset_is_ready_then_are_pruned() -> None:
    s = stack(models=[{"name": "huge", "source": "o/h", "nodes": 2, "replicas": 2}])
    desired = [with_owner(m, OWNER) for m in render(s, all_permitted(s))]
    old = {key_of(o) for o in OLD}
    for observed in (OLD, [*OLD, lws(ready=0)], [*OLD, lws(ready=1)]):
        keep = keep_until_migrated(s, observed)
        assert keep == old
        plan = make_plan(desired, observed, UID, keep)
        assert not set(plan.delete) & old, "nothing of the old groups goes yet"
    ready = [*OLD, lws(ready=2)]
    assert keep_until_migrated(s, ready) == set()
    plan = make_plan(desired, ready, UID, keep_until_migrated(s, ready))
    assert set(plan.delete) == old
    # Deleted after what replaced them was applied, in the reverse of the apply order.
    kinds = [k[0] for k in plan.delete]
    assert kinds.index("Deployment") < kinds.index("Service") < kinds.index("NetworkPolicy")


def test_without_leaderworkersets_the_old_groups_keep_serving() -> None:
    # An operator upgraded on a cluster without the LeaderWorkerSet API renders no groups:
    # the old ones stay (and the model's status says what to install).
    s = stack(models=[{"name": "huge", "source": "o/h", "nodes": 2, "replicas": 2}])
    assert keep_until_migrated(s, OLD) == {key_of(o) for o in OLD}


def test_a_model_no_longer_multi_node_or_gone_prunes_its_old_groups() -> None:
    for models in ([{"name": "huge", "source": "o/h"}], [{"name": "other", "source": "o/o"}]):
        s = stack(models=models)
        assert keep_until_migrated(s, OLD) == set()
