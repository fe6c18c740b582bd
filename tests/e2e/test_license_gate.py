"""The license gate's side doors, against the real API server and the real operator with
its webhook: weights smuggled in as vLLM flags, a renamed repository declared under a
false license, a hosted endpoint no policy lists, and a provider key taken from a Secret
that never opted in. Each is refused at `kubectl apply` with a message naming what was
refused and why; the way that is permitted (the field, the listed host, the labelled
Secret) is admitted and rendered; a later change (the policy's hosts, the Secret's label)
reaches the running gateway."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_process import OperatorProcess
from stacks import apply, conditions, deployments, get_stack, load, routes, wait_phase

from conftest import governed_operator

NC = "CohereForAI/c4ai-command-r-plus"  # CC-BY-NC-4.0 on its model card
CODER = "Qwen/Qwen2.5-Coder-32B-Instruct"  # Apache-2.0
DRAFT = "Qwen/Qwen2.5-Coder-7B-Instruct"  # Apache-2.0, same tokenizer: a usable draft
PHI = "microsoft/phi-4"  # MIT
LABEL = "aistack.dev/provider-credentials"
#: The operator does not watch Secrets (it may only get one's metadata by name): a label
#: removed reaches a running gateway at the stack's next reconcile, its resync at the
#: latest. Short here, so that the test sees that reconcile and need not cause one.
RESYNC_SECONDS = 5


@pytest.fixture(scope="module")
def gate(
    cluster: Any, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log_dir = tmp_path_factory.mktemp("gate")
    with governed_operator(cluster, log_dir, "--resync-interval", str(RESYNC_SECONDS)) as op:
        yield op


def stack(*models: dict[str, Any], **spec: Any) -> dict[str, Any]:
    doc = load("quickstart.yaml")
    doc["spec"] = {"models": [{"gpus": 1, **m} for m in models], "ray": {"enabled": False},
                   **spec}  # fmt: skip
    return doc


def assert_refused(cluster: Any, doc: dict[str, Any], ns: str, *says: str) -> str:
    """`kubectl apply` is refused by the webhook saying each of ``says``; nothing stored."""
    result = apply(cluster, doc, ns)
    assert result.returncode != 0, f"admitted: {result.stdout}"
    assert "admission webhook" in result.stderr, result.stderr
    for text in says:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"
    assert cluster.get_json("aistacks", "-n", ns)["items"] == []
    return str(result.stderr)


def vllm_args(cluster: Any, ns: str, model: str) -> list[str]:
    (container,) = deployments(cluster, ns)[f"quickstart-vllm-{model}"]["spec"]["template"]["spec"][
        "containers"
    ]
    return container["args"]  # type: ignore[no-any-return]


def gateway_env(cluster: Any, ns: str) -> dict[str, Any]:
    (container,) = deployments(cluster, ns)["quickstart-gateway"]["spec"]["template"]["spec"][
        "containers"
    ]
    return {e["name"]: e.get("valueFrom") for e in container.get("env", [])}


def gateway_routes(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in stack["status"]["gateway"]["routes"]}


def secret(cluster: Any, ns: str, name: str, labelled: bool = False, **data: str) -> None:
    labels = {LABEL: "true"} if labelled else {}
    cluster.apply({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name, "labels": labels}, "stringData": data},
                  namespace=ns)  # fmt: skip


# ----------------------------------------------------------------- weights as flags


SMUGGLED = [
    # (extraArgs, the flag named, the field to use instead)
    (["--speculative-config", json.dumps({"model": NC, "num_speculative_tokens": 5})],
     "--speculative-config", "spec.models[].speculative"),
    # vLLM reads underscores as dashes and dotted keys as JSON: the same flag.
    ([f"--speculative_config.model={NC}"], "--speculative-config", "spec.models[].speculative"),
    (["--lora-modules", f"research={NC}"], "--lora-modules", "spec.models[].adapters"),
    (["--tokenizer", NC], "--tokenizer", "spec.models[].source"),
]  # fmt: skip


def test_a_draft_model_is_admitted_only_as_the_field_that_judges_its_license(
    cluster: Any, gate: OperatorProcess, namespace: str
) -> None:
    for extra_args, flag, field in SMUGGLED:
        doc = stack({"name": "coder", "source": CODER, "extraArgs": extra_args})
        assert_refused(
            cluster, doc, namespace,
            f"spec.models[0].extraArgs[0]: {flag} is set by the operator from {field}",
            "use that field instead",
        )  # fmt: skip
    # Defaults for every model are judged as the model's own are.
    doc = stack({"name": "coder", "source": CODER},
                vllm={"extraArgs": ["--enforce-eager", "--trust-remote-code"]})  # fmt: skip
    assert_refused(cluster, doc, namespace, "spec.vllm.extraArgs[1]: --trust-remote-code")

    # The same draft as the field: its license is checked, like an adapter's.
    speculative = {"method": "draft_model", "source": NC, "numSpeculativeTokens": 4}
    doc = stack({"name": "coder", "source": CODER, "speculative": speculative})
    stderr = assert_refused(
        cluster, doc, namespace,
        f"draft model {NC} of model coder: {NC} is under CC-BY-NC-4.0, which policy default "
        "denies",
    )  # fmt: skip
    assert f"{CODER} is under" not in stderr, "the permitted model is not what was refused"

    # A permitted draft is admitted and rendered into vLLM's argv.
    speculative = {**speculative, "source": DRAFT}
    doc = stack({"name": "coder", "source": CODER, "speculative": speculative,
                 "extraArgs": ["--enforce-eager"]})  # fmt: skip
    result = apply(cluster, doc, namespace)
    assert result.returncode == 0, result.stderr
    status = wait_phase(cluster, namespace, "quickstart", "Ready")["status"]
    draft = status["models"][0]["speculative"]
    assert (draft["source"], draft["permitted"], draft["license"], draft["licenseSource"]) == (
        DRAFT, True, "Apache-2.0", "Catalog",
    )  # fmt: skip
    args = vllm_args(cluster, namespace, "coder")
    assert args.count("--speculative-config") == 1, args
    config = json.loads(args[args.index("--speculative-config") + 1])
    assert config == {"method": "draft_model", "num_speculative_tokens": 4, "model": DRAFT}
    assert "--enforce-eager" in args
    record = deployments(cluster, namespace)["quickstart-vllm-coder"]["metadata"]["annotations"][
        "aistack.dev/licensed"
    ]
    assert json.loads(record)["model"]["speculative"]["source"] == DRAFT


# ----------------------------------------------------------------- names


def test_a_renamed_repository_keeps_its_models_license(
    cluster: Any, gate: OperatorProcess, namespace: str, policy: Callable[..., str]
) -> None:
    """The Hub serves an old repo id as the new one: both spellings are the same weights,
    and neither can be declared into a license its card does not give."""
    renamed = [
        {"name": "command", "source": "CohereLabs/c4ai-command-r-plus", "license": "Apache-2.0"},
        {"name": "llama", "source": "meta-llama/Meta-Llama-3.1-8B-Instruct", "license": "MIT"},
    ]
    assert_refused(
        cluster, stack(*renamed), namespace,
        "CohereLabs/c4ai-command-r-plus declares Apache-2.0, but its model card says "
        "CC-BY-NC-4.0 (catalog as CohereForAI/c4ai-command-r-plus",
        "meta-llama/Meta-Llama-3.1-8B-Instruct declares MIT, but its model card says "
        "LicenseRef-llama3.1 (catalog as meta-llama/Llama-3.1-8B-Instruct",
    )  # fmt: skip

    # Under a policy that only warns, the stack runs and its status names the reason.
    policy(allow=["Apache-2.0", "MIT"], enforcement="Warn")
    result = apply(cluster, stack(*renamed), namespace)
    assert result.returncode == 0, result.stderr
    assert "Warning:" in result.stderr and "but its model card says" in result.stderr
    stack_now = wait_phase(cluster, namespace, "quickstart", "Ready")
    verdicts = {
        m["name"]: (m["license"], m["licenseSource"], m["permitted"])
        for m in stack_now["status"]["models"]
    }
    assert verdicts == {
        "command": ("CC-BY-NC-4.0", "Catalog", True),
        "llama": ("LicenseRef-llama3.1", "Catalog", True),
    }
    compliant = conditions(stack_now)["LicenseCompliant"]
    assert (compliant["status"], compliant["reason"]) == ("False", "LicenseMismatch")
    assert "CohereLabs/c4ai-command-r-plus declares Apache-2.0" in compliant["message"]
    assert "meta-llama/Meta-Llama-3.1-8B-Instruct declares MIT" in compliant["message"]
    assert "Warn: deployed anyway" in compliant["message"]


# ----------------------------------------------------------------- where prompts go


TEAM_LLM = {"name": "team-llm", "provider": "openai-compatible", "model": "llama-70b",
            "apiBase": "https://llm.example.net/v1",
            "credentialsSecretRef": {"name": "llm-keys", "key": "token"}}  # fmt: skip
GATEWAY_KEY = {"name": "gateway-key", "key": "key"}


def test_an_endpoint_is_permitted_by_its_host(
    cluster: Any, gate: OperatorProcess, namespace: str, policy: Callable[..., str]
) -> None:
    secret(cluster, namespace, "gateway-key", key=f"sk-{uuid.uuid4().hex}")
    secret(cluster, namespace, "llm-keys", labelled=True, token=uuid.uuid4().hex)
    doc = stack({"name": "m", "source": PHI},
                gateway={"authSecretRef": GATEWAY_KEY, "providers": [TEAM_LLM]})  # fmt: skip
    name = policy(allow=["MIT"], providers={"allow": ["openai-compatible"]})
    assert_refused(
        cluster, doc, namespace,
        "route team-llm sends prompts to provider openai-compatible (llama-70b) at "
        f"llm.example.net, a host policy {name} does not allow",
    )  # fmt: skip

    policy(name=name, allow=["MIT"],
           providers={"allow": ["openai-compatible"], "hosts": ["*.example.net"]})  # fmt: skip
    result = apply(cluster, doc, namespace)
    assert result.returncode == 0, result.stderr
    listed = gateway_routes(wait_phase(cluster, namespace, "quickstart", "Ready"))
    assert (listed["team-llm"]["kind"], listed["team-llm"]["permitted"]) == ("Provider", True)
    cm = cluster.get_json("configmap", "quickstart-gateway-config", "-n", namespace)
    model_list = yaml.safe_load(cm["data"]["config.yaml"])["model_list"]
    team = next(r for r in model_list if r["model_name"] == "team-llm")
    assert team["litellm_params"]["api_base"] == "https://llm.example.net/v1"
    assert "AISTACK_PROVIDER_TEAM_LLM_KEY" in gateway_env(cluster, namespace)

    # The policy moves to another host: the running gateway loses the route and its key.
    policy(name=name, allow=["MIT"],
           providers={"allow": ["openai-compatible"], "hosts": ["llm.example.org"]})  # fmt: skip
    listed = gateway_routes(wait_phase(cluster, namespace, "quickstart", "Degraded"))
    assert (listed["team-llm"]["permitted"], listed["team-llm"]["reason"]) == (
        False, "ProviderHostNotAllowed",
    )  # fmt: skip
    assert routes(cluster, namespace, "quickstart") == ["m"]
    assert "AISTACK_PROVIDER_TEAM_LLM_KEY" not in gateway_env(cluster, namespace)


GPT = {"name": "gpt", "provider": "openai", "model": "gpt-4o-mini",
       "credentialsSecretRef": {"name": "llm-keys", "key": "openai"}}  # fmt: skip


def test_a_provider_key_comes_only_from_a_secret_that_opted_in(
    cluster: Any, gate: OperatorProcess, namespace: str, policy: Callable[..., str],
    tmp_path: Path,
) -> None:  # fmt: skip
    value = f"sk-{uuid.uuid4().hex}"
    secret(cluster, namespace, "gateway-key", key=f"sk-{uuid.uuid4().hex}")
    secret(cluster, namespace, "llm-keys", openai=value)
    policy(allow=["MIT"], providers={"allow": ["openai"]})
    doc = stack({"name": "m", "source": PHI},
                gateway={"authSecretRef": GATEWAY_KEY, "providers": [GPT]})  # fmt: skip
    refusal = assert_refused(
        cluster, doc, namespace,
        f"route gpt: Secret llm-keys (key openai) is not labelled {LABEL}=true",
    )  # fmt: skip

    cluster.kubectl("label", "secret", "llm-keys", "-n", namespace, f"{LABEL}=true")
    result = apply(cluster, doc, namespace)
    assert result.returncode == 0, result.stderr
    listed = gateway_routes(wait_phase(cluster, namespace, "quickstart", "Ready"))
    assert (listed["gpt"]["target"], listed["gpt"]["permitted"]) == ("openai/gpt-4o-mini", True)
    assert routes(cluster, namespace, "quickstart") == ["m", "gpt"]
    key_ref = gateway_env(cluster, namespace)["AISTACK_PROVIDER_GPT_KEY"]["secretKeyRef"]
    assert (key_ref["name"], key_ref["key"]) == ("llm-keys", "openai")

    # The Secret's owner withdraws it: the next reconcile takes the route and the key away.
    cluster.kubectl("label", "secret", "llm-keys", "-n", namespace, f"{LABEL}-")
    stack_now = wait_phase(cluster, namespace, "quickstart", "Degraded",
                           timeout=RESYNC_SECONDS * 6)  # fmt: skip
    gpt = gateway_routes(stack_now)["gpt"]
    assert (gpt["permitted"], gpt["reason"]) == (False, "CredentialsNotOptedIn")
    assert f"Secret llm-keys (key openai) is not labelled {LABEL}=true" in gpt["message"]
    assert routes(cluster, namespace, "quickstart") == ["m"]
    assert "AISTACK_PROVIDER_GPT_KEY" not in gateway_env(cluster, namespace)
    assert conditions(stack_now)["LicenseCompliant"]["status"] == "False"
    assert get_stack(cluster, namespace, "quickstart")["status"]["models"][0]["permitted"]

    # The Secret was named everywhere; its value nowhere.
    status = json.dumps(get_stack(cluster, namespace, "quickstart")["status"])
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    log = gate.log()
    assert "llm-keys" in status and "llm-keys" in refusal and "quickstart" in events
    for where, text in (("status", status), ("Events", events), ("operator log", log),
                        ("refusal", refusal)):  # fmt: skip
        assert value not in text, f"the provider key leaked into the {where}"
