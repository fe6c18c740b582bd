"""The license gate without its webhook, against the real API server and the real operator
(run without ``--webhook-port``; no other webhook judges AIStacks meanwhile).

What the API server refuses by itself (the CRD's schema and CEL rules) holds with no
webhook at all. What gets stored anyway, a spec the operator cannot read (an edit made
while the webhook was off, or a stack stored before a CEL rule existed), does not freeze
enforcement: its model keeps serving what it served, and a policy that no longer permits
that stops it, while the parts that are permitted keep running."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from operator_process import REPO_ROOT, OperatorProcess
from stacks import conditions, deployments, get_stack, load, pods, wait_phase

from aistack.api import rules

NC = "CohereForAI/c4ai-command-r-plus"  # CC-BY-NC-4.0
PHI = "microsoft/phi-4"  # MIT
CRD = REPO_ROOT / "crds" / "aistack.dev_aistacks.yaml"
BLOCKED = "aistack.dev/license-blocked"
MODEL_PODS = "aistack.dev/stack=quickstart,app.kubernetes.io/component=model-server"


def aistack_webhooks(cluster: Any) -> list[str]:
    """The admission webhooks that judge AIStacks in any namespace."""
    found = []
    for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        for config in cluster.get_json(kind)["items"]:
            for hook in config.get("webhooks") or []:
                resources = {r for rule in hook.get("rules") or [] for r in rule["resources"]}
                if resources & {"aistacks", "*"}:
                    found.append(f"{config['metadata']['name']}/{hook['name']}")
    return found


def stack(**spec: Any) -> dict[str, Any]:
    doc = load("quickstart.yaml")
    doc["spec"] = {"models": [{"name": "m", "source": PHI, "gpus": 1}],
                   "ray": {"enabled": False}, **spec}  # fmt: skip
    return doc


def dry_run(cluster: Any, doc: dict[str, Any], ns: str) -> Any:
    return cluster.kubectl(
        "create", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(doc), check=False
    )


GATEWAY_KEY = {"name": "gateway-key", "key": "key"}
GPT = {"name": "gpt", "provider": "openai", "model": "gpt-4o-mini",
       "credentialsSecretRef": {"name": "llm-keys", "key": "openai"}}  # fmt: skip
ADAPTER = {"name": "shared", "source": "pvc://loras/shared", "license": "MIT"}

REFUSED_BY_THE_API_SERVER = {
    "adapter-name-on-two-models": (
        stack(models=[{"name": "a", "source": PHI, "adapters": [ADAPTER]},
                      {"name": "b", "source": PHI, "adapters": [ADAPTER]}]),
        rules.UNIQUE_ADAPTER_NAMES,
    ),
    "fallback-to-an-unknown-route": (
        stack(gateway={"fallbacks": [{"model": "m", "to": ["retired"]}]}),
        rules.UNKNOWN_ROUTE,
    ),
    "limit-on-an-unknown-route": (
        stack(gateway={"limits": [{"route": "retired", "rpm": 10}]}), rules.UNKNOWN_ROUTE,
    ),
    "openai-redirected-by-api-base": (
        stack(gateway={"authSecretRef": GATEWAY_KEY,
                       "providers": [{**GPT, "apiBase": "https://llm.example.net/v1"}]}),
        rules.PROVIDER_FIXED_ENDPOINT,
    ),
    "providers-on-an-open-gateway": (
        stack(gateway={"providers": [GPT]}), rules.PROVIDERS_NEED_AUTH,
    ),
    "source-climbing-out-of-its-claim": (
        stack(models=[{"name": "m", "source": "pvc://weights/../other", "license": "MIT"}]),
        "spec.models[0].source",
    ),
}  # fmt: skip


def test_the_api_server_alone_refuses_what_the_operator_would(
    cluster: Any, crds: None, namespace: str
) -> None:
    assert aistack_webhooks(cluster) == []
    # What the cases use, used as the rules want it, is admitted: each is refused by its rule.
    valid = stack(models=[{"name": "a", "source": PHI, "adapters": [ADAPTER]},
                          {"name": "b", "source": "pvc://weights/phi", "license": "MIT"}],
                  gateway={"authSecretRef": GATEWAY_KEY, "providers": [GPT],
                           "fallbacks": [{"model": "a", "to": ["gpt"]}],
                           "limits": [{"route": "shared", "rpm": 10}]})  # fmt: skip
    assert dry_run(cluster, valid, namespace).returncode == 0
    for case, (doc, says) in REFUSED_BY_THE_API_SERVER.items():
        result = dry_run(cluster, doc, namespace)
        assert result.returncode != 0, f"{case}: admitted"
        assert says in result.stderr, f"{case}: {result.stderr}"
        assert "webhook" not in result.stderr, f"{case}: {result.stderr}"
    assert cluster.get_json("aistacks", "-n", namespace)["items"] == []


# ----------------------------------------------------------------- a spec it cannot read


def crd_without_the_fallback_rule() -> dict[str, Any]:
    """The AIStack CRD as it was before fallbacks naming an unknown route were a CEL rule."""
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    kept = [
        r for r in spec["x-kubernetes-validations"] if "self.gateway.fallbacks" not in r["rule"]
    ]
    assert len(kept) == len(spec["x-kubernetes-validations"]) - 1
    spec["x-kubernetes-validations"] = kept
    return crd  # type: ignore[no-any-return]


def store_past_a_cel_rule(cluster: Any, ns: str, doc: dict[str, Any]) -> None:
    """Store ``doc``, which the current CRD refuses, under the CRD without that rule; then
    the current CRD again."""
    # A dry-run create under another name says which CRD the API server serves.
    probe = copy.deepcopy(doc)
    probe["metadata"]["name"] = "probe"
    crd_apply = ("apply", "--server-side", "--force-conflicts", "-f")
    try:
        cluster.kubectl(*crd_apply, "-", input=json.dumps(crd_without_the_fallback_rule()))
        cluster.wait_until(lambda: dry_run(cluster, probe, ns).returncode == 0, timeout=30,
                           message="the older CRD to be served")  # fmt: skip
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))
    finally:
        cluster.kubectl(*crd_apply, str(CRD))

    def refused_again() -> bool:
        result = dry_run(cluster, probe, ns)
        return result.returncode != 0 and rules.UNKNOWN_ROUTE in result.stderr

    cluster.wait_until(refused_again, timeout=30, message="the current CRD to be served again")


def unreadable_by_an_edit(cluster: Any, ns: str, doc: dict[str, Any]) -> str:
    """An edit made while no webhook judged it: a draft model smuggled in as a flag, which
    no CEL rule reads."""
    doc = copy.deepcopy(doc)
    flag = json.dumps({"model": NC, "num_speculative_tokens": 5})
    doc["spec"]["models"][0]["extraArgs"] = ["--speculative-config", flag]
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))
    return "spec.models[0].extraArgs[0]: --speculative-config is set by the operator"


def unreadable_by_an_older_crd(cluster: Any, ns: str, doc: dict[str, Any]) -> str:
    doc = copy.deepcopy(doc)
    doc["spec"]["gateway"] = {"fallbacks": [{"model": "m", "to": ["retired"]}]}
    store_past_a_cel_rule(cluster, ns, doc)
    return rules.UNKNOWN_ROUTE


@pytest.mark.parametrize(
    "make_unreadable", [unreadable_by_an_edit, unreadable_by_an_older_crd],
    ids=["edited-without-the-webhook", "stored-before-a-cel-rule"],
)  # fmt: skip
def test_a_stack_the_operator_cannot_read_is_still_judged_by_what_it_runs(
    cluster: Any, operator: OperatorProcess, namespace: str, policy: Callable[..., str],
    make_unreadable: Callable[[Any, str, dict[str, Any]], str],
) -> None:  # fmt: skip
    assert aistack_webhooks(cluster) == []
    doc = stack()
    cluster.apply(doc, namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")
    template = deployments(cluster, namespace)["quickstart-vllm-m"]["spec"]["template"]
    says = make_unreadable(cluster, namespace, doc)

    stack_now = wait_phase(cluster, namespace, "quickstart", "Degraded")
    ready, compliant = conditions(stack_now)["Ready"], conditions(stack_now)["LicenseCompliant"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert says in ready["message"], ready["message"]
    assert (compliant["status"], compliant["reason"]) == ("True", "LicensesPermitted")
    # Nothing of the unreadable spec was rendered; what ran before keeps running.
    model = deployments(cluster, namespace)["quickstart-vllm-m"]
    assert model["spec"]["template"] == template
    assert "--speculative-config" not in json.dumps(model["spec"]["template"])
    assert model["spec"]["replicas"] == 1 and model["status"].get("readyReplicas") == 1
    (pod,) = pods(cluster, namespace, MODEL_PODS)
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"

    # The policy no longer permits the model's license: the model stops; MLflow runs on.
    name = policy(allow=["Apache-2.0"])

    def stopped() -> dict[str, Any] | None:
        found = deployments(cluster, namespace)["quickstart-vllm-m"]
        return found if found["spec"]["replicas"] == 0 else None

    model = cluster.wait_until(stopped, timeout=60, message="the model to be scaled to zero")
    assert model["metadata"]["annotations"][BLOCKED] == "true"
    cluster.wait_until(
        lambda: not pods(cluster, namespace, MODEL_PODS),
        timeout=60, message="the model's pods to go",
    )  # fmt: skip

    def reported() -> dict[str, Any] | None:
        found = conditions(get_stack(cluster, namespace, "quickstart"))["LicenseCompliant"]
        return found if found["status"] == "False" else None

    compliant = cluster.wait_until(reported, timeout=30, message="LicenseCompliant False")
    assert compliant["reason"] == "LicenseNotAllowed"
    assert compliant["message"].startswith("Deployment quickstart-vllm-m: ")
    assert f"{PHI} is under MIT, which policy {name} does not allow" in compliant["message"]
    ready = conditions(get_stack(cluster, namespace, "quickstart"))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    mlflow = deployments(cluster, namespace)["quickstart-mlflow"]
    assert mlflow["spec"]["replicas"] == 1 and mlflow["status"].get("readyReplicas") == 1
    assert BLOCKED not in mlflow["metadata"].get("annotations", {})
    assert deployments(cluster, namespace)["quickstart-gateway"]["spec"]["replicas"] == 1

    # The spec fixed and the policy gone: the model serves again.
    cluster.kubectl("delete", "licensepolicy", name)
    cluster.apply(doc, namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")
    model = deployments(cluster, namespace)["quickstart-vllm-m"]
    assert model["spec"]["replicas"] == 1
    # The mark the stop left (a merge patch's, which server-side apply does not own) goes.
    assert BLOCKED not in model["metadata"].get("annotations", {})
