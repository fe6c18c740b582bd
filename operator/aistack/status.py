"""Status: observed children -> conditions, phase, per-model status, Events to post.

Pure: everything it needs is passed in, the clock included. The same observations always
give the same status, and ``lastTransitionTime`` moves only when a condition's status
really changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aistack import names
from aistack.api.v1alpha1 import (
    AdapterStatus,
    AIStack,
    AIStackSpec,
    AIStackStatus,
    Condition,
    DraftStatus,
    Endpoints,
    GatewayStatus,
    ModelSpec,
    ModelStatus,
    RouteStatus,
)
from aistack.components import (
    COMPONENTS,
    MODELS,
    Autoscaling,
    RenderConfig,
    autoscaling,
    endpoints,
    lws_missing,
    model_url,
    model_workloads,
    monitoring,
)
from aistack.conditions import condition, previous_of
from aistack.verdicts import LicenseVerdict

Obj = Mapping[str, Any]
Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "Blocked"]

READY = "Ready"
LICENSE_COMPLIANT = "LicenseCompliant"
MODELS_READY = MODELS.condition
#: Whether the stack's PodMonitors are in place, and why not (never part of Ready: a
#: stack serves without them).
MONITORING = "Monitoring"
#: A model that sleeps (autoscaled to zero replicas): ready, since a request wakes it.
IDLE = "Idle"
#: Whether KEDA scales the models that ask for autoscaling, and why not (only on stacks
#: with such models; never part of Ready: they serve at their replicas without it).
AUTOSCALING = "Autoscaling"
#: Every condition of a stack, in the order the status lists them: one per component.
CONDITION_TYPES = (
    READY, LICENSE_COMPLIANT, *(c.condition for c in COMPONENTS), MONITORING, AUTOSCALING
)  # fmt: skip

#: Pod and container states that will not fix themselves: the part is Degraded.
_STUCK_CONTAINER_REASONS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
     "InvalidImageName", "CreateContainerError"}
)  # fmt: skip
#: Part reasons that make the stack Degraded rather than Progressing.
PROBLEMS = _STUCK_CONTAINER_REASONS | {
    "Unschedulable",
    "ProgressDeadlineExceeded",
    "ReplicaFailure",
    "ApplyFailed",
    "NotReady",
    "LeaderWorkerSetMissing",
}


@dataclass(frozen=True)
class Observed:
    """Children of one stack as the operator last saw them (raw API objects)."""

    deployments: Mapping[str, Obj]
    pods: Sequence[Obj] = ()
    #: The stack's LeaderWorkerSets (its multi-node models' groups), by name.
    leaderworkersets: Mapping[str, Obj] = field(default_factory=dict)


@dataclass(frozen=True)
class PartState:
    desired: int
    ready: int
    reason: str
    message: str
    exists: bool = True

    @property
    def is_ready(self) -> bool:
        return self.reason in ("Ready", "ScaledToZero", "Disabled", IDLE)


@dataclass(frozen=True)
class EventSpec:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


# ---------------------------------------------------------------- parts


def _labels_match(obj: Obj, selector: Mapping[str, str]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _unschedulable(pod: Obj) -> tuple[str, str] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            name = pod["metadata"]["name"]
            return "Unschedulable", f"pod {name}: {cond.get('message', '').strip()}"
    return None


def _container_problem(pod: Obj, cs: Obj) -> tuple[str, str] | None:
    name = pod["metadata"]["name"]
    waiting = (cs.get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in _STUCK_CONTAINER_REASONS:
        detail = waiting.get("message", "").strip()
        return waiting["reason"], f"pod {name}, container {cs.get('name')}: {detail}"
    # Started (its startup probe passed) and running, yet not ready: the server came up
    # and now fails its readiness probe. A pod still starting has started=False, and is
    # only Starting.
    if cs.get("started") and not cs.get("ready") and "running" in (cs.get("state") or {}):
        return "NotReady", (
            f"pod {name}, container {cs.get('name')}: running but failing its readiness probe"
        )
    return None


def _pod_problem(pods: Sequence[Obj], selector: Mapping[str, str]) -> tuple[str, str] | None:
    for pod in pods:
        if not _labels_match(pod, selector) or pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        problem = _unschedulable(pod)
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            problem = problem or _container_problem(pod, cs)
        if problem:
            return problem
    return None


def _deployment_failure(status: Obj) -> tuple[str, str] | None:
    """A Deployment that will not get further by itself: its progress deadline passed, or
    its ReplicaSet cannot make pods."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return "ProgressDeadlineExceeded", cond.get("message", "")
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return "ReplicaFailure", cond.get("message", "")
    return None


