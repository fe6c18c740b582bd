"""The reconcile loop's steps, against an in-memory stand-in for the API server.

The real API server is exercised by tests/e2e; here the point is the order of the steps,
what is written when, and that a converged stack is left alone.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Mapping
from typing import Any

import pytest

from aistack.api import AIStack
from aistack.codec import merge_patch
from aistack.controller import ReconcileError, Reconciler, Result, StackView
from aistack.kube import KubeError
from aistack.plan import Key, key_of
from aistack.queue import StackQueue
from aistack.verdicts import LicenseVerdict
from helpers import stack_doc

NOW = "2026-01-01T00:00:00Z"


class FakeKube:
    """Stores what is applied; records every call."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.status: dict[str, Any] | None = None
        self.fail: dict[Key, KubeError] = {}
        self.rv = 100

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        key = key_of(manifest)
        self.calls.append(("apply", key))
        if key in self.fail:
            raise self.fail[key]
        self.rv += 1
        obj = copy.deepcopy(manifest)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        return obj

    def delete(self, key: Key) -> None:
        self.calls.append(("delete", key))
        self.objects.pop(key, None)

    def scale_to_zero(
        self, kind: str, namespace: str, name: str, annotation: str
    ) -> dict[str, Any]:
        key = (kind, namespace, name)
        self.calls.append(("scale", key))
        self.rv += 1
        obj = copy.deepcopy(self.objects[key])
        obj["spec"]["replicas"] = 0
        obj["metadata"].setdefault("annotations", {})[annotation] = "true"
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        return obj

    def drop_annotation(
        self, kind: str, namespace: str, name: str, annotation: str
    ) -> dict[str, Any]:
        key = (kind, namespace, name)
        self.calls.append(("unmark", key))
        self.rv += 1
        obj = copy.deepcopy(self.objects[key])
        obj["metadata"].get("annotations", {}).pop(annotation, None)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        return obj

    def start_replicas(self, key: Key, replicas: int) -> dict[str, Any]:
        self.calls.append(("start", (key, replicas)))
        self.rv += 1
        obj = copy.deepcopy(self.objects[key])
        obj["spec"]["replicas"] = replicas
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        return obj

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("status", patch))
        self.status = merge_apply(self.status or {}, patch)
        return {}

    def post_event(
        self, stack: Mapping[str, Any], *, type_: str, reason: str, message: str, now: str
    ) -> None:
        self.calls.append(("event", (type_, reason)))

    def writes(self) -> list[tuple[str, Any]]:
        writes = ("apply", "delete", "status", "scale", "unmark", "start")
        return [c for c in self.calls if c[0] in writes]


