"""License resolution and policy evaluation, over real models from the catalog."""

from __future__ import annotations

from typing import Any

import pytest

from aistack.api import LicensePolicy
from aistack.licenses import (
    ExpressionProblem,
    admission_messages,
    catalog,
    compile_policy,
    decide,
    default_policy,
    hub_to_spdx,
    parse,
    policies_from,
    resolve,
)
from helpers import policy, stack

# (repo id, SPDX as resolved, permitted under the default policy, reason)
REAL_MODELS = [
    ("meta-llama/Llama-2-7b-chat-hf", "LicenseRef-llama2", False, "LicenseNotAllowed"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "LicenseRef-llama3", False, "LicenseNotAllowed"),
    ("meta-llama/Meta-Llama-3-70B-Instruct", "LicenseRef-llama3", False, "LicenseNotAllowed"),
    ("meta-llama/Llama-3.1-8B-Instruct", "LicenseRef-llama3.1", False, "LicenseNotAllowed"),
    ("meta-llama/Llama-3.1-70B-Instruct", "LicenseRef-llama3.1", False, "LicenseNotAllowed"),
    ("meta-llama/Llama-3.2-1B-Instruct", "LicenseRef-llama3.2", False, "LicenseNotAllowed"),
    ("meta-llama/Llama-3.3-70B-Instruct", "LicenseRef-llama3.3", False, "LicenseNotAllowed"),
    ("mistralai/Mistral-7B-v0.3", "Apache-2.0", True, "LicenseAllowed"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "Apache-2.0", True, "LicenseAllowed"),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "Apache-2.0", True, "LicenseAllowed"),
    ("mistralai/Mistral-Nemo-Instruct-2407", "Apache-2.0", True, "LicenseAllowed"),
    ("mistralai/Mixtral-8x22B-Instruct-v0.1", None, False, "LicenseUnknown"),
    ("Qwen/Qwen2-72B-Instruct", "LicenseRef-tongyi-qianwen", False, "LicenseNotAllowed"),
    ("Qwen/Qwen2.5-3B-Instruct", "LicenseRef-qwen-research", False, "LicenseNotAllowed"),
    ("Qwen/Qwen2.5-7B-Instruct", "Apache-2.0", True, "LicenseAllowed"),
    ("Qwen/Qwen2.5-72B-Instruct", "LicenseRef-qwen", False, "LicenseNotAllowed"),
    ("Qwen/Qwen2.5-Coder-7B-Instruct", "Apache-2.0", True, "LicenseAllowed"),
    ("Qwen/Qwen3-8B", "Apache-2.0", True, "LicenseAllowed"),
    ("microsoft/phi-2", "MIT", True, "LicenseAllowed"),
    ("microsoft/Phi-3-mini-4k-instruct", "MIT", True, "LicenseAllowed"),
    ("microsoft/Phi-3.5-mini-instruct", "MIT", True, "LicenseAllowed"),
    ("microsoft/phi-4", "MIT", True, "LicenseAllowed"),
    ("google/gemma-2b-it", "LicenseRef-gemma", False, "LicenseNotAllowed"),
    ("google/gemma-3-27b-it", "LicenseRef-gemma", False, "LicenseNotAllowed"),
    ("google/gemma-4-31B-it", "Apache-2.0", True, "LicenseAllowed"),
    ("tiiuae/falcon-40b", "Apache-2.0", True, "LicenseAllowed"),
    ("tiiuae/falcon-180B", None, False, "LicenseUnknown"),
    ("deepseek-ai/DeepSeek-V3-0324", "MIT", True, "LicenseAllowed"),
    ("deepseek-ai/DeepSeek-R1", "MIT", True, "LicenseAllowed"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "MIT", True, "LicenseAllowed"),
    ("CohereForAI/c4ai-command-r-plus", "CC-BY-NC-4.0", False, "LicenseDenied"),
    ("bigscience/bloom", "LicenseRef-bigscience-bloom-rail-1.0", False, "LicenseNotAllowed"),
    ("facebook/opt-125m", None, False, "LicenseUnknown"),
    ("01-ai/Yi-34B", "LicenseRef-yi-license", False, "LicenseNotAllowed"),
    ("ibm-granite/granite-4.1-8b", "Apache-2.0", True, "LicenseAllowed"),
    ("openai/gpt-oss-20b", "Apache-2.0", True, "LicenseAllowed"),
    ("nvidia/NVIDIA-Nemotron-Nano-9B-v2", "LicenseRef-nvidia-open-model-license", False,
     "LicenseNotAllowed"),
    ("sentence-transformers/all-MiniLM-L6-v2", "Apache-2.0", True, "LicenseAllowed"),
]  # fmt: skip


