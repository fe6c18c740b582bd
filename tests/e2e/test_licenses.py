"""License governance against the real API server: the webhook refuses denied models at
`kubectl apply`, Warn mode admits them with a warning, and a policy change re-evaluates
running stacks (a model that becomes denied stops and loses its route; allowed again, it
comes back)."""

from __future__ import annotations

import json
import signal
from typing import Any

from operator_process import OperatorProcess
from stacks import apply, conditions, deployments, events, get_stack, load, routes, wait_phase

NC_MODEL = "CohereForAI/c4ai-command-r-plus"  # CC-BY-NC-4.0 on its model card
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"  # LicenseRef-llama3.1


def stack_with(*sources: str) -> dict[str, Any]:
    doc = load("quickstart.yaml")
    doc["spec"]["models"] = [
        {"name": f"m{i}", "source": s, "gpus": 1} for i, s in enumerate(sources)
    ]
    doc["spec"]["ray"] = {"enabled": False}
    return doc


def test_a_non_commercial_model_is_refused_at_apply_time(
    cluster: Any, governed: OperatorProcess, namespace: str
) -> None:
    result = apply(cluster, stack_with("microsoft/phi-4", NC_MODEL), namespace)
    assert result.returncode != 0
    assert "admission webhook" in result.stderr
    assert f"{NC_MODEL} is under CC-BY-NC-4.0, which policy default denies" in result.stderr
    assert (
        cluster.kubectl("get", "aistack", "quickstart", "-n", namespace, check=False).returncode
        != 0
    )


def test_warn_mode_admits_with_a_warning_and_reports_it(
    cluster: Any, governed: OperatorProcess, namespace: str, policy: Any
) -> None:
    policy(allow=["MIT", "Apache-2.0"], deny=["CC-BY-NC-4.0"], enforcement="Warn")
    result = apply(cluster, stack_with(NC_MODEL), namespace)
    assert result.returncode == 0, result.stderr
    assert "Warning:" in result.stderr and "Warn: deployed anyway" in result.stderr
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    cond = conditions(stack)
    assert cond["LicenseCompliant"]["status"] == "False"
    assert cond["LicenseCompliant"]["reason"] == "LicenseDenied"
    model = stack["status"]["models"][0]
    assert (model["permitted"], model["license"], model["licenseSource"]) == (
        True,
        "CC-BY-NC-4.0",
        "Catalog",
    )
    assert routes(cluster, namespace, "quickstart") == ["m0"]


def test_a_policy_change_re_evaluates_running_stacks(
    cluster: Any, governed: OperatorProcess, namespace: str, policy: Any
) -> None:
    name = policy(allow=["MIT", "Apache-2.0", "LicenseRef-llama3.1"])
    assert apply(cluster, stack_with("microsoft/phi-4", LLAMA), namespace).returncode == 0
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    assert routes(cluster, namespace, "quickstart") == ["m0", "m1"]
    assert stack["status"]["models"][1]["license"] == "LicenseRef-llama3.1"

    # Legal withdraws the Llama approval: the running model stops and loses its route.
    policy(name=name, allow=["MIT", "Apache-2.0"])
    stack = wait_phase(cluster, namespace, "quickstart", "Degraded")
    llama = stack["status"]["models"][1]
    assert (llama["permitted"], llama["reason"]) == (False, "LicenseNotAllowed")
    assert "which policy" in llama["message"] and "does not allow" in llama["message"]
    assert deployments(cluster, namespace)["quickstart-vllm-m1"]["spec"]["replicas"] == 0
    assert routes(cluster, namespace, "quickstart") == ["m0"]
    assert ("Warning", "ModelBlocked") in events(cluster, namespace, "quickstart")
    assert conditions(stack)["LicenseCompliant"]["status"] == "False"

    # Approved again: it comes back.
    policy(name=name, allow=["MIT", "Apache-2.0", "LicenseRef-llama3.1"])
    wait_phase(cluster, namespace, "quickstart", "Ready")
    assert deployments(cluster, namespace)["quickstart-vllm-m1"]["spec"]["replicas"] == 1
    assert routes(cluster, namespace, "quickstart") == ["m0", "m1"]


def test_every_model_blocked_is_blocked_and_dry_run_only_reports(
    cluster: Any, governed: OperatorProcess, namespace: str, policy: Any
) -> None:
    name = policy(allow=["MIT"], enforcement="DryRun")
    result = apply(cluster, stack_with(LLAMA), namespace)
    assert result.returncode == 0 and "Warning:" not in result.stderr
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    assert conditions(stack)["LicenseCompliant"]["status"] == "False"
    assert "DryRun: only reported" in conditions(stack)["LicenseCompliant"]["message"]

    policy(name=name, allow=["MIT"], enforcement="Deny")
    stack = wait_phase(cluster, namespace, "quickstart", "Blocked")
    assert conditions(stack)["ModelsReady"]["reason"] == "AllModelsBlocked"
    assert get_stack(cluster, namespace, "quickstart")["status"]["modelsReady"] == "0/1"


def test_a_policy_with_an_unparseable_id_says_so_in_its_status(
    cluster: Any, governed: OperatorProcess, policy: Any
) -> None:
    name = policy(allow=["MIT", "Apache 2"], deny=["CC-BY-NC-4.0"])

    def valid_condition() -> dict[str, Any] | None:
        status = cluster.get_json("licensepolicy", name).get("status", {})
        return next((c for c in status.get("conditions", []) if c["type"] == "Valid"), None)

    cond = cluster.wait_until(valid_condition, timeout=30, message="the policy's status")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidLicenseIds")
    assert "spec.allow" in cond["message"] and "Apache 2" in cond["message"]


def test_with_the_webhook_unreachable_stacks_are_refused_until_it_is_back(
    cluster: Any, governed: OperatorProcess, namespace: str
) -> None:
    """Fail closed: no operator answering means no stack gets past license enforcement."""
    config = json.loads(cluster.kubectl(
        "get", "validatingwebhookconfigurations", "-o", "json"
    ).stdout)["items"]  # fmt: skip
    ours = [c for c in config if c["metadata"]["name"].endswith(".aistack.dev")]
    assert ours and all(w["failurePolicy"] == "Fail" for c in ours for w in c["webhooks"])
    # SIGKILL: a crashed operator leaves its webhook registered (on a clean stop kopf
    # removes the configuration it manages).
    governed.stop(signal.SIGKILL)
    try:
        result = apply(cluster, stack_with("microsoft/phi-4"), namespace)
        assert result.returncode != 0
        assert "failed calling webhook" in result.stderr, result.stderr
        assert cluster.get_json("aistacks", "-n", namespace)["items"] == []
    finally:
        governed.start()

    def admitted() -> bool:
        again = apply(cluster, stack_with("microsoft/phi-4"), namespace)
        return again.returncode == 0

    cluster.wait_until(admitted, timeout=60, message="the webhook to admit again")
