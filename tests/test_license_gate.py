"""The license gate cannot be walked around: each way a security review found (as a stack
author who wants around the policy) is refused or neutralised. One section per finding;
the render-wide invariant over generated stacks is tests/test_gate_invariant.py."""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import kubernetes
import pytest
from pydantic import ValidationError

from aistack import names
from aistack.api import rules
from aistack.api.v1alpha1 import AIStack, LicensePolicy
from aistack.components import RenderConfig
from aistack.controller import Reconciler, StackView
from aistack.errors import format_validation_error
from aistack.images import matches, parse_image
from aistack.kube import Kube, KubeError
from aistack.licenses import (
    SecretUnreadable,
    admission_messages,
    canonical_repo,
    decide_record,
    decide_stack,
    host_matches,
    last_hub_licenses,
)
from aistack.render import render
from aistack.status import Observed, compute_status
from helpers import all_permitted, policy, stack, stack_doc, trusting_policy
from test_controller import KEY, NOW, FakeKube, view
from test_status import T0, deployments_for

DEFAULTS = tuple(RenderConfig().images.values())


def refusal(doc: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        AIStack.model_validate(doc)
    return "\n".join(format_validation_error("stack.yaml", err.value))


# ---------------------------------------------------------------- 1. weights in extraArgs


def test_weight_flags_in_extra_args_are_refused_naming_the_flag_and_the_field() -> None:
    doc = stack_doc(models=[{"name": "m", "source": "microsoft/phi-4", "extraArgs": [
        "--speculative-config", '{"model": "meta-llama/Llama-3.2-1B-Instruct"}',
        "--enable-lora", "--lora-modules", "nc=CohereForAI/c4ai-command-r-plus",
        "--max-num-seqs", "64"]}])  # fmt: skip
    text = refusal(doc)
    assert (
        "spec.models[0].extraArgs[0]: --speculative-config is set by the operator from "
        "spec.models[].speculative; use that field instead"
    ) in text
    assert "spec.models[0].extraArgs[3]: --lora-modules is set by the operator from " in text
    assert "extraArgs[5]" not in text  # --max-num-seqs is tuning
    # The stack-wide defaults too, in vLLM's other spellings.
    for smuggled in (["--trust_remote_code"], ["--tokenizer=org/x"], ["-sc.model=org/x"]):
        text = refusal(stack_doc(vllm={"extraArgs": smuggled}))
        assert "spec.vllm.extraArgs[0]: " in text, smuggled
    # A value first would be read as one more value of the flag before the list.
    assert vllm_first_item_refused()


def vllm_first_item_refused() -> bool:
    doc = stack_doc(models=[{"name": "m", "source": "o/m", "extraArgs": ["x=org/nc"]}])
    return "extraArgs: the first item is a value, not a flag" in refusal(doc)


def test_speculative_decoding_is_a_field_whose_draft_is_checked_like_an_adapter() -> None:
    draft = {"method": "draft_model", "source": "meta-llama/Llama-3.2-1B-Instruct",
             "numSpeculativeTokens": 3}  # fmt: skip
    s = stack(models=[{"name": "m", "source": "mistralai/Mistral-7B-Instruct-v0.3",
                       "speculative": draft}])  # fmt: skip
    verdicts = decide_stack(s, [])
    key = names.speculative_key("m")
    # Llama 3.2's license is on neither list of the default policy: no draft, the model
    # still serves.
    assert (verdicts["m"].permitted, verdicts[key].permitted) == (True, False)
    assert verdicts[key].message.startswith(
        "draft model meta-llama/Llama-3.2-1B-Instruct of model m: "
    )
    out = render(s, {k: v.permitted for k, v in verdicts.items()})
    args = vllm_args(out, "demo-vllm-m")
    assert "--speculative-config" not in args and args[0] == s.spec.models[0].source
    status = compute_status(s, verdicts, Observed(deployments_for(s)), now=T0)
    assert status.models[0].speculative is not None
    assert (status.models[0].speculative.permitted, status.models[0].reason) == (False, "Ready")
    # Under a policy that allows it, it is used, at its revision.
    llama = trusting_policy(allow=["Apache-2.0", "LicenseRef-llama3.2"])
    pinned = stack(models=[{"name": "m", "source": "mistralai/Mistral-7B-Instruct-v0.3",
                            "speculative": draft | {"revision": "a" * 40}}])  # fmt: skip
    verdicts = decide_stack(pinned, [llama])
    assert verdicts[key].permitted
    args = vllm_args(render(pinned, {k: v.permitted for k, v in verdicts.items()}), "demo-vllm-m")
    config = json.loads(args[args.index("--speculative-config") + 1])
    assert config == {
        "method": "draft_model", "num_speculative_tokens": 3,
        "model": "meta-llama/Llama-3.2-1B-Instruct", "revision": "a" * 40,
    }  # fmt: skip
    # A non-commercial draft is refused at admission, naming it.
    nc = stack(models=[{"name": "m", "source": "microsoft/phi-4", "speculative": draft | {
        "source": "CohereForAI/c4ai-command-r-plus"}}])  # fmt: skip
    denied, _ = admission_messages(nc, [])
    assert denied == [
        "draft model CohereForAI/c4ai-command-r-plus of model m: CohereForAI/c4ai-command-r-plus"
        " is under CC-BY-NC-4.0, which policy default denies"
    ]


def test_a_pvc_draft_is_mounted_read_only_and_ngram_needs_no_weights() -> None:
    s = stack(models=[{"name": "m", "source": "pvc://weights/base", "license": "MIT",
                       "speculative": {"method": "eagle", "source": "pvc://heads/eagle",
                                       "license": "MIT", "numSpeculativeTokens": 2}}])  # fmt: skip
    out = render(s, all_permitted(s))
    args = vllm_args(out, "demo-vllm-m")
    assert json.loads(args[args.index("--speculative-config") + 1])["model"] == (
        "/mnt/claims/heads/eagle"
    )
    pod = deployment(out, "demo-vllm-m")["spec"]["template"]["spec"]
    claim = next(v for v in pod["volumes"] if v["name"] == "claim-0")
    assert claim["persistentVolumeClaim"] == {"claimName": "heads", "readOnly": True}
    ngram = {"method": "ngram", "numSpeculativeTokens": 4}
    assert stack(models=[{"name": "m", "source": "o/m", "speculative": ngram}])
    with_source = ngram | {"source": "org/x"}
    doc = stack_doc(models=[{"name": "m", "source": "o/m", "speculative": with_source}])
    assert rules.SPECULATIVE_SOURCE in refusal(doc)
    from_s3 = {"method": "eagle", "source": "s3://bucket/x", "numSpeculativeTokens": 2}
    doc = stack_doc(models=[{"name": "m", "source": "o/m", "speculative": from_s3}])
    assert rules.SPECULATIVE_S3 in refusal(doc)


def deployment(out: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(m for m in out if m["kind"] == "Deployment" and m["metadata"]["name"] == name)


def vllm_args(out: list[dict[str, Any]], name: str) -> list[str]:
    args: list[str] = deployment(out, name)["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


# ---------------------------------------------------------------- 2. names, not spellings


def test_renamed_repositories_resolve_to_their_catalog_entry() -> None:
    assert canonical_repo("CohereLabs/c4ai-command-r-plus") == canonical_repo(
        "CohereForAI/c4ai-command-r-plus"
    )
    assert canonical_repo("META-LLAMA/Meta-Llama-3.1-8B-Instruct") == (
        "meta-llama/llama-3.1-8b-instruct"
    )
    s = stack(models=[
        {"name": "cohere", "source": "CohereLabs/c4ai-command-r-plus", "license": "Apache-2.0"},
        {"name": "llama", "source": "meta-llama/Meta-Llama-3.1-8B-Instruct", "license": "MIT"},
    ])  # fmt: skip
    verdicts = decide_stack(s, [trusting_policy()])
    for name, truth in (("cohere", "CC-BY-NC-4.0"), ("llama", "LicenseRef-llama3.1")):
        v = verdicts[name]
        assert (v.permitted, v.reason, v.license, v.license_source) == (
            False, "LicenseMismatch", truth, "Catalog",
        ), name  # fmt: skip
    assert "but its model card says CC-BY-NC-4.0 (catalog as CohereForAI/c4ai-command-r-plus" in (
        verdicts["cohere"].message
    )
    # An adapter under a renamed name too.
    lora = stack(models=[{"name": "m", "source": "microsoft/phi-4", "adapters": [
        {"name": "a", "source": "coherelabs/C4AI-command-r-plus", "license": "MIT"}]}])  # fmt: skip
    assert decide_stack(lora, [trusting_policy()])["a"].reason == "LicenseMismatch"


def test_the_hubs_new_name_for_a_repo_is_looked_up_in_the_catalog() -> None:
    from test_licenses import FakeHub

    class Redirecting(FakeHub):
        def card_license(self, repo_id: str, revision: str | None) -> Any:
            from aistack.hub import CardLicense

            self.asked.append((repo_id, revision))
            return CardLicense("apache-2.0", "", "CohereForAI/c4ai-command-r-plus")

    hub = Redirecting({})
    s = stack(models=[{"name": "m", "source": "someone-old/renamed", "license": "Apache-2.0"}])
    v = decide_stack(s, [], hub=hub)["m"]
    assert (v.reason, v.license_source, v.license) == ("LicenseMismatch", "Catalog", "CC-BY-NC-4.0")


def test_a_declared_license_alone_is_what_the_policy_says_it_is() -> None:
    hf = {"name": "m", "source": "acme/unknown-7b", "license": "Apache-2.0"}
    pvc = {"name": "p", "source": "pvc://weights/m", "license": "Apache-2.0"}
    s = stack(models=[hf, pvc])
    default = decide_stack(s, [])
    assert (default["m"].permitted, default["m"].reason) == (False, "LicenseUnverified")
    assert "(unverified.huggingFace: Deny)" in default["m"].message
    assert (default["p"].permitted, default["p"].reason) == (True, "LicenseAllowed")
    assert "(declared in the stack, not verified)" in default["p"].message
    warn = decide_stack(s, [trusting_policy(unverified={"huggingFace": "Warn", "storage": "Deny"})])
    assert (warn["m"].permitted, warn["m"].violation, warn["m"].reason) == (
        True, False, "LicenseUnverified",
    )  # fmt: skip
    assert (warn["p"].permitted, warn["p"].reason) == (False, "LicenseUnverified")
    denied, warned = admission_messages(
        stack(models=[hf]), [trusting_policy(unverified={"huggingFace": "Warn"})]
    )
    assert denied == [] and len(warned) == 1 and "policy default warns" in warned[0]
    # Verified licenses say by what.
    phi = decide_stack(stack(models=[{"name": "m", "source": "microsoft/phi-4"}]), [])["m"]
    assert phi.message == "microsoft/phi-4 is under MIT (verified by the catalog), allowed"


# ---------------------------------------------------------------- 3. prompt destinations


def provider_stack(*routes: dict[str, Any], secret: str = "keys", **gateway: Any) -> AIStack:
    keyed = [r | {"credentialsSecretRef": {"name": secret, "key": r["name"]}} for r in routes]
    return stack(models=[], gateway={"providers": keyed, **{
        "authSecretRef": {"name": "gw", "key": "key"}, **gateway}})  # fmt: skip


def opted_in(name: str) -> Mapping[str, str] | None:
    return {names.PROVIDER_CREDENTIALS_LABEL: "true"} if name == "keys" else None


def test_a_provider_with_a_fixed_endpoint_cannot_be_redirected() -> None:
    doc = stack_doc(gateway={"authSecretRef": {"name": "gw", "key": "k"}, "providers": [
        {"name": "gpt", "provider": "openai", "model": "gpt-4o",
         "credentialsSecretRef": {"name": "keys", "key": "k"},
         "apiBase": "https://prompt-collector.attacker.example/v1"}]})  # fmt: skip
    assert rules.PROVIDER_FIXED_ENDPOINT in refusal(doc)


def test_endpoint_providers_are_permitted_per_host_and_a_denied_providers_host_too() -> None:
    compat = {"name": "c", "provider": "openai-compatible", "model": "m",
              "apiBase": "https://LLM.Partner.Example./v1"}  # fmt: skip
    azure = {"name": "az", "provider": "azure", "model": "d",
             "apiBase": "https://team.openai.azure.com"}  # fmt: skip
    to_openai = compat | {"name": "o", "apiBase": "https://api.openai.com/v1"}
    s = provider_stack(compat, azure, to_openai)
    allow = {"allow": ["openai-compatible", "azure"]}
    none = decide_stack(s, [policy(providers=allow)], secrets=opted_in)
    assert {n: none[n].reason for n in ("c", "az", "o")} == dict.fromkeys(
        ("c", "az", "o"), "ProviderHostNotAllowed"
    )
    hosts = allow | {"hosts": ["llm.partner.example", "*.openai.azure.com", "api.openai.com"]}
    listed = decide_stack(s, [policy(providers=hosts)], secrets=opted_in)
    assert all(listed[n].permitted for n in ("c", "az", "o"))
    assert "at llm.partner.example" in listed["c"].message  # case and the root dot aside
    # openai denied: its endpoint is denied whichever provider sends there.
    no_openai = decide_stack(s, [policy(providers=hosts | {"deny": ["openai"]})], secrets=opted_in)
    assert (no_openai["o"].permitted, no_openai["o"].reason) == (False, "ProviderDenied")
    assert "which is provider openai's own endpoint" in no_openai["o"].message
    assert no_openai["c"].permitted


def test_host_patterns_match_names_below_a_suffix_only() -> None:
    assert host_matches("*.openai.azure.com", "team.openai.azure.com")
    assert host_matches("*.openai.azure.com", "a.b.openai.azure.com")
    assert not host_matches("*.openai.azure.com", "openai.azure.com")
    assert not host_matches("*.openai.azure.com", "evil-openai.azure.com")
    assert not host_matches("*.openai.azure.com", "openai.azure.com.evil.example")
    assert host_matches("llm.example", "LLM.example.")
    assert not host_matches("llm.example", "llm.example.evil")


def test_only_a_secret_that_opted_in_is_sent_to_a_provider() -> None:
    gpt = {"name": "gpt", "provider": "openai", "model": "gpt-4o"}
    s = provider_stack(gpt)
    allowing = [policy(providers={"allow": ["openai"]})]
    labels: dict[str, dict[str, str] | None] = {"keys": {"team": "ml"}}
    verdict = decide_stack(s, allowing, secrets=lambda n: labels.get(n))["gpt"]
    assert (verdict.permitted, verdict.reason) == (False, "CredentialsNotOptedIn")
    assert verdict.message.startswith(
        "route gpt: Secret keys (key gpt) is not labelled aistack.dev/provider-credentials=true"
    )
    # The route and its key leave the gateway.
    out = render(s, {"gpt": verdict.permitted})
    gateway = deployment(out, "demo-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert not [e for e in gateway["env"] if e["name"].startswith("AISTACK_PROVIDER_")]
    # No such Secret; a Secret that cannot be read (a retry, never a permission).
    assert "does not exist" in decide_stack(s, allowing, secrets=lambda n: None)["gpt"].message

    def unreadable(name: str) -> Mapping[str, str] | None:
        raise SecretUnreadable("the API server did not answer")

    v = decide_stack(s, allowing, secrets=unreadable)["gpt"]
    assert (v.permitted, v.reason, bool(v.stale)) == (False, "CredentialsUnchecked", True)
    assert decide_stack(s, allowing, secrets=opted_in)["gpt"].permitted
    # Both in the way: both said, so that fixing one does not meet the other only then.
    both = decide_stack(s, [], secrets=lambda n: None)["gpt"].message
    assert "Secret keys (key gpt) does not exist; and route gpt sends prompts" in both
    assert "which policy default does not allow" in both


def test_the_operator_reads_a_secrets_metadata_only() -> None:
    asked: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append({"path": self.path, "accept": self.headers.get("Accept", "")})
            if self.path.endswith("/missing"):
                self.send_response(404)
                self.end_headers()
                self.wfile.write(b'{"message": "not found"}')
                return
            body = {"kind": "PartialObjectMetadata", "metadata": {
                "name": "keys", "labels": {names.PROVIDER_CREDENTIALS_LABEL: "true"}}}  # fmt: skip
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = kubernetes.client.Configuration()
        config.host = f"http://127.0.0.1:{server.server_port}"
        kube = Kube(kubernetes.client.ApiClient(configuration=config))
        assert kube.secret_labels("ml", "keys") == {names.PROVIDER_CREDENTIALS_LABEL: "true"}
        assert kube.secret_labels("ml", "missing") is None
    finally:
        server.shutdown()
    assert asked[0] == {
        "path": "/api/v1/namespaces/ml/secrets/keys",
        "accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
    }


# ---------------------------------------------------------------- 4. enforcement never freezes


def tightened() -> list[dict[str, Any]]:
    """A policy under which microsoft/phi-4 (MIT) is not permitted."""
    return [policy(allow=["Apache-2.0"])]


def judging(kube: FakeKube) -> Reconciler:
    def licensing(s: AIStack, policies: Any) -> Any:
        return decide_stack(s, policies, default_images=DEFAULTS)

    def judge(namespace: str, record: str | None, policies: Any) -> Any:
        return decide_record(record, policies, namespace, default_images=DEFAULTS)

    return Reconciler(kube=kube, licensing=licensing, judge_record=judge, clock=lambda: NOW)  # type: ignore[arg-type]


def test_an_unreadable_stack_under_a_tightened_policy_stops_its_model() -> None:
    kube = FakeKube()
    rec = judging(kube)
    doc = stack_doc(models=[{"name": "m", "source": "microsoft/phi-4"}])
    doc["metadata"].update(uid="uid-1", generation=1, resourceVersion="1")
    rec.reconcile_once(KEY, view(kube, doc))
    model = ("Deployment", "ml", "demo-vllm-m")
    assert kube.objects[model]["spec"]["replicas"] == 1
    # Stored past a rule the operator holds (a webhook that did not answer, an older CRD).
    invalid = copy.deepcopy(doc)
    invalid["spec"]["gateway"] = {"fallbacks": [{"model": "m", "to": ["nowhere"]}]}
    invalid["metadata"]["generation"] = 2
    # Nothing changes while the policies permit what runs ...
    rec.reconcile_once(KEY, view(kube, invalid))
    assert kube.objects[model]["spec"]["replicas"] == 1
    assert kube.status is not None
    conditions = {c["type"]: c for c in kube.status["conditions"]}
    assert (conditions["Ready"]["reason"], conditions["LicenseCompliant"]["status"]) == (
        "InvalidSpec", "True",
    )  # fmt: skip
    # ... and when they no longer do, what they do not permit stops; the rest runs on.
    result = rec.reconcile_once(KEY, dataclass_replace(view(kube, invalid), tightened()))
    assert result is not None and result.invalid
    assert kube.objects[model]["spec"]["replicas"] == 0
    annotations = kube.objects[model]["metadata"]["annotations"]
    assert annotations[names.LICENSE_BLOCKED_ANNOTATION] == "true"
    assert kube.objects[("Deployment", "ml", "demo-mlflow")]["spec"]["replicas"] == 1
    conditions = {c["type"]: c for c in kube.status["conditions"]}
    compliant = conditions["LicenseCompliant"]
    assert (compliant["status"], compliant["reason"]) == ("False", "LicenseNotAllowed")
    assert compliant["message"].startswith("Deployment demo-vllm-m: microsoft/phi-4 is under MIT")
    assert ("scale", model) in kube.calls
    # Once stopped, it is not patched again.
    calls = len(kube.calls)
    rec.reconcile_once(KEY, dataclass_replace(view(kube, invalid), tightened()))
    assert [c for c in kube.calls[calls:] if c[0] == "scale"] == []
    # Fixed and permitted again: it runs, and the mark the stop left is dropped too (a
    # server-side apply would leave a field another write set).
    fixed = copy.deepcopy(doc)
    fixed["metadata"]["generation"] = 3
    kube.objects[model]["metadata"]["annotations"][names.LICENSE_BLOCKED_ANNOTATION] = "true"
    rec.reconcile_once(KEY, view(kube, fixed))
    assert kube.objects[model]["spec"]["replicas"] == 1
    assert names.LICENSE_BLOCKED_ANNOTATION not in kube.objects[model]["metadata"]["annotations"]
    assert ("unmark", model) in kube.calls


def test_the_plan_drops_a_blocked_mark_only_from_what_runs_again() -> None:
    from aistack.plan import make_plan

    def deploy(**annotations: str) -> dict[str, Any]:
        return {"kind": "Deployment", "metadata": {"name": "d", "namespace": "ml",
                "annotations": annotations}, "spec": {"replicas": 1}}  # fmt: skip

    marked = deploy(**{names.LICENSE_BLOCKED_ANNOTATION: "true"})
    assert make_plan([deploy()], [marked], "uid").unmark == [("Deployment", "ml", "d")]
    assert make_plan([marked], [marked], "uid").unmark == []
    assert make_plan([deploy()], [deploy()], "uid").empty


def dataclass_replace(v: StackView, policies: list[dict[str, Any]]) -> StackView:
    return StackView(stack=v.stack, children=v.children, pods=v.pods, policies=policies)


def test_what_cannot_be_judged_does_not_run_while_the_spec_cannot_be_read() -> None:
    assert [v.reason for v in decide_record(None, [], "ml")] == ["NotJudged"]
    assert [v.reason for v in decide_record("{not json", [], "ml")] == ["NotJudged"]
    record = {"model": {"name": "m", "source": "microsoft/phi-4", "adapters": [
        {"name": "nc", "source": "CohereForAI/c4ai-command-r-plus"}]}, "image": None}  # fmt: skip
    reasons = [v.reason for v in decide_record(json.dumps(record), [], "ml")]
    assert reasons == ["LicenseAllowed", "LicenseDenied"]
    gpt = {"name": "gpt", "provider": "openai", "model": "gpt-4o",
           "credentialsSecretRef": {"name": "keys", "key": "k"}}  # fmt: skip
    gateway = {"image": None, "providers": [gpt]}
    assert [v.reason for v in decide_record(json.dumps(gateway), [], "ml")] == [
        "ProviderNotAllowed"
    ]


def test_every_deployment_records_what_it_runs() -> None:
    s = stack(models=[{"name": "m", "source": "microsoft/phi-4", "adapters": [
        {"name": "a", "source": "pvc://loras/a", "license": "MIT"}]}],
        ray={"image": "rayproject/ray:2.60.0-py311"})  # fmt: skip
    out = render(s, all_permitted(s))
    records = {
        m["metadata"]["name"]: json.loads(m["metadata"]["annotations"][names.LICENSED_ANNOTATION])
        for m in out
        if m["kind"] == "Deployment"
    }
    assert records["demo-vllm-m"]["model"]["adapters"] == [
        {"name": "a", "source": "pvc://loras/a", "license": "MIT"}
    ]
    assert records["demo-ray-head"] == {"image": "rayproject/ray:2.60.0-py311"}
    assert set(records) == {"demo-vllm-m", "demo-ray-head", "demo-mlflow", "demo-gateway"}


# ---------------------------------------------------------------- 5. exceptions, exactly


def test_storage_exceptions_match_exactly_and_pvc_ones_in_their_namespace() -> None:
    exceptions = [
        {"model": "s3://models-bucket/approved/opt-125m", "reason": "LEGAL-1"},
        {"model": "pvc://weights/approved", "namespace": "ml", "reason": "LEGAL-2"},
        {"model": "FACEBOOK/opt-125m", "reason": "LEGAL-3"},
    ]
    p = [policy(allow=["MIT"], exceptions=exceptions)]

    def reason(source: str, namespace: str = "ml") -> str:
        s = stack(namespace=namespace, models=[{"name": "m", "source": source}])
        return decide_stack(s, p)["m"].reason

    assert reason("s3://models-bucket/approved/opt-125m") == "PolicyException"
    assert reason("s3://models-bucket/APPROVED/OPT-125m") == "LicenseUnknown"
    assert reason("pvc://weights/approved") == "PolicyException"
    assert reason("pvc://weights/approved", namespace="other-team") == "LicenseUnknown"
    assert reason("pvc://weights/Approved") == "LicenseUnknown"
    assert reason("facebook/OPT-125m") == "PolicyException"  # Hub ids are case-insensitive
    with pytest.raises(ValidationError, match=re.escape(rules.PVC_EXCEPTION_NAMESPACE)):
        LicensePolicy.model_validate(
            policy(exceptions=[{"model": "pvc://weights/approved", "reason": "r"}])
        )


# ---------------------------------------------------------------- 6. WITH


def test_with_takes_only_a_license_exception() -> None:
    def verdict(expression: str) -> Any:
        s = stack(models=[{"name": "m", "source": "pvc://w/m", "license": expression}])
        return decide_stack(s, [])["m"]

    v = verdict("Apache-2.0 WITH CC-BY-NC-4.0")
    assert (v.permitted, v.reason) == (False, "LicenseInvalid")
    assert "cannot be used as an exception" in v.message
    assert verdict("Apache-2.0 WITH LLVM-exception").permitted
    assert verdict("LLVM-exception").reason == "LicenseInvalid"  # an exception is no license


# ---------------------------------------------------------------- 7. an open gateway


def test_providers_need_an_authenticated_gateway_and_scrapers_never_reach_its_api() -> None:
    gpt = {"name": "gpt", "provider": "openai", "model": "gpt-4o",
           "credentialsSecretRef": {"name": "keys", "key": "k"}}  # fmt: skip
    assert rules.PROVIDERS_NEED_AUTH in refusal(stack_doc(gateway={"providers": [gpt]}))
    assert rules.PROVIDERS_NEED_AUTH in refusal(
        stack_doc(gateway={"providers": [gpt], "serviceType": "LoadBalancer"})
    )
    scraper = {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    s = stack(monitoring={"scrapeFrom": [scraper]})
    gw = next(m for m in render(s, all_permitted(s)) if m["metadata"]["name"] == "demo-gateway"
              and m["kind"] == "NetworkPolicy")  # fmt: skip
    assert all(scraper not in rule.get("from", []) for rule in gw["spec"]["ingress"])


# ---------------------------------------------------------------- 8. paths


@pytest.mark.parametrize(
    "source",
    ["pvc://weights/a\x00b", "s3://bucket/a\nb", "pvc://weights/a=b", "pvc://weights/../etc",
     "pvc://weights/./x", "pvc://weights//x", "s3://bucket/a b", "pvc://weights/a\tb"],
)  # fmt: skip
def test_sources_and_paths_hold_no_control_characters_equals_or_dot_segments(source: str) -> None:
    assert "spec.models[0].source" in refusal(stack_doc(models=[{"name": "m", "source": source}]))
    adapter = {"name": "a", "source": source}
    assert "spec.models[0].adapters[0].source" in refusal(
        stack_doc(models=[{"name": "m", "source": "o/m", "adapters": [adapter]}])
    )


def test_a_revision_is_refused_where_it_pins_nothing() -> None:
    text = refusal(stack_doc(models=[{"name": "m", "source": "s3://bucket/m", "revision": "main"}]))
    assert rules.REVISION_FOR_HUB in text


# ---------------------------------------------------------------- images


def test_image_references_are_normalised_before_they_are_compared() -> None:
    assert parse_image("vllm/vllm-openai:v1").repository == "docker.io/vllm/vllm-openai"
    assert parse_image("index.docker.io/library/ubuntu").repository == "docker.io/library/ubuntu"
    assert matches("ubuntu", parse_image("docker.io/library/ubuntu:24.04"))
    assert matches("ghcr.io/acme/*", parse_image("ghcr.io/acme/ml/vllm:1"))
    assert not matches("ghcr.io/acme/*", parse_image("ghcr.io/acme-evil/vllm:1"))
    digest = "sha256:" + "a" * 64
    assert not matches("ghcr.io/acme/vllm:1", parse_image(f"ghcr.io/acme/vllm:1@{digest}"))
    assert matches(f"ghcr.io/acme/vllm@{digest}", parse_image(f"ghcr.io/acme/vllm:x@{digest}"))


def test_images_a_stack_names_are_held_to_the_policy() -> None:
    s = stack(
        models=[
            {"name": "up", "source": "microsoft/phi-4", "image": "vllm/vllm-openai:v0.30.0"},
            {"name": "own", "source": "microsoft/phi-4", "image": "ghcr.io/acme/vllm:1"},
        ],
        gateway={"image": "ghcr.io/acme/litellm:1"},
    )
    v = decide_stack(s, [], default_images=DEFAULTS)
    assert v["up"].permitted  # another tag of a default image's repository
    assert (v["own"].permitted, v["own"].reason) == (False, "ImageNotAllowed")
    assert (v["image:gateway"].permitted, v["image:gateway"].reason) == (False, "ImageNotAllowed")
    out = render(s, {k: x.permitted for k, x in v.items()})
    assert deployment(out, "demo-gateway")["spec"]["replicas"] == 0
    status = compute_status(s, v, Observed(deployments_for(s)), now=T0)
    conditions = {c.type: c for c in status.conditions}
    assert (conditions["GatewayReady"].status, conditions["GatewayReady"].reason) == (
        "False", "ImageNotAllowed",
    )  # fmt: skip
    assert conditions["LicenseCompliant"].status == "False"
    allowing = [trusting_policy(images={"allow": ["ghcr.io/acme/*"]})]
    assert all(x.permitted for x in decide_stack(s, allowing, default_images=DEFAULTS).values())
    pinned = [trusting_policy(images={"allow": ["ghcr.io/acme/*"], "requireDigest": True})]
    strict = decide_stack(s, pinned, default_images=DEFAULTS)
    assert "images.requireDigest" in strict["own"].message


# ---------------------------------------------------------------- the reconcile's secrets


def test_the_reconcile_asks_the_api_server_for_the_secrets_labels() -> None:
    from aistack.controller import licensing_for

    class LabelKube:
        def __init__(self) -> None:
            self.asked: list[tuple[str, str]] = []

        def secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
            self.asked.append((namespace, name))
            if name == "broken":
                raise KubeError(503, "unavailable")
            return {names.PROVIDER_CREDENTIALS_LABEL: "true"}

    kube = LabelKube()
    licensing, _ = licensing_for(kube, None, DEFAULTS)  # type: ignore[arg-type]
    s = provider_stack({"name": "gpt", "provider": "openai", "model": "gpt-4o"})
    allowing = [policy(providers={"allow": ["openai"]})]
    assert licensing(s, allowing)["gpt"].permitted
    assert kube.asked == [("ml", "keys")]
    broken = provider_stack(
        {"name": "gpt", "provider": "openai", "model": "gpt-4o"}, secret="broken"
    )
    v = licensing(broken, allowing)["gpt"]
    assert (v.permitted, v.reason) == (False, "CredentialsUnchecked")


def test_the_hubs_last_answer_for_a_draft_is_kept_from_the_status() -> None:
    draft = {"method": "draft_model", "source": "org/draft", "revision": "abc123",
             "numSpeculativeTokens": 3}  # fmt: skip
    doc = stack_doc(models=[{"name": "m", "source": "microsoft/phi-4", "speculative": draft}])
    seen = {"source": "org/draft", "revision": "abc123", "license": "MIT", "licenseSource": "Hub"}
    doc["status"] = {"models": [{"name": "m", "speculative": seen}]}
    assert last_hub_licenses(AIStack.model_validate(doc)) == {names.speculative_key("m"): "MIT"}
    doc["spec"]["models"][0]["speculative"]["revision"] = "def456"  # another revision
    assert last_hub_licenses(AIStack.model_validate(doc)) == {}


def test_secrets_are_asked_for_outside_the_decisions_lock() -> None:
    # The labels come from the API server: a slow answer must not hold up every other
    # stack's decision (they all take one lock, for license-expression's sake).
    from aistack import licenses

    held: list[bool] = []

    def labels(name: str) -> Mapping[str, str] | None:
        held.append(licenses._LOCK.locked())
        return {names.PROVIDER_CREDENTIALS_LABEL: "true"}

    s = provider_stack({"name": "gpt", "provider": "openai", "model": "gpt-4o"})
    decide_stack(s, [policy(providers={"allow": ["openai"]})], secrets=labels)
    record = json.dumps({"image": None, "providers": [
        {"name": "gpt", "provider": "openai", "model": "gpt-4o",
         "credentialsSecretRef": {"name": "keys", "key": "k"}}]})  # fmt: skip
    decide_record(record, [policy(providers={"allow": ["openai"]})], "ml", secrets=labels)
    assert held == [False, False]
