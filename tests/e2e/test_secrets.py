"""Secrets never leak: HF tokens, gateway keys, hosted providers' API keys, database URIs
and object-store credentials reach pods only as references to their Secrets. The values
used here are random; after the stack is Ready, none of them appears in any object the
operator made, any pod, any Event, the stack's status, the operator's (verbose) log or
`aistack render`'s output."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess
from stacks import wait_phase


def secret(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": labels or {}}, "stringData": data}  # fmt: skip


def env_refs(pod_spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Env name -> (secret, key) for every env var that reads a Secret."""
    out = {}
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                out[e["name"]] = (ref["name"], ref["key"])
    return out


@pytest.fixture
def openai_allowed(cluster: Any) -> Iterator[None]:
    """A LicensePolicy that lets the gateway route to OpenAI (none does by default)."""
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "aistack.dev/v1alpha1", "kind": "LicensePolicy",
                   "metadata": {"name": name},
                   "spec": {"allow": ["MIT"], "providers": {"allow": ["openai"]}}})  # fmt: skip
    yield
    cluster.kubectl("delete", "licensepolicy", name, check=False)


def test_secret_values_reach_pods_only_by_reference(
    cluster: Any, operator: OperatorProcess, namespace: str, tmp_path: Path, openai_allowed: None
) -> None:
    keys = ("hf", "key", "uri", "dest", "aws", "provider")
    values = {k: f"{k}-{uuid.uuid4().hex}" for k in keys}
    for s in (
        secret("hf-token", token=values["hf"]),
        secret("gateway-key", key=values["key"]),
        # Opted in to being a provider's key: the gateway is sent no other Secret.
        secret(
            "provider-key", {"aistack.dev/provider-credentials": "true"}, openai=values["provider"]
        ),
        secret("mlflow-db", uri=f"postgresql://u:{values['uri']}@db:5432/mlflow"),
        secret("mlflow-artifacts", destination=f"s3://bucket/{values['dest']}"),
        secret("s3-creds", AWS_SECRET_ACCESS_KEY=values["aws"], AWS_ACCESS_KEY_ID="id"),
    ):
        cluster.apply(s, namespace=namespace)
    stack = {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": "guarded", "namespace": namespace},
        "spec": {
            "models": [
                {
                    "name": "gated",
                    "source": "microsoft/Phi-3.5-mini-instruct",
                    "hfTokenSecretRef": {"name": "hf-token", "key": "token"},
                },
                {
                    "name": "from-s3",
                    "source": "s3://models/phi",
                    "license": "MIT",
                    "credentialsSecretRef": {"name": "s3-creds"},
                },
            ],
            "ray": {"enabled": False},
            "mlflow": {
                "backendStore": {"uriSecretRef": {"name": "mlflow-db", "key": "uri"}},
                "artifactStore": {
                    "destinationSecretRef": {"name": "mlflow-artifacts", "key": "destination"},
                    "credentialsSecretRef": {"name": "s3-creds"},
                },
            },
            "gateway": {
                "authSecretRef": {"name": "gateway-key", "key": "key"},
                "providers": [
                    {
                        "name": "gpt",
                        "provider": "openai",
                        "model": "gpt-4o-mini",
                        "credentialsSecretRef": {"name": "provider-key", "key": "openai"},
                    },
                ],
            },
        },
    }
    cluster.apply(stack, namespace=namespace)
    wait_phase(cluster, namespace, "guarded", "Ready")

    # Pods read the Secrets by reference.
    pods = cluster.get_json("pods", "-n", namespace, "-l", "aistack.dev/stack=guarded")["items"]
    refs: dict[str, tuple[str, str]] = {}
    env_from: set[str] = set()
    for pod in pods:
        refs.update(env_refs(pod["spec"]))
        for c in pod["spec"]["containers"]:
            env_from |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
    assert ("hf-token", "token") in refs.values(), refs
    assert ("gateway-key", "key") in refs.values(), refs
    assert ("provider-key", "openai") in refs.values(), refs
    assert ("mlflow-db", "uri") in refs.values(), refs
    assert ("mlflow-artifacts", "destination") in refs.values(), refs
    assert env_from == {"s3-creds"}, env_from

    # ... and their values are nowhere else.
    everything = cluster.kubectl(
        "get",
        "deployments,replicasets,statefulsets,services,configmaps,persistentvolumeclaims,"
        "networkpolicies,poddisruptionbudgets,pods,events,aistacks",
        "-n",
        namespace,
        "-o",
        "json",
    ).stdout
    assert '"guarded"' in everything and "gateway-key" in everything  # the haystack is real
    status = json.dumps(cluster.get_json("aistack", "guarded", "-n", namespace)["status"])
    stack_file = tmp_path / "stack.json"
    stack_file.write_text(json.dumps(stack))
    rendered = subprocess.run(
        [str(Path(sys.executable).parent / "aistack"), "render", "-f", str(stack_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "secretKeyRef" in rendered
    log = operator.log()
    assert "guarded" in log  # the operator did log about this stack
    for name, value in values.items():
        for where, text in (
            ("objects", everything),
            ("status", status),
            ("render", rendered),
            ("operator log", log),
        ):
            assert value not in text, f"the {name} secret value leaked into the {where}"