def merge_apply(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_apply(out.get(k), v)
    return out


def permit_all(stack: AIStack, policies: list[Any]) -> dict[str, LicenseVerdict]:
    return {
        m.name: LicenseVerdict(True, False, "LicenseAllowed", "ok", "MIT", "Catalog")
        for m in stack.spec.models
    }


def body(**spec: Any) -> dict[str, Any]:
    doc = stack_doc(**spec)
    doc["metadata"].update(uid="uid-1", generation=1, resourceVersion="1")
    return doc


def setup(**spec: Any) -> tuple[FakeKube, Reconciler, dict[str, Any]]:
    kube = FakeKube()
    rec = Reconciler(kube=kube, licensing=permit_all, clock=lambda: NOW)  # type: ignore[arg-type]
    return kube, rec, body(**spec)


def view(kube: FakeKube, stack: dict[str, Any]) -> StackView:
    """What the watches would show: the stored objects and the stored status."""
    current = dict(stack, status=copy.deepcopy(kube.status or {}))
    return StackView(stack=current, children=[copy.deepcopy(o) for o in kube.objects.values()])


KEY = ("ml", "demo")


def test_first_reconcile_applies_everything_then_converges_quietly() -> None:
    kube, rec, stack = setup()
    result = rec.reconcile_once(KEY, StackView(stack=stack))
    assert result is not None and result.error is None
    assert (
        len(result.applied) == len(kube.objects) == 14
    )  # 4 Deployments, 4 Services, PVC, ConfigMap, 4 NetworkPolicies (one per part)
    assert result.status_written
    assert kube.status is not None and kube.status["phase"] == "Progressing"
    events = [c[1] for c in kube.calls if c[0] == "event"]
    assert events[0] == ("Normal", "Applied")
    for obj in kube.objects.values():
        if obj["kind"] != "PersistentVolumeClaim":
            assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"

    kube.calls.clear()
    result = rec.reconcile_once(KEY, view(kube, stack))
    assert result is not None
    assert kube.writes() == [] and kube.calls == []


def test_a_removed_model_loses_its_server_and_route() -> None:
    kube, rec, stack = setup(
        models=[{"name": "a", "source": "o/a"}, {"name": "b", "source": "o/b"}]
    )
    rec.reconcile_once(KEY, StackView(stack=stack))
    assert ("Deployment", "ml", "demo-vllm-b") in kube.objects
    smaller = body(models=[{"name": "a", "source": "o/a"}])
    kube.calls.clear()
    result = rec.reconcile_once(KEY, view(kube, smaller))
    assert result is not None
    assert set(result.deleted) == {
        ("Deployment", "ml", "demo-vllm-b"),
        ("Service", "ml", "demo-vllm-b"),
    }
    assert ("ConfigMap", "ml", "demo-gateway-config") in result.applied
    assert (
        "demo-vllm-b"
        not in kube.objects[("ConfigMap", "ml", "demo-gateway-config")]["data"]["config.yaml"]
    )
    assert [m["name"] for m in kube.status["models"]] == ["a"]  # type: ignore[index]


def test_our_own_writes_count_before_the_watch_delivers_them() -> None:
    kube, rec, stack = setup()
    rec.reconcile_once(KEY, StackView(stack=stack))
    kube.calls.clear()
    # The watch has not delivered anything yet: no re-apply of what we just wrote.
    rec.reconcile_once(KEY, StackView(stack=dict(stack, status=kube.status)))
    assert [c for c in kube.calls if c[0] == "apply"] == []


def test_an_api_error_is_reported_and_retried() -> None:
    kube, rec, stack = setup()
    kube.fail[("Deployment", "ml", "demo-gateway")] = KubeError(
        403, "deployments.apps is forbidden"
    )
    with pytest.raises(ReconcileError, match="forbidden"):
        rec.reconcile_once(KEY, StackView(stack=stack))
    assert kube.status is not None and kube.status["phase"] == "Degraded"
    ready = kube.status["conditions"][0]
    assert (ready["reason"], ready["status"]) == ("ApplyFailed", "False")
    assert "Deployment demo-gateway: deployments.apps is forbidden" in ready["message"]
    assert ("event", ("Warning", "ApplyFailed")) in kube.calls
    # Everything else was still applied.
    assert ("Deployment", "ml", "demo-vllm-m") in kube.objects


def test_no_answer_from_the_api_server_aborts_the_reconcile() -> None:
    kube, rec, stack = setup()
    kube.fail[("ConfigMap", "ml", "demo-gateway-config")] = KubeError(0, "connection refused")
    with pytest.raises(KubeError):
        rec.reconcile_once(KEY, StackView(stack=stack))
    assert kube.status is None


def test_a_spec_that_slipped_past_the_schema_is_reported_once() -> None:
    kube, rec, stack = setup()
    stack["spec"]["models"][0]["gpus"] = 0
    result = rec.reconcile_once(KEY, StackView(stack=stack))
    assert result is not None and result.error is not None
    assert kube.objects == {}
    assert kube.status is not None and kube.status["conditions"][0]["reason"] == "InvalidSpec"
    assert "spec.models[0].gpus" in kube.status["conditions"][0]["message"]
    kube.calls.clear()
    rec.reconcile_once(KEY, StackView(stack=dict(stack, status=kube.status)))
    assert kube.writes() == []


def test_a_deleted_stack_ends_its_reconciles() -> None:
    kube, rec, _ = setup()
    assert rec.reconcile_once(KEY, StackView(stack=None)) is None
    assert kube.calls == []


def test_merge_patch_clears_removed_fields() -> None:
    old = {"phase": "Ready", "endpoints": {"gateway": "g", "rayDashboard": "r"}, "models": [1]}
    new = {"phase": "Ready", "endpoints": {"gateway": "g"}, "models": [1, 2]}
    assert merge_patch(old, new) == {"endpoints": {"rayDashboard": None}, "models": [1, 2]}
    assert merge_apply(old, merge_patch(old, new)) == new


def test_queue_coalesces_bursts_and_retries_failures() -> None:
    calls: list[str] = []
    failures = [ReconcileError("boom")]

    def reconcile(key: tuple[str, str], v: StackView) -> Any:
        calls.append(key[1])
        if failures:
            raise failures.pop()
        return None if key[1] == "gone" else object()

    async def scenario() -> None:
        queue = StackQueue(
            reconcile, lambda key: StackView(stack=None), debounce=0.01, max_backoff=0.05
        )
        queue._max_backoff = 0.05
        for _ in range(20):
            queue.request(("ml", "a"))
        await asyncio.sleep(1.3)  # first try fails, the retry after 1s succeeds
        queue.request(("ml", "gone"))
        await asyncio.sleep(0.1)
        await queue.close()

    asyncio.run(scenario())
    assert calls.count("a") == 2  # 20 requests coalesced into one run, plus one retry
    assert calls.count("gone") == 1


def test_queue_runs_a_quiet_stack_at_once_and_coalesces_what_follows() -> None:
    calls: list[float] = []

    def reconcile(key: tuple[str, str], v: StackView) -> Any:
        calls.append(time.monotonic())
        return Result()

    async def scenario() -> None:
        queue = StackQueue(reconcile, lambda key: StackView(stack=None), debounce=0.5)
        start = time.monotonic()
        queue.request(("ml", "a"))
        await asyncio.sleep(0.1)
        assert len(calls) == 1  # leading edge: no wait for a quiet stack
        assert calls[0] - start < 0.1
        for _ in range(5):  # the echo of its own writes, right after
            queue.request(("ml", "a"))
        await asyncio.sleep(0.2)
        assert len(calls) == 1  # held back: within the debounce of the last run
        await asyncio.sleep(0.5)
        assert len(calls) == 2  # the burst of five ran as one
        assert calls[1] - calls[0] >= 0.5
        await asyncio.sleep(0.6)  # quiet again
        queue.request(("ml", "a"))
        await asyncio.sleep(0.05)
        assert len(calls) == 3
        await queue.close()

    asyncio.run(scenario())


def test_queue_snapshots_a_stack_only_when_a_thread_is_free_for_it() -> None:
    # A thousand stacks created at once must not each hold a parsed snapshot while they
    # wait for one of the few reconcile threads.
    alive: list[int] = [0]
    most: list[int] = [0]
    done: list[str] = []

    def snapshot(key: tuple[str, str]) -> StackView:
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        return StackView(stack={"name": key[1]})

    def reconcile(key: tuple[str, str], v: StackView) -> Any:
        time.sleep(0.01)
        done.append(key[1])
        alive[0] -= 1
        return Result()

    async def scenario() -> None:
        queue = StackQueue(reconcile, snapshot, workers=3)
        for i in range(40):
            queue.request(("ml", f"s{i}"))
        for _ in range(200):
            if len(done) == 40:
                break
            await asyncio.sleep(0.02)
        await queue.close()

    asyncio.run(scenario())
    assert sorted(done) == sorted(f"s{i}" for i in range(40))
    assert most[0] == 3


def test_a_stack_is_rendered_again_only_when_its_spec_verdicts_or_settings_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aistack.controller as controller

    renders: list[str] = []
    real_render = controller.render

    def counting_render(stack: AIStack, permitted: Any, config: Any) -> Any:
        renders.append(stack.metadata.name)
        return real_render(stack, permitted, config)

    monkeypatch.setattr(controller, "render", counting_render)
    kube, rec, stack = setup()
    rec.reconcile_once(KEY, view(kube, stack))
    first = copy.deepcopy(kube.objects)
    for _ in range(3):  # pods change, status changes: same spec, same verdicts
        rec.reconcile_once(KEY, view(kube, stack))
    assert len(renders) == 1
    assert kube.objects == first

    stack["spec"]["models"][0]["replicas"] = 3  # a spec change is rendered and applied
    stack["metadata"]["generation"] = 2
    rec.reconcile_once(KEY, view(kube, stack))
    assert len(renders) == 2
    model = stack["spec"]["models"][0]["name"]
    server = kube.objects[("Deployment", "ml", f"demo-vllm-{model}")]
    assert server["spec"]["replicas"] == 3

    rec.licensing = lambda s, p: {  # type: ignore[assignment]
        m.name: LicenseVerdict(False, True, "LicenseNotAllowed", "no", "X", "Catalog")
        for m in s.spec.models
    }
    rec.reconcile_once(KEY, view(kube, stack))  # a verdict change is rendered too
    assert len(renders) == 3
    server = kube.objects[("Deployment", "ml", f"demo-vllm-{model}")]
    assert server["spec"]["replicas"] == 0

    # A settings change is rendered too: the Prometheus Operator's CRDs appeared.
    rec.config = rec.config.model_copy(update={"monitoring_crds": True})
    rec.reconcile_once(KEY, view(kube, stack))
    assert len(renders) == 4
    assert [k for k in kube.objects if k[0] == "PodMonitor"]

    rec.reconcile_once(KEY, StackView(stack=None))  # gone: nothing kept for it
    assert KEY not in rec._rendered


def test_kopf_retries_are_logged_as_warnings_and_give_ups_as_errors() -> None:
    import logging

    from aistack.handlers import RetriesAreWarnings

    def record(msg: str, name: str = "kopf._cogs.clients.watching") -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)

    retry = record("Request attempt #1/9 failed; will retry: GET /api -> refused")
    give_up = record("Request attempt #9/9 failed; escalating: GET /api -> refused")
    ours = record("x; will retry: y", name="aistack.controller")
    for r in (retry, give_up, ours):
        assert RetriesAreWarnings().filter(r)
    assert (retry.levelno, retry.levelname) == (logging.WARNING, "WARNING")
    assert give_up.levelno == ours.levelno == logging.ERROR


