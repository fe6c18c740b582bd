"""Helpers the e2e tests share: examples as dicts, stack status, children."""

from __future__ import annotations

import json
from typing import Any

import yaml
from operator_process import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
READY_TIMEOUT = 90
DEFAULT_POLICY = REPO_ROOT / "operator" / "aistack" / "data" / "default-licensepolicy.yaml"


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    doc["metadata"].pop("namespace", None)
    return doc


def default_policy(**changes: Any) -> dict[str, Any]:
    """The built-in default LicensePolicy's spec with ``changes``: a policy of a test's own
    replaces the default (which applies only while the cluster has none), so a policy meant
    to add one thing to the default starts from it."""
    spec: dict[str, Any] = yaml.safe_load(DEFAULT_POLICY.read_text())["spec"]
    return {**spec, **changes}


def apply(cluster: Any, doc: dict[str, Any], ns: str) -> Any:
    """``kubectl apply`` of ``doc`` in ``ns``, its result whatever it is (a refusal too)."""
    return cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc), check=False)


def get_stack(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    return cluster.get_json("aistack", name, "-n", ns)  # type: ignore[no-any-return]


def conditions(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in stack.get("status", {}).get("conditions", [])}


def wait_phase(
    cluster: Any, ns: str, name: str, phase: str, timeout: float = READY_TIMEOUT
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        stack = get_stack(cluster, ns, name)
        status = stack.get("status", {})
        generation = stack["metadata"]["generation"]
        if status.get("phase") == phase and status.get("observedGeneration") == generation:
            return stack
        return None

    try:
        return cluster.wait_until(check, timeout=timeout, interval=1, message=f"{name} {phase}")  # type: ignore[no-any-return]
    except AssertionError as exc:
        stack = get_stack(cluster, ns, name)
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(stack.get('status'), indent=1)}"
        ) from None


def deployments(cluster: Any, ns: str) -> dict[str, dict[str, Any]]:
    items = cluster.get_json("deployments", "-n", ns, "-l", "aistack.dev/stack")["items"]
    return {d["metadata"]["name"]: d for d in items}


def pods(cluster: Any, ns: str, selector: str) -> list[dict[str, Any]]:
    return cluster.get_json("pods", "-n", ns, "-l", selector)["items"]  # type: ignore[no-any-return]


def routes(cluster: Any, ns: str, stack: str) -> list[str]:
    cm = cluster.get_json("configmap", f"{stack}-gateway-config", "-n", ns)
    return [r["model_name"] for r in yaml.safe_load(cm["data"]["config.yaml"])["model_list"]]


def events(cluster: Any, ns: str, name: str) -> list[tuple[str, str]]:
    items = cluster.get_json("events", "-n", ns, "--field-selector", f"involvedObject.name={name}")[
        "items"
    ]
    return [(e["type"], e["reason"]) for e in items]


def resource_versions(cluster: Any, ns: str) -> dict[str, str]:
    out = {}
    for kind in (
        "aistack", "deployments", "services", "configmaps", "persistentvolumeclaims",
        "networkpolicies", "poddisruptionbudgets",
    ):  # fmt: skip
        for item in cluster.get_json(kind, "-n", ns)["items"]:
            out[f"{item['kind']}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return out


def wait_exists(cluster: Any, kind: str, name: str, ns: str, timeout: float = 30) -> None:
    """Wait until the object exists (again), e.g. after the operator undoes a deletion."""
    cluster.wait_until(
        lambda: cluster.kubectl("get", kind, name, "-n", ns, check=False).returncode == 0,
        timeout=timeout,
        message=f"{kind} {name} to exist",
    )
