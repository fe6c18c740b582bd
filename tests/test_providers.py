"""Hosted providers behind the gateway: the API's rules, the LiteLLM routes, fallbacks and
limits rendered for them, their keys (never in the ConfigMap), and the policy over where
prompts may go."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from aistack.api import rules
from aistack.api.v1alpha1 import PROVIDERS, AIStack, AIStackStatus, LicensePolicySpec
from aistack.licenses import admission_messages, decide_stack, default_policy, policies_from
from aistack.render import render
from aistack.render.gateway import PROVIDER_PREFIX, provider_key_env
from aistack.status import Observed, compute_status, status_dict, transitions
from helpers import ROOT, stack, stack_doc
from test_status import T0, T1, deployments_for

KEY = {"name": "llm-keys", "key": "openai"}
GPT = {"name": "gpt", "provider": "openai", "model": "gpt-4o-mini", "credentialsSecretRef": KEY}
CLAUDE = {"name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5",
          "credentialsSecretRef": {"name": "llm-keys", "key": "anthropic"}}  # fmt: skip
MODEL = {"name": "m", "source": "microsoft/phi-4"}
#: The gateway's own key: a gateway with providers needs one.
AUTH = {"authSecretRef": {"name": "gateway-key", "key": "key"}}


def hybrid(*providers: dict[str, Any], **gateway: Any) -> AIStack:
    return stack(models=[MODEL], gateway={"providers": list(providers), **AUTH, **gateway})


def policy(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "aistack.dev/v1alpha1", "kind": "LicensePolicy",
            "metadata": {"name": spec.pop("name", "team")}, "spec": spec}  # fmt: skip


def allowing(*providers: str, **spec: Any) -> dict[str, Any]:
    return policy(allow=["MIT"], providers={"allow": list(providers)}, **spec)


def gateway(manifests: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The rendered gateway: its LiteLLM config, its container, the ConfigMap's text."""
    (cm,) = [m for m in manifests if m["kind"] == "ConfigMap"]
    (deploy,) = [m for m in manifests if m["metadata"]["name"] == "demo-gateway"
                 and m["kind"] == "Deployment"]  # fmt: skip
    text = cm["data"]["config.yaml"]
    return yaml.safe_load(text), deploy["spec"]["template"]["spec"]["containers"][0], text


def routes(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["model_name"]: r["litellm_params"] for r in config["model_list"]}


# ---------------------------------------------------------------- API


def test_route_names_are_unique_across_models_adapters_and_providers() -> None:
    with pytest.raises(ValidationError, match=re.escape(rules.UNIQUE_ROUTES)):
        hybrid(GPT | {"name": "m"})
    with pytest.raises(ValidationError, match=re.escape(rules.UNIQUE_ROUTES)):
        stack(models=[MODEL | {"adapters": [{"name": "gpt", "source": "o/a"}]}],
              gateway={"providers": [GPT], **AUTH})  # fmt: skip
    with pytest.raises(ValidationError, match=r"Duplicate|unique"):
        hybrid(GPT, GPT | {"model": "gpt-4o"})


def test_provider_fields_are_checked_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="provider"):
        hybrid(GPT | {"provider": "openrouter"})
    with pytest.raises(ValidationError, match=re.escape(rules.PROVIDER_API_BASE)):
        hybrid(GPT | {"provider": "openai-compatible"})
    with pytest.raises(ValidationError, match=re.escape(rules.PROVIDER_API_BASE)):
        hybrid(GPT | {"provider": "azure"})
    with pytest.raises(ValidationError, match=re.escape(rules.PROVIDER_REGION)):
        hybrid(GPT | {"provider": "bedrock", "model": "anthropic.claude-3-haiku"})
    with pytest.raises(ValidationError, match="credentialsSecretRef"):
        hybrid({k: v for k, v in GPT.items() if k != "credentialsSecretRef"})
    for bad in ("file:///etc/passwd", "https://x.example/v1 --flag", "javascript:alert(1)"):
        with pytest.raises(ValidationError, match="apiBase"):
            hybrid(GPT | {"apiBase": bad})
    with pytest.raises(ValidationError, match="model"):
        hybrid(GPT | {"model": "gpt-4o\nmaster_key: x"})