# ---------------------------------------------------------------- faults


def test_a_failure_that_repeats_posts_one_warning() -> None:
    kube, rec, stack = setup()
    kube.fail[("Deployment", "ml", "demo-gateway")] = KubeError(403, "forbidden")
    for with_status in (False, True, True):
        # The first retry sees no status yet (the watch lags behind our write), the next
        # ones see it: either way the same failure is reported once.
        current = dict(stack, status=kube.status) if with_status else stack
        with pytest.raises(ReconcileError):
            rec.reconcile_once(KEY, view(kube, current) if with_status else StackView(current))
    warnings = [c for c in kube.calls if c == ("event", ("Warning", "ApplyFailed"))]
    assert len(warnings) == 1
    kube.fail[("Deployment", "ml", "demo-gateway")] = KubeError(422, "something else")
    with pytest.raises(ReconcileError):
        rec.reconcile_once(KEY, view(kube, stack))
    warnings = [c for c in kube.calls if c == ("event", ("Warning", "ApplyFailed"))]
    assert len(warnings) == 2, "a different failure is news"


def test_an_invalid_spec_reaches_the_current_generation() -> None:
    kube, rec, stack = setup()
    stack["spec"]["models"][0]["gpus"] = 0
    stack["status"] = {"observedGeneration": 0, "conditions": []}  # IndexError before
    rec.reconcile_once(KEY, StackView(stack=stack))
    assert kube.status is not None and kube.status["observedGeneration"] == 1
    first = kube.status["conditions"][0]
    # An edit that keeps the same error: the status follows the generation, the
    # condition keeps its transition time, and no second Warning is posted.
    edited = dict(stack, status=kube.status)
    edited["metadata"] = dict(stack["metadata"], generation=2)
    edited["spec"] = dict(stack["spec"], gateway={"replicas": 2})
    kube.calls.clear()
    rec.reconcile_once(KEY, StackView(stack=edited))
    assert kube.status["observedGeneration"] == 2
    ready = kube.status["conditions"][0]
    assert (ready["reason"], ready["observedGeneration"]) == ("InvalidSpec", 2)
    assert ready["lastTransitionTime"] == first["lastTransitionTime"]
    assert [c for c in kube.calls if c[0] == "event"] == []


