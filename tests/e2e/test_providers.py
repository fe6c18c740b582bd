"""Hosted providers against the real API server and the real operator: prompts leave the
cluster only for providers a LicensePolicy allows. The webhook refuses a stack that routes
to a provider no policy allows, naming the route and the provider; a policy change that
withdraws a provider removes its route (and its key) at the next reconcile."""

from __future__ import annotations

import uuid
from typing import Any

from operator_process import OperatorProcess
from stacks import apply, conditions, deployments, events, get_stack, load, routes, wait_phase

GPT = {"name": "gpt", "provider": "openai", "model": "gpt-4o-mini",
       "credentialsSecretRef": {"name": "llm-keys", "key": "openai"}}  # fmt: skip
LICENSES = ["MIT", "Apache-2.0"]


def hybrid() -> dict[str, Any]:
    doc = load("quickstart.yaml")
    doc["spec"]["ray"] = {"enabled": False}
    doc["spec"]["gateway"] = {
        "authSecretRef": {"name": "gateway-key", "key": "key"},
        "providers": [GPT],
        "fallbacks": [{"model": "phi-3-5-mini", "to": ["gpt"]}],
        "limits": [{"route": "gpt", "rpm": 60}],
    }
    return doc


def keys(cluster: Any, ns: str) -> None:
    """The gateway's key, and the provider's in a Secret that opted in to being one, so
    that what is judged is where prompts go."""
    for name, key, labels in (
        ("gateway-key", "key", {}),
        ("llm-keys", "openai", {"aistack.dev/provider-credentials": "true"}),
    ):
        cluster.apply({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": name, "labels": labels},
                       "stringData": {key: f"sk-{uuid.uuid4().hex}"}}, namespace=ns)  # fmt: skip


def gateway_env(cluster: Any, ns: str) -> list[str]:
    deployment = deployments(cluster, ns)["quickstart-gateway"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return [e["name"] for e in container.get("env", [])]


def test_a_stack_routing_to_a_provider_no_policy_allows_is_refused(
    cluster: Any, governed: OperatorProcess, namespace: str
) -> None:
    # No LicensePolicy in the cluster: the built-in default allows no provider.
    keys(cluster, namespace)
    result = apply(cluster, hybrid(), namespace)
    assert result.returncode != 0
    assert "admission webhook" in result.stderr
    assert (
        "route gpt sends prompts to provider openai (gpt-4o-mini) at api.openai.com, which "
        "policy default does not allow"
    ) in result.stderr
    assert cluster.kubectl("get", "aistack", "quickstart", "-n", namespace, check=False).returncode


def test_a_policy_change_removes_a_providers_route(
    cluster: Any, governed: OperatorProcess, namespace: str, policy: Any
) -> None:
    name = policy(allow=LICENSES, providers={"allow": ["openai"]})
    keys(cluster, namespace)
    result = apply(cluster, hybrid(), namespace)
    assert result.returncode == 0, result.stderr
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    assert routes(cluster, namespace, "quickstart") == ["phi-3-5-mini", "gpt"]
    listed = {r["name"]: r for r in stack["status"]["gateway"]["routes"]}
    assert (listed["gpt"]["kind"], listed["gpt"]["target"], listed["gpt"]["permitted"]) == (
        "Provider", "openai/gpt-4o-mini", True,
    )  # fmt: skip
    assert listed["phi-3-5-mini"]["kind"] == "Model"
    assert "AISTACK_PROVIDER_GPT_KEY" in gateway_env(cluster, namespace)

    # The admin withdraws OpenAI: the route and its key leave the gateway.
    policy(name=name, allow=LICENSES)
    stack = wait_phase(cluster, namespace, "quickstart", "Degraded")
    gpt = {r["name"]: r for r in stack["status"]["gateway"]["routes"]}["gpt"]
    assert (gpt["permitted"], gpt["reason"]) == (False, "ProviderNotAllowed")
    assert routes(cluster, namespace, "quickstart") == ["phi-3-5-mini"]
    assert "AISTACK_PROVIDER_GPT_KEY" not in gateway_env(cluster, namespace)
    assert conditions(stack)["LicenseCompliant"]["status"] == "False"
    assert conditions(stack)["ModelsReady"]["status"] == "True"
    assert ("Warning", "ProviderBlocked") in events(cluster, namespace, "quickstart")

    # Allowed again: the route comes back.
    policy(name=name, allow=LICENSES, providers={"allow": ["openai"]})
    wait_phase(cluster, namespace, "quickstart", "Ready")
    assert routes(cluster, namespace, "quickstart") == ["phi-3-5-mini", "gpt"]
    assert get_stack(cluster, namespace, "quickstart")["status"]["phase"] == "Ready"