def test_fallbacks_and_limits_name_routes_of_the_stack() -> None:
    ok = hybrid(GPT, fallbacks=[{"model": "m", "to": ["gpt"]}], limits=[{"route": "gpt", "rpm": 5}])
    assert ok.spec.gateway.fallbacks[0].to == ["gpt"]
    with pytest.raises(ValidationError, match=re.escape(rules.UNKNOWN_ROUTE)):
        hybrid(GPT, fallbacks=[{"model": "m", "to": ["nope"]}])
    with pytest.raises(ValidationError, match=re.escape(rules.UNKNOWN_ROUTE)):
        hybrid(GPT, limits=[{"route": "nope", "rpm": 5}])
    with pytest.raises(ValidationError, match=re.escape(rules.FALLBACK_TO_ITSELF)):
        hybrid(GPT, fallbacks=[{"model": "gpt", "to": ["gpt"]}])
    with pytest.raises(ValidationError, match="rpm or tpm"):
        hybrid(GPT, limits=[{"route": "gpt"}])
    with pytest.raises(ValidationError, match="rpm"):
        hybrid(GPT, limits=[{"route": "gpt", "rpm": 0}])


def test_a_policy_names_known_providers_only() -> None:
    assert policies_from([allowing("openai", deny=["CC-BY-NC-4.0"])])[0].providers_allow == {
        "openai"
    }
    (unreadable,) = policies_from([allowing("openrouter")])
    assert unreadable.invalid is not None and "providers" in unreadable.invalid


# ---------------------------------------------------------------- render


def test_each_provider_becomes_a_route_whose_key_comes_from_its_secret() -> None:
    s = hybrid(GPT, CLAUDE)
    config, container, text = gateway(render(s, {"m": True, "gpt": True, "claude": True}))
    got = routes(config)
    assert got["gpt"] == {
        "model": "openai/gpt-4o-mini",
        "api_key": "os.environ/" + provider_key_env(s.spec.gateway.providers[0]),
    }
    assert got["claude"]["model"] == "anthropic/claude-sonnet-4-5"
    env = {e["name"]: e for e in container["env"]}
    for p in s.spec.gateway.providers:
        assert env[provider_key_env(p)]["valueFrom"] == {
            "secretKeyRef": p.credentials_secret_ref.model_dump()
        }
        assert got[p.name]["api_key"] == f"os.environ/{provider_key_env(p)}"
    assert "llm-keys" not in text  # the Secret is named only in the Deployment's env


def test_provider_ids_map_to_litellm_prefixes_and_their_settings() -> None:
    assert set(PROVIDER_PREFIX) == set(PROVIDERS)
    local = {
        "name": "local",
        "provider": "openai-compatible",
        "apiBase": "http://llm.example:8080/v1",
    }
    az = {"name": "az", "provider": "azure", "model": "my-deploy",
          "apiBase": "https://r.openai.azure.com"}  # fmt: skip
    br = {"name": "br", "provider": "bedrock", "model": "anthropic.claude-3-haiku",
          "region": "eu-west-1"}  # fmt: skip
    s = hybrid(GPT | local, GPT | az, GPT | br)
    got = routes(gateway(render(s, dict.fromkeys(["m", "local", "az", "br"], True)))[0])
    assert got["local"]["model"] == "openai/gpt-4o-mini"
    assert got["local"]["api_base"] == "http://llm.example:8080/v1"
    assert (got["az"]["model"], got["az"]["api_base"]) == (
        "azure/my-deploy",
        "https://r.openai.azure.com",
    )
    assert (got["br"]["model"], got["br"]["aws_region_name"]) == (
        "bedrock/anthropic.claude-3-haiku",
        "eu-west-1",
    )


def test_fallbacks_and_limits_are_in_the_config() -> None:
    limits = [{"route": "gpt", "rpm": 60, "tpm": 100000}, {"route": "m", "rpm": 600}]
    s = hybrid(GPT, CLAUDE, fallbacks=[{"model": "m", "to": ["gpt", "claude"]}], limits=limits)
    config = gateway(render(s, {"m": True, "gpt": True, "claude": True}))[0]
    assert config["router_settings"]["fallbacks"] == [{"m": ["gpt", "claude"]}]
    # The strategy that enforces deployment rpm/tpm without a database.
    assert config["router_settings"]["routing_strategy"] == "usage-based-routing-v2"
    got = routes(config)
    # One higher: LiteLLM admits rpm - 1 requests a minute (see render.LITELLM_RPM_OFFSET).
    assert (got["gpt"]["rpm"], got["gpt"]["tpm"], got["m"]["rpm"]) == (61, 100000, 601)
    assert config["router_settings"]["retry_policy"] == {"RateLimitErrorRetries": 0}
    assert "rpm" not in got["claude"]
    plain = gateway(render(hybrid(GPT), {"m": True, "gpt": True}))[0]
    assert "router_settings" not in plain