def _failing_once() -> tuple[list[float], StackQueue]:
    """A queue whose first reconcile fails (backoff 1 s); the times of the reconciles."""
    calls: list[float] = []

    def reconcile(key: tuple[str, str], v: StackView) -> Any:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ReconcileError("boom")
        return Result()

    queue = StackQueue(reconcile, lambda key: StackView(stack=None), debounce=0.01, resync=None)
    return calls, queue


def test_the_queue_respects_the_backoff_whatever_the_watch_says() -> None:
    async def scenario() -> list[float]:
        calls, queue = _failing_once()
        queue.request(KEY)
        await asyncio.sleep(0.1)
        for _ in range(20):  # pod and child events during the 1 s backoff
            queue.request(KEY)
            await asyncio.sleep(0.02)
        assert len(calls) == 1, "watch events wait out the backoff"
        await asyncio.sleep(1.0)
        await queue.close()
        return calls

    calls = asyncio.run(scenario())
    assert len(calls) == 2 and calls[1] - calls[0] >= 1.0


def test_a_spec_change_is_reconciled_at_once_even_in_backoff() -> None:
    async def scenario() -> list[float]:
        calls, queue = _failing_once()
        queue.request(KEY)
        await asyncio.sleep(0.1)
        queue.request(KEY, spec_changed=True)  # the user's fix
        await asyncio.sleep(0.1)
        await queue.close()
        return calls

    calls = asyncio.run(scenario())
    assert len(calls) == 2 and calls[1] - calls[0] < 0.5


