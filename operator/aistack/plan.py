"""Plan: desired manifests against observed children -> what to apply, what to delete.

Pure. The rule that keeps a converged stack quiet: a desired object is applied only when
the observed one lacks some field we set, or holds another value there. Fields the API
server or other controllers add (defaults, status, foreign labels) are not our business.
Quantities compare by value, because the API server rewrites them (``1`` -> ``"1"``,
``0.5`` -> ``"500m"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from aistack import names
from aistack.kinds import CHILD_KINDS, SCALER_KINDS

Manifest = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace, name

#: Kinds the operator creates, in the order they are applied (see ``aistack.kinds``).
KINDS: tuple[str, ...] = tuple(k.kind for k in CHILD_KINDS)
#: Kinds whose spec is (mostly) immutable once created: created when missing, never
#: re-applied (a PVC cannot shrink or change class; growing it is a deliberate act).
CREATE_ONLY: frozenset[str] = frozenset({"PersistentVolumeClaim"})

_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def key_of(manifest: Mapping[str, Any]) -> Key:
    meta = manifest["metadata"]
    return (str(manifest["kind"]), str(meta.get("namespace", "")), str(meta["name"]))


def quantity(value: Any) -> Decimal | None:
    """The value of a Kubernetes quantity, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str) or not value:
        return None
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if value.endswith(suffix):
            number, multiplier = value[: -len(suffix)], Decimal(str(_SUFFIXES[suffix]))
            break
    else:
        number, multiplier = value, Decimal(1)
    try:
        return Decimal(number) * multiplier
    except InvalidOperation:
        return None


def _scalar_equal(want: Any, have: Any) -> bool:
    if want == have and type(want) is type(have):
        return True
    if isinstance(want, bool) or isinstance(have, bool):
        return False
    if isinstance(want, str | int | float) and isinstance(have, str | int | float):
        a, b = quantity(want), quantity(have)
        return a is not None and a == b
    return False


def differences(want: Any, have: Any, path: str = "") -> list[str]:
    """Paths where ``have`` does not hold what ``want`` sets (``want`` must be a subset)."""
    out: list[str] = []
    _walk(want, have, [], out, path)
    return out


_SCALARS = (str, int, float, bool, type(None))


def _walk(want: Any, have: Any, parts: list[str | int], out: list[str], prefix: str) -> None:
    # Runs over every field of every child at every reconcile: a path is only spelled
    # out where something differs.
    if isinstance(want, dict):
        if not isinstance(have, dict):
            out.append(_spell(prefix, parts))
            return
        for k, v in want.items():
            parts.append(k)
            if k not in have:
                out.append(_spell(prefix, parts))
            else:
                h = have[k]
                if not (type(v) is type(h) and type(v) in _SCALARS and v == h):
                    _walk(v, h, parts, out, prefix)
            parts.pop()
        return
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            out.append(_spell(prefix, parts))
            return
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            parts.append(i)
            _walk(w, h, parts, out, prefix)
            parts.pop()
        return
    if not _scalar_equal(want, have):
        out.append(_spell(prefix, parts))


def _spell(prefix: str, parts: list[str | int]) -> str:
    path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
    return path or "."