def _replica_counts(workload: Obj) -> tuple[int, int, int, bool]:
    """A workload's desired, ready and updated replicas (groups, for a LeaderWorkerSet),
    and whether its status is older than its spec."""
    spec = workload.get("spec") or {}
    status = workload.get("status") or {}
    generation = workload.get("metadata", {}).get("generation")
    stale = generation is not None and int(status.get("observedGeneration") or 0) < int(generation)
    return (
        int(spec.get("replicas", 1)),
        int(status.get("readyReplicas") or 0),
        int(status.get("updatedReplicas") or 0),
        stale,
    )


def deployment_state(deploy: Obj | None, name: str) -> PartState:
    if deploy is None:
        return PartState(0, 0, "Creating", f"Deployment {name} does not exist yet", exists=False)
    desired, ready, updated, stale = _replica_counts(deploy)
    status = deploy.get("status") or {}
    if failure := _deployment_failure(status):
        return PartState(desired, ready, *failure)
    if desired == 0:
        return PartState(0, 0, "ScaledToZero", f"{name} is scaled to zero")
    if not stale and ready >= desired and updated >= desired:
        return PartState(desired, ready, "Ready", f"{ready}/{desired} replicas ready")
    return PartState(desired, min(ready, desired), "Starting", f"{ready}/{desired} replicas ready")


def part_state(
    deployments: Sequence[str],
    selector: Mapping[str, str],
    observed: Observed,
) -> PartState:
    """One part (several Deployments act as one) with its pods' problems folded in."""
    states = [deployment_state(observed.deployments.get(d), d) for d in deployments]
    desired = sum(s.desired for s in states)
    ready = sum(s.ready for s in states)
    if all(s.is_ready for s in states):
        reason = "ScaledToZero" if desired == 0 else "Ready"
        return PartState(desired, ready, reason, f"{ready}/{desired} replicas ready")
    problem = _pod_problem(observed.pods, selector)
    if problem is not None:
        return PartState(desired, ready, problem[0], problem[1])
    worst = next((s for s in states if s.reason in PROBLEMS), None)
    worst = worst or next(s for s in states if not s.is_ready)
    return PartState(
        desired, ready, worst.reason, worst.message, exists=all(s.exists for s in states)
    )


# ---------------------------------------------------------------- models


def lws_state(lws: Obj | None, name: str) -> PartState:
    """A LeaderWorkerSet's groups: ``desired`` and ``ready`` count groups (a group is ready
    when all its pods are)."""
    if lws is None:
        return PartState(0, 0, "Creating", f"LeaderWorkerSet {name} does not exist yet", False)
    # LeaderWorkerSet's status has no observedGeneration: its Available condition is what
    # says that every group is ready and runs the current template.
    desired, ready, updated, _ = _replica_counts(lws)
    status = lws.get("status") or {}
    if desired == 0:
        return PartState(0, 0, "ScaledToZero", f"{name} is scaled to zero")
    counts = f"{min(ready, desired)}/{desired} groups ready"
    true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Available" in true and ready >= desired and updated >= desired:
        return PartState(desired, ready, "Ready", counts)
    rolling = "UpdateInProgress" in true
    reason = "Updating" if rolling else "Starting"
    return PartState(desired, min(ready, desired), reason, f"{counts} ({name})")


def _model_state(
    stack: AIStack, model: ModelSpec, observed: Observed, config: RenderConfig
) -> tuple[PartState, int]:
    """State of a model's servers and the number of replicas (groups) that serve."""
    stack_name = stack.metadata.name
    selector = names.selector_labels(stack_name, "model-server", model=model.name)
    if not model.spans_nodes:
        state = part_state(model_workloads(stack_name, model), selector, observed)
        return state, state.ready
    if (missing := lws_missing(config)) is not None:
        return PartState(model.replicas, 0, "LeaderWorkerSetMissing", missing, False), 0
    name = names.model_lws(stack_name, model.name)
    state = lws_state(observed.leaderworkersets.get(name), name)
    if state.is_ready:
        return state, state.ready
    problem = _pod_problem(observed.pods, {names.LWS_NAME_LABEL: name})
    if problem is not None:
        state = PartState(state.desired, state.ready, *problem)
    old = _legacy_serving(stack_name, model, observed)
    if old:
        note = (
            f"; meanwhile {old} group(s) of the Deployments from before LeaderWorkerSet "
            "serve, until its groups are all ready (then they are removed)"
        )
        state = PartState(state.desired, state.ready, state.reason, state.message + note)
    return state, max(state.ready, old)