def test_the_resync_reconciles_again_without_events_and_writes_nothing() -> None:
    kube, rec, stack = setup()
    runs: list[Any] = []

    def reconcile(key: tuple[str, str], v: StackView) -> Any:
        result = rec.reconcile_once(key, v)
        runs.append(result)
        return result

    async def scenario(resync: float | None) -> None:
        queue = StackQueue(reconcile, lambda key: view(kube, stack), debounce=0.01,
                           resync=resync, jitter=lambda: 1.0)  # fmt: skip
        queue.request(KEY)
        await asyncio.sleep(0.75)
        await queue.close()

    asyncio.run(scenario(0.2))
    assert len(runs) >= 3, "reconciled again on the timer"
    assert all(r is not None and not r.applied and not r.status_written for r in runs[1:])
    writes = kube.writes()
    runs.clear()
    asyncio.run(scenario(None))
    assert len(runs) == 1, "no resync: one reconcile for one request"
    assert kube.writes() == writes, "a converged stack is never written to"


def test_a_requested_retry_comes_without_an_event() -> None:
    calls: list[float] = []

    def reconcile(key: tuple[str, str], v: StackView) -> Any:
        calls.append(time.monotonic())
        return Result(requeue_after=0.2 if len(calls) == 1 else None)

    async def scenario() -> None:
        queue = StackQueue(reconcile, lambda key: StackView(stack=None), debounce=0.01,
                           resync=None)  # fmt: skip
        queue.request(KEY)
        await asyncio.sleep(0.6)
        await queue.close()

    asyncio.run(scenario())
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.2
