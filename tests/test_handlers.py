"""The kopf wiring: what the caches keep, and the kopf settings the operator relies on."""

from __future__ import annotations

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
