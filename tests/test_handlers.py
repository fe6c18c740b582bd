"""The kopf wiring: what the caches keep, and the kopf settings the operator relies on."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from aistack import handlers
from aistack.api import AIStack
from aistack.codec import pack, unpack
from aistack.hub import CardLicense
from aistack.settings import OperatorSettings
from helpers import stack_doc


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


#: Imports the kopf wiring afresh with kopf's public decorators watched, and prints every
#: handler it registers: [decorator, handler id].
_REGISTERED = """
import json, kopf
seen = []
def watched(name, decorator):
    def watching(*args, **kwargs):
        register = decorator(*args, **kwargs)
        def apply(fn):
            seen.append([name, kwargs.get("id") or fn.__name__])
            return register(fn)
        return apply
    return watching
for name in ("resume", "create", "update", "delete", "field", "index", "event", "daemon",
             "timer", "startup", "cleanup"):
    setattr(kopf.on, name, watched(name, getattr(kopf.on, name)))
for name in ("index", "daemon", "timer"):
    setattr(kopf, name, watched(name, getattr(kopf, name)))
import aistack.handlers
aistack.handlers.watch_optional("PodMonitor")  # as `aistack run` does, unless told not to
aistack.handlers.watch_optional("LeaderWorkerSet")  # likewise
aistack.handlers.watch_optional("ScaledObject")  # likewise
print(json.dumps(seen))
"""


def test_the_operator_has_no_change_or_daemon_handlers() -> None:
    # NoDiffBase (no "last handled state") is only right while kopf has no handler that
    # reads what changed: on.create/update/resume/delete/field, daemons and timers.
    run = subprocess.run(
        [sys.executable, "-c", _REGISTERED], capture_output=True, text=True, check=True
    )
    registered = [tuple(entry) for entry in json.loads(run.stdout)]
    kinds = {kind for kind, _ in registered}
    assert kinds.isdisjoint({"resume", "create", "update", "delete", "field", "daemon", "timer"})
    # What it has instead: the caches and the events that queue reconciles.
    indexed = {handler for kind, handler in registered if kind == "index"}
    assert set(handlers.INDEX_NAMES) <= indexed
    events = [handler for kind, handler in registered if kind == "event"]
    # Stacks, policies, each child kind, pods, and the CRDs of the optional kinds.
    assert len(events) == 2 + len(handlers.CHILD_RESOURCES) + 1 + len(handlers.CRD_SETTINGS)
    assert {"crd-podmonitors", "crd-leaderworkersets", "crd-scaledobjects"} <= set(events)


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


class OneCard:
    """A hub whose every card says Apache-2.0; it remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def card_license(self, repo_id: str, revision: str | None) -> CardLicense | None:
        self.asked.append(repo_id)
        return CardLicense("apache-2.0")


def test_the_hub_of_the_settings_judges_for_the_reconciler_and_the_webhook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = OneCard()
    rt = handlers.Runtime(OperatorSettings(hub=hub))
    monkeypatch.setattr(handlers, "RUNTIME", rt)
    monkeypatch.setattr(handlers, "load_client", lambda *a: object())
    monkeypatch.setattr(handlers, "_current_policies", list)
    doc = stack_doc(models=[{"name": "m", "source": "acme/not-in-the-catalog"}])
    rt.start()
    assert rt.reconciler is not None
    verdict = rt.reconciler.licensing(AIStack.model_validate(doc), [])["m"]
    assert (verdict.permitted, verdict.license_source) == (True, "Hub")
    asked = len(hub.asked)
    warnings: list[str] = []
    asyncio.run(handlers.admit_stack(body=doc, warnings=warnings, dryrun=False))  # type: ignore[arg-type]
    assert len(hub.asked) > asked, "the webhook asked the same hub"
    assert set(hub.asked) == {"acme/not-in-the-catalog"}
    assert warnings == []
    without = handlers.Runtime(OperatorSettings())
    monkeypatch.setattr(handlers, "RUNTIME", without)
    without.start()
    with pytest.raises(kopf.AdmissionError, match="unknown"):
        asyncio.run(handlers.admit_stack(body=doc, warnings=[], dryrun=False))  # type: ignore[arg-type]


def test_without_stack_monitoring_nothing_watches_podmonitors() -> None:
    # `aistack run --no-stack-monitoring` (the chart's stackMonitoring.enabled false) has no
    # RBAC on PodMonitors: a watch on them would retry its list forever and block kopf.
    script = _REGISTERED.replace('aistack.handlers.watch_optional("PodMonitor")', "")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    ids = [handler for _, handler in json.loads(run.stdout)]
    assert ids and not [i for i in ids if "podmonitors" in i]
    assert "child-deployments" in ids and "deployments_index" in ids
    assert "child-leaderworkersets" in ids


def test_without_leaderworkersets_nothing_watches_them() -> None:
    # `aistack run --no-leaderworkersets` (the chart's leaderWorkerSet.enabled false).
    script = _REGISTERED.replace('aistack.handlers.watch_optional("LeaderWorkerSet")', "")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    ids = [handler for _, handler in json.loads(run.stdout)]
    assert ids and not [i for i in ids if "leaderworkersets" in i]
    assert "child-podmonitors" in ids


def test_the_webhook_judges_an_update_by_what_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf hands the handler the operation and the old object: a CREATE is judged whole,
    an UPDATE that leaves a denied model as it was is admitted with a warning naming it,
    and one that alters it is refused; an old object that does not read counts as none."""
    rt = handlers.Runtime(OperatorSettings())
    monkeypatch.setattr(handlers, "RUNTIME", rt)
    monkeypatch.setattr(handlers, "load_client", lambda *a: object())
    monkeypatch.setattr(handlers, "_current_policies", list)
    rt.start()
    nc = {"name": "nc", "source": "CohereForAI/c4ai-command-r-plus", "gpus": 1}
    old = stack_doc(models=[nc])
    relabelled = {**old, "metadata": {**old["metadata"], "labels": {"team": "chat"}}}

    def admit(body: dict[str, Any], operation: str, before: dict[str, Any] | None) -> list[str]:
        warnings: list[str] = []
        asyncio.run(handlers.admit_stack(
            body=body, warnings=warnings, dryrun=False, operation=operation, old=before,
        ))  # type: ignore[arg-type]  # fmt: skip
        return warnings

    with pytest.raises(kopf.AdmissionError, match=r"CC-BY-NC-4\.0"):
        admit(old, "CREATE", None)
    (warning,) = admit(relabelled, "UPDATE", old)
    assert warning.startswith("'nc' is unchanged by this update, so it is not refused again")
    bigger = stack_doc(models=[nc | {"gpus": 2}])
    with pytest.raises(kopf.AdmissionError, match=r"CC-BY-NC-4\.0"):
        admit(bigger, "UPDATE", old)
    unreadable = {**old, "spec": {"models": "not a list"}}
    with pytest.raises(kopf.AdmissionError, match=r"CC-BY-NC-4\.0"):
        admit(relabelled, "UPDATE", unreadable)