def default() -> list[Any]:
    return policies_from([])


def model(source: str, **kw: Any) -> Any:
    return stack(models=[{"name": "m", "source": source, **kw}]).spec.models[0]


def test_the_catalog_is_big_enough_and_well_formed() -> None:
    entries = catalog()
    assert len(entries) >= 40
    for entry in entries.values():
        assert entry.status in {"verified", "secondary", "unverified", "verified-at-revision"}
        assert entry.source


@pytest.mark.parametrize(
    ("repo", "spdx", "permitted", "reason"), REAL_MODELS, ids=[r[0] for r in REAL_MODELS]
)
def test_real_models_under_the_default_policy(
    repo: str, spdx: str | None, permitted: bool, reason: str
) -> None:
    verdict = decide(model(repo), default())
    assert verdict.license == spdx
    assert verdict.license_source == ("Catalog" if spdx else None)
    assert (verdict.permitted, verdict.reason) == (permitted, reason)
    assert repo in verdict.message


def test_the_message_reads_like_a_sentence() -> None:
    verdict = decide(model("meta-llama/Llama-3.1-8B-Instruct"), default())
    assert verdict.message == (
        "meta-llama/Llama-3.1-8B-Instruct is under LicenseRef-llama3.1, which policy default "
        "does not allow"
    )


@pytest.mark.parametrize(
    ("hub", "name", "spdx"),
    [("apache-2.0", "", "Apache-2.0"), ("mit", "", "MIT"), ("cc-by-nc-4.0", "", "CC-BY-NC-4.0"),
     ("llama3.1", "", "LicenseRef-llama3.1"), ("gemma", "", "LicenseRef-gemma"),
     ("other", "qwen-research", "LicenseRef-qwen-research"), ("other", "", None),
     ("unknown", "", None), ("gpl", "", "LicenseRef-gpl"), ("bsd-3-clause", "", "BSD-3-Clause")],
)  # fmt: skip
def test_hub_ids_map_to_spdx(hub: str, name: str, spdx: str | None) -> None:
    assert hub_to_spdx(hub, name) == spdx


@pytest.mark.parametrize(
    ("expression", "permitted", "reason"),
    [
        ("Apache-2.0 OR GPL-3.0-only", True, "LicenseAllowed"),
        ("GPL-3.0-only OR CC-BY-NC-4.0", False, "LicenseNotAllowed"),
        ("MIT AND Apache-2.0", True, "LicenseAllowed"),
        ("MIT AND CC-BY-NC-4.0", False, "LicenseDenied"),
        ("MIT AND GPL-3.0-only", False, "LicenseNotAllowed"),
        ("Apache-2.0 WITH LLVM-exception", True, "LicenseAllowed"),
        ("(MIT OR CC-BY-NC-4.0) AND BSD-3-Clause", True, "LicenseAllowed"),
        ("apache-2.0", True, "LicenseAllowed"),
        ("LicenseRef-llama3.1", False, "LicenseNotAllowed"),
        ("llama3.1", False, "LicenseInvalid"),
        ("MIT OR", False, "LicenseInvalid"),
    ],
)
def test_spdx_expressions(expression: str, permitted: bool, reason: str) -> None:
    verdict = decide(model("pvc://weights/m", license=expression), default())
    assert (verdict.permitted, verdict.reason) == (permitted, reason)
    assert verdict.license_source == "Declared"


