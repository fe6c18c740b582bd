"""What every part's renderer shares: filling a template, resources, tolerations, security
contexts, the record of what a Deployment runs, YAML out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import jinja2
import yaml

from aistack import names
from aistack.api.v1alpha1 import ProviderSpec, ResourceRequirements, SecretKeyRef, Toleration
from aistack.kinds import WORKLOAD_KINDS
from aistack.yamlio import dump_all

Manifest = dict[str, Any]


GPU_RESOURCE = "nvidia.com/gpu"


GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


#: Time a model pod may take to be scheduled and pull its (large) image before its
#: startup budget starts counting.
PULL_AND_SCHEDULE_SECONDS = 900


# Non-root user of the rayproject/ray image; the others run fine under the same id.
RUN_AS_USER = 1000


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aistack.render", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


#: libyaml's loader when PyYAML was built with it (the wheels are): the same safe YAML,
#: about ten times faster than the pure-Python one, which took most of a reconcile's time.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def fill_template(template_name: str, /, **context: Any) -> list[Manifest]:
    text = _environment().get_template(template_name).render(**context)
    return [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc]


def container_resources(res: ResourceRequirements, gpus: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if res.requests:
        out["requests"] = dict(res.requests)
    limits = dict(res.limits)
    if gpus:
        limits[GPU_RESOURCE] = gpus
    if limits:
        out["limits"] = limits
    return out


def tolerations(user: list[Toleration], gpu: bool) -> list[dict[str, Any]]:
    out = [GPU_TOLERATION] if gpu else []
    out += [t.model_dump(exclude_none=True) for t in user]
    return out


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(read_only_root: bool = False) -> dict[str, Any]:
    """``read_only_root`` only where the conformance suite runs the program with a
    read-only root (MLflow, the adapters' init containers). vLLM compiles kernels, Ray
    writes session files and LiteLLM rewrites its UI files at start: their root
    filesystems stay writable; /tmp and caches are volumes anyway."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
    }


def secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    """An environment variable read from a Secret: secrets never appear in manifests."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def part_record(image: str | None, providers: Sequence[ProviderSpec] = ()) -> dict[str, Any]:
    """What another part's Deployments run that was judged: the image the stack names for
    it; for the gateway, also the hosted providers it sends prompts to (the permitted
    ones)."""
    record: dict[str, Any] = {"image": image}
    if providers:
        record["providers"] = [p.model_dump(by_alias=True, exclude_none=True) for p in providers]
    return record


def annotate_licensed(manifests: list[Manifest], record: Mapping[str, Any]) -> list[Manifest]:
    """Put ``record`` on every workload (Deployment, LeaderWorkerSet) of ``manifests`` (on
    the workload, not its pods: a change of it rolls nothing)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    for manifest in manifests:
        if manifest["kind"] in WORKLOAD_KINDS:
            manifest["metadata"].setdefault("annotations", {})[names.LICENSED_ANNOTATION] = text
    return manifests


def block(manifests: list[Manifest]) -> list[Manifest]:
    """A part that may not run: every workload of it at zero replicas, marked (its other
    objects stay, so that a policy change back is cheap)."""
    for manifest in manifests:
        if manifest["kind"] in WORKLOAD_KINDS:
            manifest["spec"]["replicas"] = 0
            annotations = manifest["metadata"].setdefault("annotations", {})
            annotations[names.LICENSE_BLOCKED_ANNOTATION] = "true"
    return manifests


def render_yaml(manifests: list[Manifest]) -> str:
    """Multi-document YAML, like ``helm template``."""
    return dump_all(manifests)
