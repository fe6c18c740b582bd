"""The kopf wiring: what the caches keep, and the kopf settings the operator relies on."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from aistack import handlers
from aistack.controller import pack, unpack


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "s-gateway",
            "namespace": "team",
            "labels": {"aistack.dev/stack": "s"},
            "managedFields": [{"manager": "aistack-operator", "fieldsV1": {"f:spec": {}}}] * 20,
        },
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "gateway"}]}}},
        "status": {"readyReplicas": 1},
    }


def test_pack_keeps_everything_but_managed_fields_in_less_than_its_json() -> None:
    obj = _deployment()
    packed = pack(obj)
    back = unpack(packed)
    assert "managedFields" not in back["metadata"]
    del obj["metadata"]["managedFields"]
    assert back == obj
    assert len(packed) < len(json.dumps(obj, separators=(",", ":")))


def test_unpack_gives_a_fresh_copy_every_time() -> None:
    packed = pack(_deployment())
    first = unpack(packed)
    first["spec"]["replicas"] = 0
    assert unpack(packed)["spec"]["replicas"] == 1


def test_lists_and_bare_values_pack_too() -> None:
    manifests = [_deployment(), {"kind": "Service", "metadata": {"name": "x"}}]
    assert unpack(pack(manifests)) == manifests
    assert unpack(pack({"no": "metadata"})) == {"no": "metadata"}


def test_the_operator_has_no_change_or_daemon_handlers() -> None:
    # NoDiffBase (no "last handled state") is only right while kopf has no handler that
    # reads what changed: on.create/update/resume/delete/field, daemons and timers.
    registry = kopf.get_default_registry()
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    # What it has instead: the caches and the events that queue reconciles.
    indexed = {h.id for h in registry._indexing.get_all_handlers()}
    assert set(handlers.INDEX_NAMES) <= indexed
    assert len(registry._watching.get_all_handlers()) == 2 + len(handlers.CHILD_RESOURCES) + 1


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[kopf.OperatorSettings]:
    started: list[bool] = []
    monkeypatch.setattr(handlers.RUNTIME, "start", lambda: started.append(True))
    before = {h: list(h.filters) for h in logging.getLogger().handlers}
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings)
    assert started == [True]
    yield settings
    for h, filters in before.items():
        h.filters = filters


def test_kopf_lists_in_pages(settings: kopf.OperatorSettings) -> None:
    assert settings.watching.chunk_size == handlers.LIST_PAGE == 500


def test_kopf_keeps_no_last_handled_state(settings: kopf.OperatorSettings) -> None:
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, handlers.NoDiffBase)
    body = kopf.Body(_deployment())
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence={})
    assert not patch  # nothing written on the object
    assert settings.posting.enabled is False


class RecordingQueue:
    def __init__(self) -> None:
        self.requests: list[tuple[tuple[str, str], bool]] = []

    def request(self, key: tuple[str, str], *, spec_changed: bool = False) -> None:
        self.requests.append((key, spec_changed))


def _runtime_with_stacks(*names: str) -> tuple[handlers.Runtime, RecordingQueue]:
    rt = handlers.Runtime()
    queue = RecordingQueue()
    rt.queue = queue  # type: ignore[assignment]
    rt.indexes["stack_index"] = {("ml", n): [] for n in names}
    return rt, queue


def test_the_operators_own_policy_status_write_requeues_nothing() -> None:
    rt, _queue = _runtime_with_stacks("a", "b")
    policy = {"metadata": {"name": "p", "uid": "u1", "generation": 1}, "spec": {"allow": ["MIT"]}}
    assert rt.policy_changed("ADDED", "p", policy)
    with_status = dict(policy, status={"conditions": [{"type": "Valid", "status": "True"}]})
    assert not rt.policy_changed("MODIFIED", "p", with_status), "only its status changed"
    edited = {**policy, "metadata": {**policy["metadata"], "generation": 2},
              "spec": {"allow": ["MIT", "Apache-2.0"]}}  # fmt: skip
    assert rt.policy_changed("MODIFIED", "p", edited)
    assert rt.policy_changed("DELETED", "p", edited)


def test_policy_events_requeue_every_stack_only_when_the_policy_changed() -> None:
    rt, queue = _runtime_with_stacks("a", "b")
    handlers.RUNTIME, saved = rt, handlers.RUNTIME
    try:
        policy = {"metadata": {"name": "p", "uid": "u1", "generation": 1}, "spec": {}}
        asyncio.run(handlers.policy_event(type="ADDED", name="p", body=policy))
        assert len(queue.requests) == 2
        asyncio.run(handlers.policy_event(type="MODIFIED", name="p",
                                          body=dict(policy, status={"x": 1})))  # fmt: skip
        assert len(queue.requests) == 2, "the status write requeued nothing"
    finally:
        handlers.RUNTIME = saved


def test_a_stack_event_says_whether_its_spec_changed() -> None:
    rt, queue = _runtime_with_stacks()
    handlers.RUNTIME, saved = rt, handlers.RUNTIME
    try:
        stack = {"metadata": {"name": "a", "uid": "u", "generation": 1}}
        for event_type, generation in [("ADDED", 1), ("MODIFIED", 1), ("MODIFIED", 2)]:
            body = {"metadata": {**stack["metadata"], "generation": generation}}
            asyncio.run(handlers.stack_event(type=event_type, namespace="ml", name="a", body=body))
        assert queue.requests == [(("ml", "a"), True), (("ml", "a"), False), (("ml", "a"), True)]
    finally:
        handlers.RUNTIME = saved
