"""Every pod the operator renders (vLLM, Ray, MLflow, gateway) is admitted by the real API
server in a namespace that enforces the `restricted` Pod Security Standard.

Each rendered pod template becomes a Pod created with a server-side dry run, so Pod
Security admission judges it exactly as it would the ReplicaSet's pods. A privileged pod in
the same namespace is refused: the namespace really enforces.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_process import REPO_ROOT

from aistack.api.v1alpha1 import AIStack
from aistack.render import render

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import all_permitted


def stacks_of(path: Path, namespace: str = "default") -> list[AIStack]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "AIStack"]
    for d in docs:
        d["metadata"]["namespace"] = namespace
    return [AIStack.model_validate(d) for d in docs]


#: Every example that holds a stack (examples/argocd/stacks too).
EXAMPLES = [p for p in sorted((REPO_ROOT / "examples").rglob("*.yaml")) if stacks_of(p)]


def pod_from(obj: dict[str, Any], namespace: str, index: int) -> dict[str, Any]:
    template = obj["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{obj['metadata']['name'][:50]}-{index}",
            "namespace": namespace,
            "labels": template["metadata"].get("labels", {}),
        },
        "spec": template["spec"],
    }


@pytest.fixture
def restricted(cluster: Any, namespace: str) -> str:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    return namespace


def dry_run(cluster: Any, pod: dict[str, Any]) -> Any:
    return cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
    )


def test_the_namespace_really_enforces_restricted(cluster: Any, restricted: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": restricted},
        "spec": {
            "containers": [
                {"name": "c", "image": "busybox", "securityContext": {"privileged": True}}
            ]
        },
    }
    refused = dry_run(cluster, pod)
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr, refused.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO_ROOT / "examples")))
def test_every_rendered_pod_is_admitted_under_restricted(
    cluster: Any, restricted: str, path: Path
) -> None:
    checked: list[str] = []
    for stack in stacks_of(path, restricted):
        # Everything permitted: adapters' init containers and drafts' mounts are judged too.
        out = render(stack, all_permitted(stack))
        for i, obj in enumerate(o for o in out if "template" in o.get("spec", {})):
            pod = pod_from(obj, restricted, i)
            result = dry_run(cluster, pod)
            assert result.returncode == 0, (
                f"{obj['kind']} {obj['metadata']['name']}: {result.stderr}"
            )
            assert "PodSecurity" not in result.stderr, result.stderr
            checked.append(obj["metadata"]["name"])
    assert checked, f"{path.name}: no pod templates rendered"