@dataclass(frozen=True)
class Plan:
    """What one reconcile must do; empty when the stack is converged."""

    apply: list[Manifest] = field(default_factory=list)
    delete: list[Key] = field(default_factory=list)
    #: Workloads that run again but still carry the license-blocked mark another write
    #: put there (the merge patch that stopped them while their stack could not be read):
    #: server-side apply leaves a field it does not own, so the mark is dropped by name.
    unmark: list[Key] = field(default_factory=list)
    #: Why each object is applied: key -> first differing paths (for logs and Events).
    reasons: dict[Key, list[str]] = field(default_factory=dict)
    #: Scalers (ScaledObjects) no longer wanted: deleted before anything is applied, so
    #: that none wakes a workload the plan stops.
    stop: list[Key] = field(default_factory=list)
    #: Workloads whose replicas a scaler takes over (``names.STARTING_REPLICAS_ANNOTATION``)
    #: -> the replicas they start with: the current ones of a running workload (set before
    #: its apply drops the field), the starting size of a new or a license-stopped one (set
    #: after its apply creates it).
    start: dict[Key, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.apply and not self.delete and not self.unmark and not self.stop


def owner_reference(stack: Mapping[str, Any]) -> dict[str, Any]:
    meta = stack["metadata"]
    return {
        "apiVersion": stack["apiVersion"],
        "kind": stack["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def with_owner(manifest: Manifest, stack: Mapping[str, Any]) -> Manifest:
    """The manifest owned by the stack, so deleting the stack deletes it, unless it is
    marked to be retained (the MLflow data PVC by default)."""
    annotations = manifest["metadata"].get("annotations", {})
    if annotations.get(names.RETAIN_ANNOTATION) == "true":
        return manifest
    meta = dict(manifest["metadata"], ownerReferences=[owner_reference(stack)])
    return dict(manifest, metadata=meta)


def is_owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def make_plan(
    desired: Sequence[Manifest],
    observed: Iterable[Mapping[str, Any]],
    owner_uid: str,
    keep: Set[Key] = frozenset(),
) -> Plan:
    """Compare desired manifests (already carrying ownerReferences) with observed children.

    Deletes only what this stack owns and no longer wants: objects someone else created,
    and retained objects (which carry no ownerReference), are never deleted; nor those in
    ``keep``, which still serve until what replaces them is ready (``aistack.migration``).
    """
    seen = {key_of(o): o for o in observed}
    apply: list[Manifest] = []
    reasons: dict[Key, list[str]] = {}
    wanted: set[Key] = set()
    unmark: list[Key] = []
    blocked = names.LICENSE_BLOCKED_ANNOTATION
    for manifest in desired:
        key = key_of(manifest)
        wanted.add(key)
        have = seen.get(key)
        if have is None:
            apply.append(manifest)
            reasons[key] = ["missing"]
            continue
        marked = blocked in (have.get("metadata", {}).get("annotations") or {})
        if marked and blocked not in (manifest["metadata"].get("annotations") or {}):
            unmark.append(key)
        if key[0] in CREATE_ONLY:
            diff = differences(manifest["metadata"], have.get("metadata", {}), "metadata")
        else:
            diff = differences(manifest, have)
        if diff:
            apply.append(manifest)
            reasons[key] = diff[:5]
    apply.sort(key=lambda m: KINDS.index(m["kind"]) if m["kind"] in KINDS else len(KINDS))
    stop, delete = _deletions(seen, wanted | set(keep), owner_uid)
    return Plan(
        apply=apply,
        delete=delete,
        reasons=reasons,
        unmark=unmark,
        stop=stop,
        start=_handovers(desired, seen),
    )


def _handovers(
    desired: Sequence[Manifest], seen: Mapping[Key, Mapping[str, Any]]
) -> dict[Key, int]:
    """``Plan.start``: each desired workload whose replicas its scaler takes over now."""
    out = {}
    for manifest in desired:
        starting = _handover(manifest, seen.get(key_of(manifest)))
        if starting is not None:
            out[key_of(manifest)] = starting
    return out


def _handover(manifest: Manifest, have: Mapping[str, Any] | None) -> int | None:
    """The replicas to hand a workload's scaler (``Plan.start``), or None: its replicas are
    the scaler's now (``names.STARTING_REPLICAS_ANNOTATION``), and were not at the last
    apply (it is new, or ran at a fixed size, or was stopped by the license gate)."""
    mark = names.STARTING_REPLICAS_ANNOTATION
    starting = (manifest["metadata"].get("annotations") or {}).get(mark)
    if starting is None:
        return None
    if have is None:
        return int(starting)
    annotations = have.get("metadata", {}).get("annotations") or {}
    if mark in annotations:
        return None
    if names.LICENSE_BLOCKED_ANNOTATION in annotations:
        return int(starting)
    return int((have.get("spec") or {}).get("replicas", 1))


def _deletions(
    seen: Mapping[Key, Mapping[str, Any]], kept: Set[Key], owner_uid: str
) -> tuple[list[Key], list[Key]]:
    """What this stack owns and keeps no more: its scalers (``Plan.stop``), and the rest in
    the reverse of the apply order."""
    delete = sorted(
        key for key, obj in seen.items() if key not in kept and is_owned_by(obj, owner_uid)
    )
    delete.sort(key=lambda k: -KINDS.index(k[0]) if k[0] in KINDS else 0)
    return [k for k in delete if k[0] in SCALER_KINDS], [
        k for k in delete if k[0] not in SCALER_KINDS
    ]