def _legacy_serving(stack_name: str, model: ModelSpec, observed: Observed) -> int:
    """The groups of a multi-node model that still serve from the Deployments it was made
    of before LeaderWorkerSet (``aistack.migration``): leader and workers ready."""
    serving = 0
    for g in range(names.MAX_REPLICAS):
        leader = names.model_group_leader(stack_name, model.name, g)
        workers = names.model_group_workers(stack_name, model.name, g)
        if leader not in observed.deployments:
            continue
        states = [deployment_state(observed.deployments.get(d), d) for d in (leader, workers)]
        serving += all(s.reason == "Ready" for s in states)
    return serving


# ---------------------------------------------------------------- conditions


def _part_condition(
    ctype: str,
    enabled: bool,
    state: PartState | None,
    what: str,
    generation: int | None,
    previous: Mapping[str, Condition],
    now: str,
) -> Condition:
    if not enabled or state is None:
        ok, reason, msg = True, "Disabled", f"{what} is disabled"
    else:
        ok, reason, msg = state.is_ready, state.reason, f"{what}: {state.message}"
    return condition(ctype, ok, reason, msg, generation=generation, previous=previous, now=now)


@dataclass
class _Models:
    """What the models of a stack came to (the inputs of the model conditions)."""

    statuses: list[ModelStatus]
    blocked: list[tuple[ModelSpec, LicenseVerdict]]
    #: Models and adapters whose license violates a policy, by name.
    violations: list[tuple[str, LicenseVerdict]]
    not_ready: list[tuple[ModelSpec, PartState]]
    ready: int
    #: Adapters not served (their license or their model's is not permitted), by name.
    blocked_adapters: list[tuple[str, LicenseVerdict]] = field(default_factory=list)
    #: Hosted provider routes the policies do not permit, by name.
    blocked_providers: list[tuple[str, LicenseVerdict]] = field(default_factory=list)
    #: Draft models not used (their license or their model's is not permitted), by model.
    blocked_drafts: list[tuple[str, LicenseVerdict]] = field(default_factory=list)
    #: Parts that run no pod because the image the stack names is not permitted.
    blocked_images: list[tuple[str, LicenseVerdict]] = field(default_factory=list)

    @property
    def any_blocked(self) -> bool:
        return bool(
            self.blocked
            or self.blocked_adapters
            or self.blocked_providers
            or self.blocked_drafts
            or self.blocked_images
        )


def _routes(
    stack: AIStack, verdicts: Mapping[str, LicenseVerdict], out: _Models, config: RenderConfig
) -> GatewayStatus | None:
    """Every route the spec asks of the gateway, and whether it is permitted; the hosted
    providers' verdicts join the models'. Without a gateway there are no routes (and no
    provider is judged: nothing would send it a prompt)."""
    if not stack.spec.gateway.enabled:
        return None
    routes: list[RouteStatus] = []

    def add(name: str, kind: str, target: str, verdict: LicenseVerdict) -> None:
        blocked = (
            {} if verdict.permitted else {"reason": verdict.reason, "message": verdict.message}
        )
        routes.append(
            RouteStatus.model_validate(
                {"name": name, "kind": kind, "target": target, "permitted": verdict.permitted}
                | blocked
            )
        )

    for model in stack.spec.models:
        url = model_url(stack, model, config)
        add(model.name, "Model", url, verdicts.get(model.name) or _not_checked(model.source))
        for a in model.adapters:
            add(a.name, "Adapter", url, verdicts.get(a.name) or _not_checked(a.source))
    for p in stack.spec.gateway.providers:
        verdict = verdicts.get(p.name) or _not_checked(f"provider {p.provider}")
        if verdict.violation:
            out.violations.append((p.name, verdict))
        if not verdict.permitted:
            out.blocked_providers.append((p.name, verdict))
        target = f"{p.provider}/{p.model}" + (f" at {p.api_base}" if p.api_base else "")
        add(p.name, "Provider", target, verdict)
    return GatewayStatus(routes=routes)


