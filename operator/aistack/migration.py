"""Upgrades that change what a stack is made of, without a manual step.

Before LeaderWorkerSet, each group of a multi-node model was a leader and a worker
Deployment, a headless Service in front of its Ray head, a NetworkPolicy and (with several
workers) a PodDisruptionBudget, all named ``<stack>-vllm-<model>-g<N>...``. Now the groups
are one LeaderWorkerSet. The old objects are no longer desired, but they keep serving until
the LeaderWorkerSet's groups are all ready: only then are they pruned. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from aistack import names
from aistack.api.v1alpha1 import AIStack
from aistack.plan import Key, key_of
from aistack.status import lws_state

#: The kinds the groups of before were made of.
_LEGACY_KINDS = frozenset({"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"})


def legacy_group_objects(stack_name: str, model: str, observed: Iterable[Key]) -> set[Key]:
    """The objects of ``observed`` that the per-group Deployments of a multi-node model
    were made of."""
    pattern = re.compile(
        re.escape(names.model_base(stack_name, model)) + r"-g[0-9]+(-leader|-worker)?"
    )
    return {k for k in observed if k[0] in _LEGACY_KINDS and pattern.fullmatch(k[2])}


def keep_until_migrated(stack: AIStack, observed: Iterable[Mapping[str, Any]]) -> set[Key]:
    """The old group objects that must not be pruned yet: those of every multi-node model
    whose LeaderWorkerSet is not ready (missing, starting, or the cluster has no
    LeaderWorkerSet API)."""
    objects = {key_of(o): o for o in observed}
    stack_name = stack.metadata.name
    keep: set[Key] = set()
    for model in stack.spec.models:
        if not model.spans_nodes:
            continue
        old = legacy_group_objects(stack_name, model.name, objects)
        if not old:
            continue
        lws = names.model_lws(stack_name, model.name)
        namespace = stack.metadata.namespace or "default"
        if not lws_state(objects.get(("LeaderWorkerSet", namespace, lws)), lws).is_ready:
            keep |= old
    return keep