def test_deny_wins_over_allow() -> None:
    both = policies_from([policy(allow=["MIT"], deny=["MIT"])])
    assert decide(model("pvc://w/m", license="MIT"), both).reason == "LicenseDenied"


def test_a_declared_license_that_contradicts_the_catalog_is_denied() -> None:
    verdict = decide(model("mistralai/Mistral-7B-v0.3", license="MIT"), default())
    assert (verdict.permitted, verdict.reason) == (False, "LicenseMismatch")
    assert "declares MIT, but its model card says Apache-2.0" in verdict.message
    same = decide(model("mistralai/Mistral-7B-v0.3", license="apache-2.0"), default())
    assert same.permitted and same.license_source == "Catalog"


def test_unknown_licenses_follow_the_policy() -> None:
    assert decide(model("org/unknown"), default()).reason == "LicenseUnknown"
    lenient = policies_from([policy(allow=["MIT"], unknown="Warn")])
    verdict = decide(model("org/unknown"), lenient)
    assert (verdict.permitted, verdict.violation) == (True, False)
    assert "warns about unknown licenses" in verdict.message


@pytest.mark.parametrize(
    ("mode", "permitted", "suffix"),
    [
        ("Deny", False, ""),
        ("Warn", True, "(Warn: deployed anyway)"),
        ("DryRun", True, "(DryRun: only reported)"),
    ],
)
def test_enforcement_modes(mode: str, permitted: bool, suffix: str) -> None:
    policies = policies_from([policy(allow=["MIT"], enforcement=mode)])
    verdict = decide(model("CohereForAI/c4ai-command-r-plus"), policies)
    assert verdict.violation is True
    assert verdict.permitted is permitted
    assert verdict.enforcement == mode
    assert verdict.message.endswith(suffix)
    assert decide(model("microsoft/phi-4"), policies).enforcement is None, "no violation"


def test_the_webhook_refuses_deny_warns_for_warn_and_is_silent_for_dryrun() -> None:
    nc = stack(models=[{"name": "nc", "source": "CohereForAI/c4ai-command-r-plus"},
                       {"name": "ok", "source": "microsoft/phi-4"}])  # fmt: skip
    denied, warned = admission_messages(nc, [policy(allow=["MIT"])])
    assert (len(denied), warned) == (1, [])
    assert "CohereForAI/c4ai-command-r-plus" in denied[0]
    denied, warned = admission_messages(nc, [policy(allow=["MIT"], enforcement="Warn")])
    assert denied == [] and len(warned) == 1
    assert warned[0].endswith("(Warn: deployed anyway)")
    assert admission_messages(nc, [policy(allow=["MIT"], enforcement="DryRun")]) == ([], [])


def test_an_unknown_license_a_policy_lets_through_gets_an_admission_warning() -> None:
    # `unknown: Warn` permits the model and the webhook says so (it is no violation: the
    # stack stays LicenseCompliant); `unknown: Deny` refuses it.
    s = stack(
        models=[{"name": "u", "source": "org/unknown"}, {"name": "ok", "source": "microsoft/phi-4"}]
    )
    denied, warned = admission_messages(s, [policy(allow=["MIT"], unknown="Warn")])
    assert denied == [] and len(warned) == 1
    assert "the license of org/unknown is unknown" in warned[0]
    assert "warns about unknown licenses" in warned[0]
    denied, warned = admission_messages(s, [policy(allow=["MIT"], unknown="Deny")])
    assert len(denied) == 1 and warned == []