def _not_checked(source: str) -> LicenseVerdict:
    return LicenseVerdict(
        permitted=False, violation=True, reason="LicenseNotChecked",
        message=f"the license of {source} has not been checked yet",
    )  # fmt: skip


def _adapters(
    model: ModelSpec, verdicts: Mapping[str, LicenseVerdict], out: _Models
) -> list[AdapterStatus]:
    statuses = []
    for adapter in model.adapters:
        verdict = verdicts.get(adapter.name) or _not_checked(adapter.source)
        if verdict.violation:
            out.violations.append((adapter.name, verdict))
        if not verdict.permitted:
            out.blocked_adapters.append((adapter.name, verdict))
        status = AdapterStatus(
            name=adapter.name, source=adapter.source, revision=adapter.revision,
            license=verdict.license, license_source=verdict.license_source,
            permitted=verdict.permitted, reason=verdict.reason, message=verdict.message,
        )  # fmt: skip
        statuses.append(status)
    return statuses


def _draft(
    model: ModelSpec, verdicts: Mapping[str, LicenseVerdict], out: _Models
) -> DraftStatus | None:
    draft = model.speculative
    if draft is None or draft.source is None:
        return None
    verdict = verdicts.get(names.speculative_key(model.name)) or _not_checked(draft.source)
    if verdict.violation:
        out.violations.append((model.name, verdict))
    if not verdict.permitted:
        out.blocked_drafts.append((model.name, verdict))
    return DraftStatus(
        source=draft.source, revision=draft.revision, license=verdict.license,
        license_source=verdict.license_source, permitted=verdict.permitted,
        reason=verdict.reason, message=verdict.message,
    )  # fmt: skip


def _models(
    stack: AIStack,
    verdicts: Mapping[str, LicenseVerdict],
    observed: Observed,
    config: RenderConfig,
    scaling: Autoscaling,
) -> _Models:
    out = _Models([], [], [], [], 0)
    for model in stack.spec.models:
        verdict = verdicts.get(model.name) or _not_checked(model.source)
        if verdict.violation:
            out.violations.append((model.name, verdict))
        entry: dict[str, Any] = {
            "name": model.name,
            "source": model.source,
            "revision": model.revision,
            "license": verdict.license,
            "license_source": verdict.license_source,
            "permitted": verdict.permitted,
            "replicas": model.replicas,
            "adapters": _adapters(model, verdicts, out) or None,
            "speculative": _draft(model, verdicts, out),
        }
        if not verdict.permitted:
            out.blocked.append((model, verdict))
            entry.update(reason=verdict.reason, message=verdict.message, ready_replicas=0)
        else:
            state, serving = _model_state(stack, model, observed, config)
            if scaling.scaled and model.name in scaling.models:
                # What the scaler wants now (the Deployment's), not the starting size.
                entry["replicas"] = state.desired if state.exists else model.replicas
                if state.reason == "ScaledToZero":
                    state = PartState(0, 0, IDLE, "asleep: the gateway holds the next "
                                      "request for it and KEDA wakes it")  # fmt: skip
            entry.update(
                ready_replicas=serving,
                reason=state.reason,
                message=state.message,
                endpoint=model_url(stack, model, config),
            )
            if state.is_ready:
                out.ready += 1
            else:
                out.not_ready.append((model, state))
        out.statuses.append(ModelStatus(**entry))
    return out


Cond = Callable[[str, bool, str, str], Condition]


def _license_condition(
    spec: AIStackSpec, models: _Models, verdicts: Mapping[str, LicenseVerdict], cond: Cond
) -> Condition:
    if models.violations:
        first = models.violations[0][1]
        detail = "; ".join(v.message for _, v in models.violations)
        return cond(LICENSE_COMPLIANT, False, first.reason, detail)
    if not spec.models and not (spec.gateway.enabled and spec.gateway.providers):
        return cond(LICENSE_COMPLIANT, True, "NoModels", "the stack serves no models")
    licensed = [n for m in spec.models for n in [m.name, *(a.name for a in m.adapters)]]
    if stale := [(n, v) for n in licensed if (v := verdicts.get(n)) and v.stale]:
        # Permitted on the last good answer while a lookup fails: still compliant, but
        # the condition says which verdicts are not fresh, and why.
        detail = "; ".join(f"{n}: {v.stale}" for n, v in stale)
        return cond(
            LICENSE_COMPLIANT,
            True,
            "LicenseVerdictStale",
            f"every model's license is permitted, some on a stale verdict: {detail}",
        )
    return cond(LICENSE_COMPLIANT, True, "LicensesPermitted", "every model's license is permitted")


