"""The operator's Prometheus metrics (``aistack run --metrics-port``), every name
``aistack_``-prefixed. docs/observability.md lists them with the alerts and the
dashboard that read them; the chart's rules and dashboard are tested against the names
here.

The reconciler, the API client, the webhook and the Hub client record into them; they
are process-wide, as the operator's state is. ``serve`` exposes them with prometheus_client's
own process and Python collectors.
"""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

if TYPE_CHECKING:
    from aistack.api.v1alpha1 import AIStack, AIStackStatus
    from aistack.verdicts import LicenseVerdict

# No ``*_created`` series next to every counter: nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Blocked")
KINDS = ("model", "adapter", "provider")
DECISIONS = ("permitted", "blocked", "violated")

RECONCILE_SECONDS = Histogram(
    "aistack_reconcile_duration_seconds",
    "Time one reconcile of a stack took.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILES = Counter(
    "aistack_reconciles", "Reconciles of a stack, by result: ok, error, invalid.", ["result"]
)
QUEUE_DEPTH = Gauge("aistack_queue_depth", "Stacks waiting for a reconcile to start.")
API_REQUESTS = Counter(
    "aistack_api_requests",
    "Kubernetes API requests of the reconciler and the webhook (not kopf's watches), by "
    "verb and HTTP status code ('error': no answer).",
    ["verb", "code"],
)
STACKS = Gauge("aistack_stacks", "Stacks by phase.", ["phase"])
STACK_READY = Gauge(
    "aistack_stack_ready", "1 when the stack's phase is Ready, else 0.", ["namespace", "stack"]
)
LICENSE_VERDICTS = Gauge(
    "aistack_license_verdicts",
    "Per stack, routes of each kind (model, adapter, provider) by license-policy decision: "
    "permitted, blocked, or violated (permitted though a Warn or DryRun policy is violated).",
    ["namespace", "stack", "kind", "decision"],
)
MODEL_REPLICAS = Gauge(
    "aistack_model_replicas",
    "Per model of a stack, its replicas (groups, for a multi-node model): desired (what the "
    "spec, or the autoscaler, asks for now) and ready.",
    ["namespace", "stack", "model", "state"],
)
ADMISSIONS = Counter(
    "aistack_webhook_admissions",
    "AIStack admission reviews by result: allowed, warned, denied, error.",
    ["result"],
)
HUB_LOOKUPS = Counter(
    "aistack_hub_lookups",
    "Model-card lookups on the Hugging Face Hub (not answered from the cache), by result: "
    "found, no_license, unavailable.",
    ["result"],
)

#: Per stack, its phase, as the gauges last counted it.
_phases: dict[tuple[str, str], str] = {}
#: The models each stack's replica series were last set for.
_models: dict[tuple[str, str], set[str]] = {}


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics on ``port`` from a daemon thread."""
    start_http_server(port, addr=addr)


def _init() -> None:
    # Every labelled series the dashboards and alerts read exists from the start, at 0.
    for phase in PHASES:
        STACKS.labels(phase)
    for result in ("ok", "error", "invalid"):
        RECONCILES.labels(result)
    for result in ("allowed", "warned", "denied", "error"):
        ADMISSIONS.labels(result)
    for result in ("found", "no_license", "unavailable"):
        HUB_LOOKUPS.labels(result)


_init()


def decision(verdict: LicenseVerdict) -> str:
    if not verdict.permitted:
        return "blocked"
    return "violated" if verdict.violation else "permitted"


def route_kinds(stack: AIStack) -> dict[str, str]:
    """Route name -> model, adapter or provider, for every route of the stack."""
    out: dict[str, str] = {}
    for m in stack.spec.models:
        out[m.name] = "model"
        out |= dict.fromkeys((a.name for a in m.adapters), "adapter")
    out |= dict.fromkeys((p.name for p in stack.spec.gateway.providers), "provider")
    return out


def record_stack(
    namespace: str,
    name: str,
    status: AIStackStatus,
    kinds: Mapping[str, str],
    verdicts: Mapping[str, LicenseVerdict],
) -> None:
    """A stack's phase and license decisions after a reconcile. ``kinds``: route name ->
    model, adapter or provider."""
    record_phase(namespace, name, status.phase or "Pending")
    counts = Tally((kinds[n], decision(v)) for n, v in verdicts.items() if n in kinds)
    for kind in KINDS:
        for d in DECISIONS:
            LICENSE_VERDICTS.labels(namespace, name, kind, d).set(counts[(kind, d)])
    seen = set()
    for model in status.models:
        seen.add(model.name)
        desired = (model.replicas or 0) if model.permitted else 0
        MODEL_REPLICAS.labels(namespace, name, model.name, "desired").set(desired)
        MODEL_REPLICAS.labels(namespace, name, model.name, "ready").set(model.ready_replicas or 0)
    _forget_models(namespace, name, _models.get((namespace, name), set()) - seen)
    _models[(namespace, name)] = seen


def _forget_models(namespace: str, name: str, models: set[str]) -> None:
    for model in models:
        for state in ("desired", "ready"):
            with contextlib.suppress(KeyError):
                MODEL_REPLICAS.remove(namespace, name, model, state)


def record_phase(namespace: str, name: str, phase: str) -> None:
    """A stack's phase (also of one whose spec is invalid: Degraded)."""
    key = (namespace, name)
    before = _phases.get(key)
    if before != phase:
        if before is not None:
            STACKS.labels(before).dec()
        STACKS.labels(phase).inc()
        _phases[key] = phase
    STACK_READY.labels(namespace, name).set(1 if phase == "Ready" else 0)


def forget_stack(namespace: str, name: str) -> None:
    """A deleted stack leaves the gauges."""
    phase = _phases.pop((namespace, name), None)
    if phase is None:
        return
    STACKS.labels(phase).dec()
    STACK_READY.remove(namespace, name)
    _forget_models(namespace, name, _models.pop((namespace, name), set()))
    for kind in KINDS:
        for d in DECISIONS:
            with contextlib.suppress(KeyError):  # an invalid stack had no verdicts
                LICENSE_VERDICTS.remove(namespace, name, kind, d)
