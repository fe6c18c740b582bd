"""The level-based reconcile of one stack, and of a LicensePolicy's status.

``reconcile_once`` is the fixed, ordered list of steps: parse, decide licenses, render,
plan against the observed children, apply the plan, compute the status, write the status
only if it changed, post the Events of real transitions. It reads the cluster only from
the caches kopf keeps from its watches (a ``StackView`` snapshot), so a converged stack
costs no API calls at all.

``write_policy_status`` is the reconcile of a LicensePolicy: its ``Valid`` condition.

The queue that runs reconciles is ``queue.py``, the packing of cached objects and merge
patches ``codec.py``. Nothing here knows about kopf.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pydantic import ValidationError

from aistack import metrics, names
from aistack.api.v1alpha1 import AIStack, AIStackStatus
from aistack.codec import merge_patch, now_rfc3339, pack, unpack
from aistack.components import RenderConfig
from aistack.conditions import as_dict, condition, previous_of
from aistack.errors import format_validation_error
from aistack.hub import HubClient
from aistack.kinds import SCALER_KINDS, WORKLOAD_KINDS
from aistack.kube import Kube, KubeError
from aistack.licenses import (
    SecretLabels,
    SecretUnreadable,
    decide_record,
    decide_stack,
    policy_status,
)
from aistack.migration import keep_until_migrated
from aistack.plan import Key, Manifest, Plan, key_of, make_plan, with_owner
from aistack.render import render
from aistack.status import (
    LICENSE_COMPLIANT,
    READY,
    EventSpec,
    Observed,
    compute_status,
    status_dict,
    transitions,
)
from aistack.verdicts import LicenseVerdict

log = logging.getLogger(__name__)

StackKey = tuple[str, str]  # namespace, name
#: When a license lookup failed (the Hub did not answer): look at the stack again after
#: this long (the Hub client itself decides when to ask again, with backoff).
LOOKUP_RETRY = 30.0
Obj = Mapping[str, Any]


@dataclass(frozen=True)
class StackView:
    """A snapshot of what the watches have shown about one stack, taken in the event loop
    and handed to a worker thread (the live caches change under the loop's feet)."""

    stack: Obj | None
    children: list[Obj] = field(default_factory=list)
    pods: list[Obj] = field(default_factory=list)
    policies: list[Obj] = field(default_factory=list)


class Licensing(Protocol):
    def __call__(self, stack: AIStack, policies: Sequence[Obj]) -> Mapping[str, LicenseVerdict]: ...


class RecordJudge(Protocol):
    """Judges what one Deployment runs from its record (``licenses.decide_record``): the
    stack's namespace, the record (None: it has none), the cluster's policies."""

    def __call__(
        self, namespace: str, record: str | None, policies: list[Obj]
    ) -> list[LicenseVerdict]: ...


def _judge_record_plainly(
    namespace: str, record: str | None, policies: list[Obj]
) -> list[LicenseVerdict]:
    return decide_record(record, policies, namespace)


def licensing_for(
    kube: Kube, hub: HubClient | None, default_images: Sequence[str]
) -> tuple[Licensing, RecordJudge]:
    """The license decisions the reconcile asks for, bound to the operator's Hugging Face
    client, its default images and the cluster's Secrets (their labels: a provider key's
    opt-in, read from the API server when a stack has providers)."""

    def secrets_of(namespace: str) -> SecretLabels:
        def labels(name: str) -> Mapping[str, str] | None:
            try:
                return kube.secret_labels(namespace, name)
            except KubeError as exc:
                raise SecretUnreadable(exc.message) from exc

        return labels

    def licensing(stack: AIStack, policies: Sequence[Obj]) -> Mapping[str, LicenseVerdict]:
        secrets = secrets_of(stack.metadata.namespace or "default")
        return decide_stack(stack, policies, hub, secrets=secrets, default_images=default_images)

    def judge(namespace: str, record: str | None, policies: list[Obj]) -> list[LicenseVerdict]:
        return decide_record(
            record, policies, namespace, hub, secrets=secrets_of(namespace),
            default_images=default_images,
        )  # fmt: skip

    return licensing, judge


_DELETED = b""  # in ``Reconciler._written``: deleted by us


def _newer(a: Obj, b: Obj) -> bool:
    """Whether ``a`` is a newer version of the same object than ``b``."""
    try:
        return int(a["metadata"]["resourceVersion"]) > int(b["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return False


@dataclass
class Result:
    """What one reconcile did (for logs and tests)."""

    applied: list[Key] = field(default_factory=list)
    deleted: list[Key] = field(default_factory=list)
    status_written: bool = False
    events: list[EventSpec] = field(default_factory=list)
    error: str | None = None
    #: Look at the stack again after this many seconds (a license lookup failed).
    requeue_after: float | None = None
    #: The spec did not validate (reported in the status, not retried).
    invalid: bool = False


@dataclass
class Reconciler:
    kube: Kube
    licensing: Licensing
    config: RenderConfig = field(default_factory=RenderConfig)
    #: Judges what a Deployment runs from its record, while the stack's spec cannot be read.
    judge_record: RecordJudge = _judge_record_plainly
    clock: Callable[[], str] = now_rfc3339
    #: Per stack, our own writes that the watch may not have delivered yet, packed
    #: (``pack``; a thousand stacks created at once leave thousands of
    #: them here until the watches catch up). Each stack is reconciled by one worker at
    #: a time, so its inner dict has one writer.
    _written: dict[StackKey, dict[Key, bytes]] = field(default_factory=dict)
    #: Per stack, the last render: (fingerprint of its inputs, the manifests packed). A
    #: stack is reconciled on every change of its pods; it is rendered only when its spec,
    #: its license verdicts or the settings (``config``, e.g. the monitoring CRDs appearing)
    #: change.
    _rendered: dict[StackKey, tuple[str, bytes]] = field(default_factory=dict)
    #: Per stack, the failure last reported with a Warning Event (reason, message).
    _reported: dict[StackKey, tuple[str, str]] = field(default_factory=dict)

    def _desired(self, key: StackKey, stack: AIStack, permitted: dict[str, bool]) -> list[Manifest]:
        fingerprint = hashlib.sha256(
            json.dumps(
                [stack.metadata.namespace, stack.metadata.name, sorted(permitted.items())]
            ).encode()
            + stack.spec.model_dump_json().encode()
            + self.config.model_dump_json().encode()
        ).hexdigest()
        cached = self._rendered.get(key)
        if cached is not None and cached[0] == fingerprint:
            manifests: list[Manifest] = unpack(cached[1])
            return manifests
        manifests = render(stack, permitted, self.config)
        self._rendered[key] = (fingerprint, pack(manifests))
        return manifests

    def _observed_children(self, key: StackKey, view: StackView) -> list[Obj]:
        seen = {key_of(o): o for o in view.children}
        written = self._written.setdefault(key, {})
        for k, packed in list(written.items()):
            cached = seen.get(k)
            if packed == _DELETED:  # deleted by us; the watch may still show it for a while
                if cached is None:
                    del written[k]
                else:
                    del seen[k]
                continue
            obj = unpack(packed)
            if cached is None or _newer(obj, cached):
                seen[k] = obj
            else:  # the watch caught up: forget our copy
                del written[k]
        return list(seen.values())

    def reconcile_once(self, key: StackKey, view: StackView) -> Result | None:
        """Bring one stack to its desired state. None when the stack no longer exists.
        Timed and counted by result (``aistack_reconcile_duration_seconds``,
        ``aistack_reconciles_total``)."""
        start = time.perf_counter()
        outcome = "error"
        try:
            result = self._reconcile(key, view)
            outcome = "invalid" if result is not None and result.invalid else "ok"
            return result
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - start)
            metrics.RECONCILES.labels(outcome).inc()

    def _reconcile(self, key: StackKey, view: StackView) -> Result | None:
        body = view.stack
        if body is None:
            self._written.pop(key, None)
            self._rendered.pop(key, None)
            self._reported.pop(key, None)
            metrics.forget_stack(*key)
            return None
        result = Result()
        old_status_raw = dict(body.get("status") or {})
        try:
            stack = AIStack.model_validate(body)
        except ValidationError as err:
            violations = self._enforce_records(key, view, result)
            self._write_invalid(key, body, err, result, violations)
            metrics.record_phase(*key, "Degraded")
            result.invalid = True
            return result

        verdicts = self.licensing(stack, view.policies)
        if any(v.stale for v in verdicts.values()):
            result.requeue_after = LOOKUP_RETRY
        permitted = {name: v.permitted for name, v in verdicts.items()}
        desired = [with_owner(m, body) for m in self._desired(key, stack, permitted)]
        observed = self._observed_children(key, view)
        keep = keep_until_migrated(stack, observed)
        plan = make_plan(desired, observed, str(body["metadata"]["uid"]), keep)

        self._execute(key, plan, result)

        now = self.clock()
        children = self._observed_children(key, view)
        status = compute_status(
            stack,
            verdicts,
            Observed(
                deployments=_by_name(children, "Deployment"),
                pods=view.pods,
                leaderworkersets=_by_name(children, "LeaderWorkerSet"),
            ),
            now=now,
            config=self.config,
            apply_error=result.error,
        )
        metrics.record_stack(*key, status, metrics.route_kinds(stack), verdicts)
        new_status_raw = status_dict(status)
        if new_status_raw != old_status_raw:
            self.kube.patch_status(key[0], key[1], merge_patch(old_status_raw, new_status_raw))
            result.status_written = True
        self._post_events(key, body, old_status_raw, status, result, now)
        if result.error:
            raise ReconcileError(result.error)
        return result

    def _execute(self, key: StackKey, plan: Plan, result: Result) -> None:
        """Apply and delete what the plan says; errors are collected into the result, but
        no answer at all from the API server aborts (the whole reconcile is retried)."""
        errors: list[str] = []
        written = self._written.setdefault(key, {})
        for k in plan.stop:
            self._delete(k, written, result, errors)
        for manifest in plan.apply:
            k = key_of(manifest)
            created = plan.reasons.get(k) == ["missing"]
            try:
                if k in plan.start and not created:  # before the apply drops the field
                    self.kube.start_replicas(k, plan.start[k])
                written[k] = pack(self.kube.apply(manifest))
                if k in plan.start and created:
                    written[k] = pack(self.kube.start_replicas(k, plan.start[k]))
                result.applied.append(k)
                log.info("applied %s/%s (%s)", k[0], k[2], ", ".join(plan.reasons.get(k, [])))
            except KubeError as exc:
                errors.append(f"{k[0]} {k[2]}: {exc.message}")
                if exc.status == 0:
                    raise  # no answer from the API server: retry the whole reconcile later
        for k in plan.unmark:
            try:
                blocked = names.LICENSE_BLOCKED_ANNOTATION
                written[k] = pack(self.kube.drop_annotation(k[0], k[1], k[2], blocked))
                result.applied.append(k)
            except KubeError as exc:
                errors.append(f"{k[0]} {k[2]}: {exc.message}")
                if exc.status == 0:
                    raise
        for k in plan.delete:
            self._delete(k, written, result, errors)
        result.error = "; ".join(errors) or None

    def _delete(self, k: Key, written: dict[Key, bytes], result: Result, errors: list[str]) -> None:
        try:
            self.kube.delete(k)
            written[k] = _DELETED
            result.deleted.append(k)
            log.info("deleted %s/%s (no longer desired)", k[0], k[2])
        except KubeError as exc:
            errors.append(f"delete {k[0]} {k[2]}: {exc.message}")
            if exc.status == 0:
                raise

    def _post_events(
        self, key: StackKey, body: Obj, old_status_raw: Obj, status: AIStackStatus,
        result: Result, now: str,
    ) -> None:  # fmt: skip
        """The Events of real transitions, of what was applied, and of a new failure."""
        result.events = transitions(_parse_status(old_status_raw), status)
        if result.applied or result.deleted:
            result.events.insert(0, _applied_event(result))
        if result.error is None:
            self._reported.pop(key, None)
        elif self._first_report(key, old_status_raw, "ApplyFailed", result.error):
            # Once per failure: a retry that fails the same way posts nothing more.
            result.events.append(EventSpec("Warning", "ApplyFailed", result.error))
        for ev in result.events:
            self.kube.post_event(body, type_=ev.type, reason=ev.reason, message=ev.message, now=now)

    def _first_report(self, key: StackKey, old_status: Obj, reason: str, message: str) -> bool:
        """Whether a failure is new: not what the stored status already says (its Event
        was posted when it first happened), nor what this operator last reported for the
        stack (its status write may not have come back through the watch yet)."""
        ready = previous_of(old_status.get("conditions")).get(READY)
        if ready is not None and (ready.reason, ready.message) == (reason, message):
            return False
        if self._reported.get(key) == (reason, message):
            return False
        self._reported[key] = (reason, message)
        return True

    def _enforce_records(
        self, key: StackKey, view: StackView, result: Result
    ) -> list[LicenseVerdict]:
        """While a stack's spec cannot be read, nothing of it is rendered, and its
        Deployments keep running what they run, as long as the policies permit it: each
        is judged from its record of what it runs (``names.LICENSED_ANNOTATION``), and
        scaled to zero when something in it is not permitted now (or cannot be judged).
        The violations found, for the status."""
        found: list[LicenseVerdict] = []
        written = self._written.setdefault(key, {})
        for obj in self._observed_children(key, view):
            kind = obj.get("kind")
            if kind not in WORKLOAD_KINDS:
                continue
            meta = obj["metadata"]
            record = (meta.get("annotations") or {}).get(names.LICENSED_ANNOTATION)
            verdicts = self.judge_record(key[0], record, view.policies)
            what = f"{kind} {meta['name']}"
            found += [replace(v, message=f"{what}: {v.message}") for v in verdicts if v.violation]
            if any(v.stale for v in verdicts):
                result.requeue_after = LOOKUP_RETRY
            if (
                any(not v.permitted for v in verdicts)
                and (obj.get("spec") or {}).get("replicas", 1) != 0
            ):
                blocked = names.LICENSE_BLOCKED_ANNOTATION
                for scaler in self._scalers_of(key, view, meta["name"]):
                    # First: a scaler would start it again.
                    self.kube.delete(scaler)
                    written[scaler] = _DELETED
                    result.deleted.append(scaler)
                written[key_of(obj)] = pack(
                    self.kube.scale_to_zero(str(kind), key[0], meta["name"], blocked)
                )
                result.applied.append(key_of(obj))
                log.info("scaled %s/%s to zero: the policies do not permit what it runs",
                         key[0], meta["name"])  # fmt: skip
        return found

    def _scalers_of(self, key: StackKey, view: StackView, workload: str) -> list[Key]:
        """The stack's scalers (ScaledObjects) that drive the workload named ``workload``."""
        return [
            key_of(obj)
            for obj in self._observed_children(key, view)
            if obj.get("kind") in SCALER_KINDS
            and ((obj.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == workload
        ]

    def _write_invalid(
        self,
        key: StackKey,
        body: Obj,
        err: ValidationError,
        result: Result,
        violations: list[LicenseVerdict],
    ) -> None:
        # The CRD schema and CEL rules catch almost everything; what gets through (e.g. a
        # stack stored before a rule existed, or written for a newer CRD) is reported, for
        # the current generation, and not retried: nothing changes until the spec does
        # (but the policies, whose changes still reach what runs: _enforce_records).
        message = "; ".join(format_validation_error("spec", err))
        now = self.clock()
        generation = body["metadata"].get("generation")
        old = dict(body.get("status") or {})
        previous = previous_of(old.get("conditions"))
        ready = condition(
            READY, False, "InvalidSpec", message, generation=generation, previous=previous,
            now=now,
        )  # fmt: skip
        if violations:
            compliant = condition(
                LICENSE_COMPLIANT, False, violations[0].reason,
                "; ".join(v.message for v in violations), generation=generation,
                previous=previous, now=now,
            )  # fmt: skip
        else:
            compliant = condition(
                LICENSE_COMPLIANT, True, "LicensesPermitted",
                "the spec cannot be read; what runs is permitted (judged from each "
                "Deployment's record of it)", generation=generation, previous=previous, now=now,
            )  # fmt: skip
        status = {"observedGeneration": generation, "phase": "Degraded",
                  "conditions": [as_dict(ready), as_dict(compliant)]}  # fmt: skip
        if status != {k: old.get(k) for k in status}:
            meta = body["metadata"]
            self.kube.patch_status(meta["namespace"], meta["name"], merge_patch(old, status))
            result.status_written = True
        if self._first_report(key, old, "InvalidSpec", message):
            self.kube.post_event(
                body, type_="Warning", reason="InvalidSpec", message=message, now=now
            )
        result.error = message


def _by_name(children: Sequence[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in children if o.get("kind") == kind}


class ReconcileError(Exception):
    """The reconcile did not fully succeed; it is retried with backoff."""


def _parse_status(raw: Mapping[str, Any]) -> AIStackStatus | None:
    if not raw:
        return None
    try:
        return AIStackStatus.model_validate(raw)
    except ValidationError:
        return None


def _applied_event(result: Result) -> EventSpec:
    parts = [f"{k[0]} {k[2]}" for k in result.applied]
    msg = f"applied {len(result.applied)}"
    if parts:
        msg += f" ({', '.join(parts[:8])}{', ...' if len(parts) > 8 else ''})"
    if result.deleted:
        gone = ", ".join(f"{k[0]} {k[2]}" for k in result.deleted[:8])
        msg += f"; deleted {len(result.deleted)} ({gone})"
    return EventSpec("Normal", "Applied", msg)


def write_policy_status(kube: Kube, name: str, body: dict[str, Any]) -> None:
    """Write a LicensePolicy's status (its ``Valid`` condition) when it changed; a failure
    is logged, and the next event of the policy tries again."""
    old = body.get("status") or {}
    new = policy_status(body, old, now_rfc3339())
    if new != old:
        try:
            kube.patch_status("", name, merge_patch(old, new), kind="LicensePolicy")
        except KubeError as exc:
            log.warning("could not write the status of LicensePolicy %s: %s", name, exc)