def test_the_gateways_retries_are_rendered_only_when_set() -> None:
    s = hybrid(GPT, retries=0, retryAfterSeconds=5)
    router = gateway(render(s, {"m": True, "gpt": True}))[0]["router_settings"]
    assert (router["num_retries"], router["retry_after"]) == (0, 5)
    # Unset: LiteLLM's own defaults, and a config that does not change (no rollout).
    plain = gateway(render(hybrid(GPT), {"m": True, "gpt": True}))[0]
    assert "router_settings" not in plain
    for bad in ({"retries": -1}, {"retries": 11}, {"retryAfterSeconds": 301}):
        with pytest.raises(ValidationError):
            hybrid(GPT, **bad)


def test_a_blocked_provider_has_no_route_no_key_and_no_fallback_to_it() -> None:
    s = hybrid(GPT, CLAUDE, fallbacks=[{"model": "m", "to": ["gpt", "claude"]},
                                        {"model": "gpt", "to": ["m"]}])  # fmt: skip
    config, container, _ = gateway(render(s, {"m": True, "gpt": False, "claude": True}))
    assert set(routes(config)) == {"m", "claude"}
    assert config["router_settings"]["fallbacks"] == [{"m": ["claude"]}]
    assert not [e for e in container["env"] if "GPT" in e["name"]]
    # Nothing permitted but the model: no fallbacks at all.
    config = gateway(render(s, {"m": True}))[0]
    assert set(routes(config)) == {"m"} and "router_settings" not in config


# ---------------------------------------------------------------- policy


def test_the_default_policy_permits_no_provider() -> None:
    assert default_policy().spec.providers.allow == []
    v = decide_stack(hybrid(GPT), [])
    assert (v["gpt"].permitted, v["gpt"].reason) == (False, "ProviderNotAllowed")
    assert v["m"].permitted


def test_allow_lists_are_exhaustive_deny_wins_and_every_policy_applies() -> None:
    assert decide_stack(hybrid(GPT), [allowing("openai")])["gpt"].permitted
    assert not decide_stack(hybrid(CLAUDE), [allowing("openai")])["claude"].permitted
    denied = decide_stack(
        hybrid(GPT), [policy(allow=["MIT"], providers={"allow": ["openai"], "deny": ["openai"]})]
    )
    assert (denied["gpt"].permitted, denied["gpt"].reason) == (False, "ProviderDenied")
    # Two policies: both must allow the provider.
    two = [allowing("openai", name="a"), allowing("anthropic", name="b")]
    assert not decide_stack(hybrid(GPT), two)["gpt"].permitted
    assert decide_stack(
        hybrid(GPT), [allowing("openai", "anthropic", name="a"), allowing("openai", name="b")]
    )["gpt"].permitted


def test_the_webhook_names_the_route_and_the_provider() -> None:
    denied, warned = admission_messages(hybrid(GPT), [allowing("anthropic")])
    assert warned == []
    assert denied == [
        "route gpt sends prompts to provider openai (gpt-4o-mini) at api.openai.com, which "
        "policy team does not "
        "allow (prompts leave the cluster only for providers a LicensePolicy's "
        "providers.allow lists)"
    ]
    denied, warned = admission_messages(hybrid(GPT), [allowing(enforcement="Warn")])
    assert denied == [] and warned[0].endswith("(Warn: deployed anyway)")