def test_exceptions_name_a_model_and_optionally_a_revision() -> None:
    policies = policies_from(
        [
            policy(
                allow=["MIT"],
                exceptions=[
                    {"model": "facebook/opt-125m", "reason": "approved by legal, TICKET-1"}
                ],
            )
        ]
    )
    verdict = decide(model("facebook/opt-125m"), policies)
    assert (verdict.permitted, verdict.reason) == (True, "PolicyException")
    assert "approved by legal, TICKET-1" in verdict.message
    pinned = policies_from(
        [policy(exceptions=[{"model": "facebook/opt-125m", "revision": "abc", "reason": "ok"}])]
    )
    assert decide(model("facebook/opt-125m", revision="abc"), pinned).permitted
    assert not decide(model("facebook/opt-125m", revision="def"), pinned).permitted


def test_several_policies_all_apply_and_none_means_the_default() -> None:
    team = policy(name="team", allow=["MIT", "Apache-2.0", "LicenseRef-llama3.1"])
    legal = policy(name="legal", allow=["MIT", "Apache-2.0"], enforcement="Warn")
    policies = policies_from([team, legal])
    llama = decide(model("meta-llama/Llama-3.1-8B-Instruct"), policies)
    assert (llama.permitted, llama.violation) == (True, True)  # only Warn-mode legal objects
    assert "policy legal" in llama.message
    strict = policies_from([policy(name="strict", allow=["Apache-2.0"]), team])
    assert not decide(model("microsoft/phi-4"), strict).permitted
    assert [p.name for p in policies_from([])] == ["default"]


def test_policy_problems_are_reported_and_ids_normalized() -> None:
    compiled, problems = compile_policy(
        LicensePolicy.model_validate(
            policy(allow=["apache-2.0", "not a license((", "LicenseRef-x"])
        )
    )
    assert compiled.allow == frozenset({"Apache-2.0", "LicenseRef-x"})
    assert len(problems) == 1 and "spec.allow" in problems[0]


def test_default_policy_shape() -> None:
    p = default_policy()
    assert p.metadata.name == "default"
    assert (p.spec.unknown, p.spec.enforcement) == ("Deny", "Deny")
    assert {"Apache-2.0", "MIT", "BSD-2-Clause", "BSD-3-Clause", "ISC"} <= set(p.spec.allow)
    assert {"CC-BY-NC-4.0", "CC-BY-ND-4.0", "CC-BY-NC-SA-4.0"} <= set(p.spec.deny)


def test_parse_refuses_unknown_ids() -> None:
    with pytest.raises(ExpressionProblem, match="LicenseRef-<name>"):
        parse("llama3")
    assert str(parse("gpl-3.0")) == "GPL-3.0-only"


def test_resolution_sources() -> None:
    assert resolve(model("microsoft/phi-4")).source == "Catalog"
    assert resolve(model("s3://bucket/m", license="MIT")).source == "Declared"
    assert resolve(model("org/new", license="MIT")).source == "Declared"
    unknown = resolve(model("facebook/opt-125m"))
    assert unknown.license is None and "names no license" in unknown.unknown_because


def test_parallel_first_use_gives_the_same_verdicts() -> None:
    """Reconciles run in threads; license-expression's tables are not thread-safe to build."""
    import subprocess
    import sys

    script = """
import threading
from aistack.licenses import decide_stack
from aistack.api import AIStack
doc = {"metadata": {"name": "s"}, "spec": {"models": [
    {"name": "a", "source": "microsoft/Phi-3.5-mini-instruct"},
    {"name": "b", "source": "mistralai/Mistral-7B-v0.3"}]}}
stack = AIStack.model_validate(doc)
bad = []
def run():
    bad.extend(v.message for v in decide_stack(stack, []).values() if not v.permitted)
threads = [threading.Thread(target=run) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(bad))
"""
    for _ in range(3):  # a fresh process each time: the race is at first use
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "0", out.stdout


class FakeHub:
    """Model cards as the hub would answer, per (repo, revision)."""

    def __init__(self, cards: dict[tuple[str, str | None], Any]) -> None:
        self.cards = cards
        self.asked: list[tuple[str, str | None]] = []

    def card_license(self, repo_id: str, revision: str | None) -> Any:
        from aistack.hub import CardLicense

        self.asked.append((repo_id, revision))
        answer = self.cards.get((repo_id, revision))
        return None if answer is None else CardLicense(*answer)