def _models_condition(spec: AIStackSpec, models: _Models, cond: Cond) -> Condition:
    served = len(spec.models) - len(models.blocked)
    if not spec.models:
        return cond(MODELS_READY, True, "NoModels", "the stack serves no models")
    if served == 0:
        return cond(MODELS_READY, False, "AllModelsBlocked", "no model is permitted to run")
    if models.not_ready:
        worst = next(
            ((m, s) for m, s in models.not_ready if s.reason in PROBLEMS), models.not_ready[0]
        )
        detail = "; ".join(f"{m.name}: {s.message}" for m, s in models.not_ready)
        return cond(MODELS_READY, False, worst[1].reason, detail)
    return cond(MODELS_READY, True, "Ready", f"{models.ready}/{served} permitted models serve")


def _part_conditions(
    stack: AIStack, observed: Observed, generation: int | None,
    previous: Mapping[str, Condition], now: str,
    verdicts: Mapping[str, LicenseVerdict], models: _Models,
) -> tuple[list[Condition], list[PartState]]:  # fmt: skip
    """Every part but the models (``COMPONENTS``): their conditions, in the registry's
    order, and the states of those enabled. A part whose named image is not permitted
    runs no pod, and its condition says why."""
    conditions: list[Condition] = []
    states: list[PartState] = []
    for component in COMPONENTS:
        if component is MODELS:
            continue  # per model, with its license: _models_condition
        on = component.enabled(stack.spec)
        state = None
        image = verdicts.get(names.image_key(component.image)) if on else None
        if image is not None and image.violation:
            models.violations.append((component.title, image))
        if image is not None and not image.permitted:
            models.blocked_images.append((component.title, image))
            state = PartState(0, 0, image.reason, image.message)
            states.append(state)
        elif on:
            state = part_state(
                component.workloads(stack), component.pod_selector(stack.metadata.name), observed
            )
            states.append(state)
        c = _part_condition(
            component.condition, on, state, component.title, generation, previous, now
        )
        note = component.note(stack) if on and component.note is not None else None
        if note:
            c = c.model_copy(update={"message": f"{c.message}; {note}"})
        conditions.append(c)
    return conditions, states


def _phase(
    spec: AIStackSpec,
    models: _Models,
    ready: Condition,
    part_states: Sequence[PartState],
    observed: Observed,
    apply_error: str | None,
) -> Phase:
    served = len(spec.models) - len(models.blocked)
    if apply_error:
        return "Degraded"
    if spec.models and served == 0 and models.blocked:
        return "Blocked"
    if ready.status == "True":
        return "Ready"
    if models.any_blocked or any(s.reason in PROBLEMS for s in part_states):
        return "Degraded"
    if not observed.deployments:
        return "Pending"
    return "Progressing"


