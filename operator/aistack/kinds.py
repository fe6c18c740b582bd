"""Every Kubernetes kind the operator reads or writes, listed once.

The plan (apply and delete order), the API client (URL paths) and the kopf handlers (which
kinds to watch and cache as children of a stack) all read this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aistack.api.v1alpha1 import GROUP, VERSION


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str  # "" for the core API
    version: str
    plural: str
    namespaced: bool = True
    #: Rendered for a stack: watched, cached per stack, planned, owned.
    child: bool = False
    #: Watched only where the installation renders it (``aistack run
    #: --no-stack-monitoring`` grants no RBAC on it, and a watch kopf may not list blocks).
    optional: bool = False
    #: Runs a stack's pods with ``spec.replicas``: scaled to zero when what it runs is not
    #: permitted, and carries the record of what it runs (``names.LICENSED_ANNOTATION``).
    workload: bool = False
    #: Sets a workload's replicas (a KEDA ScaledObject): removed before the plan's writes,
    #: so that a workload the plan stops never runs again in between.
    scaler: bool = False

    @property
    def api_prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def crd(self) -> str:
        """The name of the CustomResourceDefinition that would serve it."""
        return f"{self.plural}.{self.group}"

    @property
    def resource(self) -> tuple[str, str, str]:
        """(group, version, plural), as kopf names a resource."""
        return (self.group, self.version, self.plural)


#: Children first, in the order they are applied (isolation first, storage and config
#: before the workloads that mount them; deleted in the reverse order).
KINDS: tuple[Kind, ...] = (
    Kind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", child=True),
    Kind("PersistentVolumeClaim", "", "v1", "persistentvolumeclaims", child=True),
    Kind("ConfigMap", "", "v1", "configmaps", child=True),
    Kind("Service", "", "v1", "services", child=True),
    Kind("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets", child=True),
    Kind("Deployment", "apps", "v1", "deployments", child=True, workload=True),
    # LeaderWorkerSet's (sigs.k8s.io/lws), the groups of multi-node models: its CRD may be
    # absent (the render leaves those models out and their status says what to install).
    Kind(
        "LeaderWorkerSet",
        "leaderworkerset.x-k8s.io",
        "v1",
        "leaderworkersets",
        child=True,
        optional=True,
        workload=True,
    ),
    # KEDA's (keda.sh), which scale autoscaled models: its CRD may be absent (the models
    # then run at their fixed replicas, and the Autoscaling condition says why). After the
    # Deployments they scale; deleted before any is applied (``scaler``): a model that may
    # no longer run is never woken again.
    Kind(
        "ScaledObject",
        "keda.sh",
        "v1alpha1",
        "scaledobjects",
        child=True,
        optional=True,
        scaler=True,
    ),
    # The Prometheus Operator's: its CRD may be absent (kopf watches it once it appears;
    # the render leaves monitors out while it is missing).
    Kind(
        "PodMonitor",
        "monitoring.coreos.com",
        "v1",
        "podmonitors",
        child=True,
        optional=True,
    ),
    Kind("Event", "", "v1", "events"),
    # Read for its labels only (a provider key's opt-in), never its data.
    Kind("Secret", "", "v1", "secrets"),
    Kind("AIStack", GROUP, VERSION, "aistacks"),
    Kind("LicensePolicy", GROUP, VERSION, "licensepolicies", namespaced=False),
)
BY_KIND: dict[str, Kind] = {k.kind: k for k in KINDS}
#: The kinds a stack's children have, in apply order.
CHILD_KINDS: tuple[Kind, ...] = tuple(k for k in KINDS if k.child)
#: The kinds that run a stack's pods.
WORKLOAD_KINDS: frozenset[str] = frozenset(k.kind for k in KINDS if k.workload)
#: The kinds that set a workload's replicas.
SCALER_KINDS: frozenset[str] = frozenset(k.kind for k in KINDS if k.scaler)


def crd_established(crd: Mapping[str, Any]) -> bool:
    """A CustomResourceDefinition's body says Established=True (its kind is served).

    A new CRD's status starts as `conditions: null`; that is "not yet", not an error.
    """
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