def test_status_lists_every_route_and_a_blocked_provider_degrades_the_stack() -> None:
    s = hybrid(GPT, fallbacks=[{"model": "m", "to": ["gpt"]}])
    ok = compute_status(
        s, decide_stack(s, [allowing("openai")]), Observed(deployments_for(s)), now=T0
    )
    assert ok.phase == "Ready"
    assert ok.gateway is not None
    assert [(r.name, r.kind, r.target, r.permitted) for r in ok.gateway.routes] == [
        ("m", "Model", "http://demo-vllm-m.ml.svc.cluster.local:8000/v1", True),
        ("gpt", "Provider", "openai/gpt-4o-mini", True),
    ]
    blocked = compute_status(s, decide_stack(s, [allowing()]), Observed(deployments_for(s)), now=T1)
    assert blocked.phase == "Degraded"
    assert blocked.gateway is not None
    gpt = blocked.gateway.routes[1]
    assert (gpt.permitted, gpt.reason) == (False, "ProviderNotAllowed")
    cond = {c.type: c for c in blocked.conditions}
    assert (
        cond["LicenseCompliant"].status == "False"
        and "provider openai" in cond["LicenseCompliant"].message
    )
    assert cond["ModelsReady"].status == "True"
    events = transitions(ok, blocked)
    assert [e.reason for e in events if e.reason == "ProviderBlocked"] == ["ProviderBlocked"]
    assert not [e for e in transitions(blocked, blocked) if e.reason == "ProviderBlocked"]
    doc = status_dict(blocked)
    assert doc["gateway"]["routes"][1]["kind"] == "Provider"
    assert AIStackStatus.model_validate(doc) == blocked


def test_the_key_never_reaches_the_status() -> None:
    s = hybrid(GPT)
    doc = json.dumps(status_dict(compute_status(s, decide_stack(s, []), Observed({}), now=T0)))
    assert "llm-keys" not in doc and "credentialsSecretRef" not in doc


# ---------------------------------------------------------------- CLI and example


def test_license_check_reports_providers_and_fails_on_a_denied_one(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(json.dumps(stack_doc(models=[MODEL], gateway={"providers": [GPT], **AUTH})))
    pol = tmp_path / "policy.yaml"
    pol.write_text(json.dumps(allowing("openai")))
    run = [sys.executable, "-m", "aistack.cli", "license", "check", "-f", str(path)]
    denied = subprocess.run([*run, "-o", "json"], capture_output=True, text=True)
    assert denied.returncode == 1
    rows = json.loads(denied.stdout)
    assert [(r["provider"], r["source"], r["permitted"], r["reason"]) for r in rows[1:]] == [
        ("gpt", "openai/gpt-4o-mini at api.openai.com", False, "ProviderNotAllowed")
    ]
    text = subprocess.run(run, capture_output=True, text=True).stdout
    assert "demo/gpt (provider openai/gpt-4o-mini at api.openai.com): DENIED" in text
    allowed = subprocess.run([*run, "--policy", str(pol)], capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stdout


def test_the_hybrid_examples_policy_is_the_default_plus_one_provider() -> None:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "hybrid.yaml").read_text()))
    (pol,) = [d for d in docs if d["kind"] == "LicensePolicy"]
    spec = LicensePolicySpec.model_validate(pol["spec"])
    assert spec.providers.allow == ["openai"]
    assert spec.model_copy(update={"providers": default_policy().spec.providers}) == (
        default_policy().spec
    )
    (stack_body,) = [d for d in docs if d["kind"] == "AIStack"]
    verdicts = decide_stack(AIStack.model_validate(stack_body), [pol])
    assert all(v.permitted for v in verdicts.values())


def test_a_stack_of_providers_only_is_judged_and_without_a_gateway_nothing_is() -> None:
    only = stack(models=[], gateway={"providers": [GPT], **AUTH})
    status = compute_status(only, decide_stack(only, []), Observed({}), now=T0)
    cond = {c.type: c for c in status.conditions}
    assert (cond["LicenseCompliant"].status, cond["LicenseCompliant"].reason) == (
        "False", "ProviderNotAllowed",
    )  # fmt: skip
    off = stack(models=[MODEL], gateway={"enabled": False, "providers": [GPT]})
    status = compute_status(off, decide_stack(off, []), Observed(deployments_for(off)), now=T0)
    assert status.gateway is None and status.phase == "Ready"


def test_without_a_gateway_no_provider_is_refused() -> None:
    off = stack(models=[MODEL], gateway={"enabled": False, "providers": [GPT]})
    assert admission_messages(off, []) == ([], [])