def test_the_hub_answers_for_models_the_catalog_does_not_know() -> None:
    hub = FakeHub({("acme/open-120b", None): ("apache-2.0", ""),
                   ("org/model", "abc123"): ("other", "acme-research")})  # fmt: skip
    verdict = decide(model("acme/open-120b"), default(), hub=hub)
    assert (verdict.permitted, verdict.license, verdict.license_source) == (
        True,
        "Apache-2.0",
        "Hub",
    )
    pinned = decide(model("org/model", revision="abc123"), default(), hub=hub)
    assert (pinned.license, pinned.reason) == ("LicenseRef-acme-research", "LicenseNotAllowed")
    assert ("org/model", "abc123") in hub.asked, "the license is checked at the pinned revision"
    # Catalog first: the hub is not asked about models the catalog knows.
    decide(model("microsoft/phi-4"), default(), hub=hub)
    assert ("microsoft/phi-4", None) not in hub.asked


def test_no_answer_from_the_hub_is_never_a_permission() -> None:
    hub = FakeHub({})
    verdict = decide(model("org/unknown"), default(), hub=hub)
    assert (verdict.permitted, verdict.reason) == (False, "LicenseUnknown")
    # A declaration is no answer either: it is judged as what nothing verified.
    declared = decide(model("org/unknown", license="MIT"), default(), hub=hub)
    assert (declared.permitted, declared.license_source) == (False, "Declared")
    assert declared.reason == "LicenseUnverified"


def test_a_declaration_contradicting_the_hub_is_a_mismatch() -> None:
    hub = FakeHub({("org/model", None): ("cc-by-nc-4.0", "")})
    verdict = decide(model("org/model", license="Apache-2.0"), default(), hub=hub)
    assert verdict.reason == "LicenseMismatch"
    assert "Hugging Face card" in verdict.message


def test_card_license_reading() -> None:
    from aistack.hub import CardLicense, card_license_of

    assert card_license_of({"license": "mit"}, []) == CardLicense("mit")
    assert card_license_of({"license": "other", "license_name": "x"}, []) == CardLicense(
        "other", "x"
    )
    assert card_license_of({}, ["text-generation", "license:apache-2.0"]) == CardLicense(
        "apache-2.0"
    )
    assert card_license_of(None, []) is None


def test_hf_hub_failures_are_remembered_and_mean_no_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub

    from aistack.hub import HfHub, HubUnavailable

    calls: list[Any] = []

    def unreachable(self: Any, repo_id: str, **kwargs: Any) -> Any:
        calls.append((repo_id, kwargs.get("revision"), kwargs.get("timeout")))
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    hub = HfHub(timeout=1.5)
    for _ in range(2):
        with pytest.raises(HubUnavailable, match="network is unreachable"):
            hub.card_license("org/m", "rev1")
    assert calls == [("org/m", "rev1", 1.5)], "asked once: retried only after the backoff"
    verdict = decide(model("org/m", revision="rev1"), default(), hub=hub)
    assert (verdict.permitted, verdict.reason) == (False, "LicenseUnknown")
    assert verdict.stale is not None


def test_policy_status_names_the_entries_that_do_not_parse() -> None:
    from aistack.licenses import policy_status

    body = policy(allow=["MIT", "not((valid"], deny=["CC-BY-NC-4.0"])
    body["metadata"]["generation"] = 2
    status = policy_status(body, None, "T0")
    (valid,) = status["conditions"]
    assert (valid["status"], valid["reason"]) == ("False", "InvalidLicenseIds")
    assert "spec.allow" in valid["message"] and status["observedGeneration"] == 2
    again = policy_status(body, status, "T1")
    assert again == status, "unchanged: same status, same lastTransitionTime"
    fixed = policy_status(policy(allow=["MIT"]), status, "T2")
    assert fixed["conditions"][0]["status"] == "True"
    assert fixed["conditions"][0]["lastTransitionTime"] == "T2"