def compute_status(
    stack: AIStack,
    verdicts: Mapping[str, LicenseVerdict],
    observed: Observed,
    *,
    now: str,
    config: RenderConfig | None = None,
    apply_error: str | None = None,
) -> AIStackStatus:
    """The stack's status from what was observed. ``now`` stamps conditions that change."""
    config = config or RenderConfig()
    generation = stack.metadata.generation
    previous = previous_of(stack.status.conditions if stack.status else None)
    spec = stack.spec

    def cond(ctype: str, ok: bool, reason: str, message: str) -> Condition:
        return condition(
            ctype, ok, reason, message, generation=generation, previous=previous, now=now
        )

    scaling = autoscaling(stack, config)
    models = _models(stack, verdicts, observed, config, scaling)
    gateway = _routes(stack, verdicts, models, config)
    parts, part_states = _part_conditions(
        stack, observed, generation, previous, now, verdicts, models
    )
    conditions = [
        _license_condition(spec, models, verdicts, cond),
        _models_condition(spec, models, cond),
        *parts,
    ]

    # Ready and phase
    # A license violation that was not enforced (Warn, DryRun) is reported by
    # LicenseCompliant alone; it makes the stack not Ready only when models or adapters
    # are blocked.
    failing = [
        c
        for c in conditions
        if c.status != "True" and (c.type != LICENSE_COMPLIANT or models.any_blocked)
    ]
    if apply_error:
        ready = cond(READY, False, "ApplyFailed", apply_error)
    elif failing:
        ready = cond(READY, False, failing[0].reason, failing[0].message)
    else:
        ready = cond(READY, True, "Ready", "every part of the stack is ready")
    conditions.insert(0, ready)
    watched = monitoring(stack, config)
    conditions.append(cond(MONITORING, watched.monitors, watched.reason, watched.message))
    if scaling.models:
        conditions.append(cond(AUTOSCALING, scaling.scaled, scaling.reason, scaling.message))
    part_states += [s for _, s in models.not_ready]
    phase = _phase(spec, models, ready, part_states, observed, apply_error)

    eps = endpoints(stack, config)
    return AIStackStatus(
        observed_generation=generation,
        phase=phase,
        models_ready=f"{models.ready}/{len(spec.models)}",
        conditions=conditions,
        models=models.statuses,
        endpoints=Endpoints.model_validate(eps) if eps else None,
        gateway=gateway,
    )


def status_dict(status: AIStackStatus) -> dict[str, Any]:
    """The status as the API server stores it (camelCase, no nulls)."""
    return status.model_dump(by_alias=True, exclude_none=True)


def _newly_blocked(now: Any, before: Any) -> bool:
    """Whether a model, adapter or draft (``now``) is blocked and was not (``before``)."""
    return (
        now is not None
        and now.permitted is False
        and (before is None or before.permitted is not False)
    )


def _adapter_events(m: ModelStatus, prev: ModelStatus | None) -> list[EventSpec]:
    before = {a.name: a for a in (prev.adapters or [] if prev else [])}
    return [
        EventSpec("Warning", "AdapterBlocked", a.message or a.name)
        for a in m.adapters or []
        if _newly_blocked(a, before.get(a.name))
    ]


def _model_events(m: ModelStatus, prev: ModelStatus | None) -> list[EventSpec]:
    events: list[EventSpec] = []
    if _newly_blocked(m, prev):
        events.append(EventSpec("Warning", "ModelBlocked", f"{m.name}: {m.message}"))
    events += _adapter_events(m, prev)
    if _newly_blocked(m.speculative, prev.speculative if prev else None):
        assert m.speculative is not None
        events.append(EventSpec("Warning", "DraftBlocked", m.speculative.message or m.name))
    was_ready = prev is not None and prev.reason == "Ready"
    if m.permitted and m.reason == "Ready" and not was_ready:
        events.append(EventSpec("Normal", "ModelReady", f"{m.name} serves at {m.endpoint}"))
    if m.permitted and m.reason == IDLE and prev is not None and prev.reason != IDLE:
        events.append(EventSpec("Normal", "ModelAsleep", f"{m.name}: {m.message}"))
    return events


def _route_events(old: AIStackStatus | None, new: AIStackStatus) -> list[EventSpec]:
    before = {r.name: r for r in (old.gateway.routes if old and old.gateway else [])}
    return [
        EventSpec("Warning", "ProviderBlocked", r.message or r.name)
        for r in (new.gateway.routes if new.gateway else [])
        if r.kind == "Provider"
        and not r.permitted
        and ((was := before.get(r.name)) is None or was.permitted)
    ]


def _phase_events(old: AIStackStatus | None, new: AIStackStatus) -> list[EventSpec]:
    if new.phase == (old.phase if old else None):
        return []
    ready = next(c for c in new.conditions if c.type == READY)
    if new.phase == "Ready":
        return [EventSpec("Normal", "StackReady", ready.message)]
    if new.phase in ("Degraded", "Blocked"):
        return [EventSpec("Warning", new.phase, f"{ready.reason}: {ready.message}")]
    return []


def transitions(old: AIStackStatus | None, new: AIStackStatus) -> list[EventSpec]:
    """Events worth posting for the change from ``old`` to ``new``: only real transitions,
    so a stack that stays the same posts nothing."""
    before = {m.name: m for m in (old.models if old else [])}
    events = [e for m in new.models for e in _model_events(m, before.get(m.name))]
    return events + _route_events(old, new) + _phase_events(old, new)
