"""LoRA adapters against the real API server and the real operator: the webhook refuses a
non-commercial adapter naming the model, the adapter and the license; a policy change that
denies a running adapter later unloads and unroutes it while its model keeps serving."""

from __future__ import annotations

from typing import Any

from operator_process import OperatorProcess
from stacks import (
    apply,
    conditions,
    default_policy,
    deployments,
    events,
    get_stack,
    load,
    routes,
    wait_phase,
)

BASE = "microsoft/phi-4"  # MIT on its model card
PERMITTED = {"name": "support", "source": "example-org/phi-4-support-lora",
             "revision": "5f0c3e1a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e",
             "license": "Apache-2.0"}  # fmt: skip
NON_COMMERCIAL = {"name": "research", "source": "example-org/phi-4-research-lora",
                  "license": "CC-BY-NC-4.0"}  # fmt: skip
#: Nothing verifies the licenses these made-up repos declare (no catalog entry, no Hub
#: here): the policies these tests need are ones that trust a declaration.
TRUST_DECLARED = {"unverified": {"huggingFace": "Trust"}}


def lora_stack(*adapters: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    doc = load("quickstart.yaml")
    doc["spec"]["models"] = [
        {"name": "base", "source": BASE, "replicas": replicas, "adapters": list(adapters)}
    ]
    doc["spec"]["ray"] = {"enabled": False}
    return doc


def vllm_args(cluster: Any, ns: str) -> list[str]:
    deployment = deployments(cluster, ns)["quickstart-vllm-base"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container["args"]  # type: ignore[no-any-return]


def adapters(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in stack["status"]["models"][0].get("adapters", [])}


def test_a_non_commercial_adapter_is_refused_at_apply_time(
    cluster: Any, governed: OperatorProcess, namespace: str, policy: Any
) -> None:
    # Under the built-in default a declared license nothing verified permits nothing, and a
    # declared non-commercial one is denied all the same.
    result = apply(cluster, lora_stack(PERMITTED, NON_COMMERCIAL), namespace)
    assert result.returncode != 0
    assert "admission webhook" in result.stderr
    assert (
        "adapter research of model base: example-org/phi-4-research-lora is under "
        "CC-BY-NC-4.0, which policy default denies"
    ) in result.stderr
    assert (
        "adapter support of model base: example-org/phi-4-support-lora@"
        f"{PERMITTED['revision']} declares Apache-2.0, but neither the catalog nor the Hugging "
        "Face Hub confirmed it, and policy default does not permit licenses only a stack "
        "declares (unverified.huggingFace: Deny)"
    ) in result.stderr
    assert cluster.kubectl("get", "aistack", "quickstart", "-n", namespace, check=False).returncode

    # The default's lists, trusting declarations: only the non-commercial adapter is refused.
    name = policy(**default_policy(**TRUST_DECLARED))
    result = apply(cluster, lora_stack(PERMITTED, NON_COMMERCIAL), namespace)
    assert result.returncode != 0
    assert "admission webhook" in result.stderr
    assert (
        "adapter research of model base: example-org/phi-4-research-lora is under "
        f"CC-BY-NC-4.0, which policy {name} denies"
    ) in result.stderr
    assert "support" not in result.stderr.split("denied the request:")[-1]
    assert cluster.kubectl("get", "aistack", "quickstart", "-n", namespace, check=False).returncode

    # Without it, the stack is admitted and serves the permitted adapter on its model.
    result = apply(cluster, lora_stack(PERMITTED), namespace)
    assert result.returncode == 0, result.stderr
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    support = adapters(stack)["support"]
    assert (support["permitted"], support["license"], support["licenseSource"]) == (
        True, "Apache-2.0", "Declared",
    )  # fmt: skip
    assert support["revision"] == PERMITTED["revision"]
    assert routes(cluster, namespace, "quickstart") == ["base", "support"]
    args = vllm_args(cluster, namespace)
    assert "--enable-lora" in args and "support=/cache/adapters/support" in args


def test_a_policy_change_that_denies_an_adapter_unroutes_it_and_the_base_keeps_serving(
    cluster: Any, governed: OperatorProcess, namespace: str, policy: Any
) -> None:
    custom = {**NON_COMMERCIAL, "license": "LicenseRef-example-research"}
    name = policy(allow=["MIT", "Apache-2.0", "LicenseRef-example-research"], **TRUST_DECLARED)
    result = apply(cluster, lora_stack(PERMITTED, custom, replicas=2), namespace)
    assert result.returncode == 0, result.stderr
    wait_phase(cluster, namespace, "quickstart", "Ready")
    assert routes(cluster, namespace, "quickstart") == ["base", "support", "research"]

    # Legal withdraws the approval of the research adapter's license.
    policy(name=name, allow=["MIT", "Apache-2.0"], **TRUST_DECLARED)
    stack = wait_phase(cluster, namespace, "quickstart", "Degraded")
    research = adapters(stack)["research"]
    assert (research["permitted"], research["reason"]) == (False, "LicenseNotAllowed")
    assert research["message"].startswith("adapter research of model base:")
    assert adapters(stack)["support"]["permitted"] is True
    assert routes(cluster, namespace, "quickstart") == ["base", "support"]
    args = vllm_args(cluster, namespace)
    assert "support=/cache/adapters/support" in args
    assert not [a for a in args if a.startswith("research=")]
    assert conditions(stack)["LicenseCompliant"]["status"] == "False"
    assert ("Warning", "AdapterBlocked") in events(cluster, namespace, "quickstart")

    # The base model rolls to its new template and keeps serving: Ready, both replicas.
    def base_ready() -> dict[str, Any] | None:
        stack = get_stack(cluster, namespace, "quickstart")
        model = stack["status"]["models"][0]
        ok = model["reason"] == "Ready" and model["readyReplicas"] == 2
        return stack if ok and stack["status"]["phase"] == "Degraded" else None

    stack = cluster.wait_until(base_ready, timeout=90, interval=1, message="base Ready")
    assert conditions(stack)["ModelsReady"]["status"] == "True"
    assert deployments(cluster, namespace)["quickstart-vllm-base"]["spec"]["replicas"] == 2

    # Approved again: it is loaded and routed again.
    policy(name=name, allow=["MIT", "Apache-2.0", "LicenseRef-example-research"], **TRUST_DECLARED)
    wait_phase(cluster, namespace, "quickstart", "Ready")
    assert routes(cluster, namespace, "quickstart") == ["base", "support", "research"]
