"""A LicensePolicy the operator cannot read denies every model (it fails closed).

This happens for real when a newer CRD (with a field this operator does not know) meets
an older operator: Helm does not upgrade ``crds/``, and the API server keeps the field.
"""

from __future__ import annotations

from typing import Any

from aistack.licenses import decide, decide_stack, policies_from, policy_status
from helpers import stack


def policy(name: str = "team", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "aistack.dev/v1alpha1", "kind": "LicensePolicy",
            "metadata": {"name": name, "generation": 3}, "spec": spec}  # fmt: skip


def mistral() -> Any:  # Apache-2.0 in the shipped catalog
    return stack(models=[{"name": "m", "source": "mistralai/Mistral-7B-v0.3"}]).spec.models[0]


def test_a_policy_with_a_field_unknown_to_the_models_denies_the_model() -> None:
    # Allows only MIT, and carries a field from a newer API version.
    newer = policy(allow=["MIT"], datasets={"allow": ["CC-BY-4.0"]})
    verdict = decide(mistral(), policies_from([newer]))
    assert (verdict.permitted, verdict.reason) == (False, "PolicyInvalid")
    assert "LicensePolicy team" in verdict.message and "spec.datasets" in verdict.message
    # Read without the unknown field, the same policy would deny it too, for its own
    # reason; the point is that it is not skipped in favour of the default policy.
    assert decide(mistral(), policies_from([])).permitted, "the default allows Apache-2.0"


def test_an_unreadable_policy_denies_even_what_every_other_policy_allows() -> None:
    lenient = policy("lenient", allow=["Apache-2.0", "MIT"])
    broken = policy("broken", allow=["Apache-2.0"], unknown="Sometimes")
    verdict = decide(mistral(), policies_from([lenient, broken]))
    assert (verdict.permitted, verdict.reason) == (False, "PolicyInvalid")
    assert "broken" in verdict.message and "spec.unknown" in verdict.message


def test_exceptions_of_an_unreadable_policy_do_not_apply() -> None:
    broken = policy(
        exceptions=[{"model": "mistralai/Mistral-7B-v0.3", "reason": "legal said yes"}],
        extra="x",
    )
    assert not decide(mistral(), policies_from([broken])).permitted


def test_an_unreadable_policy_keeps_its_dry_run_mode_when_that_much_reads() -> None:
    # A DryRun policy never blocked anything: unreadable, it reports, and still blocks
    # nothing. A mode that cannot be read is Deny.
    dry = decide(mistral(), policies_from([policy(enforcement="DryRun", newField=1)]))
    assert (dry.permitted, dry.violation, dry.reason) == (True, True, "PolicyInvalid")
    odd = decide(mistral(), policies_from([policy(enforcement="Later", allow=["Apache-2.0"])]))
    assert (odd.permitted, odd.reason) == (False, "PolicyInvalid")


def test_a_deny_entry_that_does_not_parse_denies_every_model() -> None:
    # It could have meant any license, including the model's.
    verdict = decide(mistral(), policies_from([policy(allow=["Apache-2.0"], deny=["not((x"])]))
    assert (verdict.permitted, verdict.reason) == (False, "PolicyInvalid")
    assert "spec.deny" in verdict.message


def test_an_allow_entry_that_does_not_parse_allows_nothing_and_the_rest_applies() -> None:
    verdict = decide(mistral(), policies_from([policy(allow=["Apache-2.0", "not((x"])]))
    assert (verdict.permitted, verdict.reason) == (True, "LicenseAllowed")


def test_the_policy_status_says_it_cannot_be_read() -> None:
    status = policy_status(policy(allow=["MIT"], datasets={}), None, "T0")
    (valid,) = status["conditions"]
    assert (valid["status"], valid["reason"]) == ("False", "PolicyInvalid")
    assert "spec.datasets" in valid["message"] and "denies every model" in valid["message"]
    assert status["observedGeneration"] == valid["observedGeneration"] == 3
    bad_allow = policy_status(policy(allow=["MIT", "not((x"]), None, "T0")
    assert bad_allow["conditions"][0]["reason"] == "InvalidLicenseIds"
    bad_deny = policy_status(policy(deny=["not((x"]), None, "T0")
    assert bad_deny["conditions"][0]["reason"] == "PolicyInvalid"


def test_every_model_of_a_stack_is_denied_and_named() -> None:
    s = stack(
        models=[
            {"name": "a", "source": "mistralai/Mistral-7B-v0.3"},
            {"name": "b", "source": "microsoft/phi-4"},
        ]
    )
    verdicts = decide_stack(s, [policy(allow=["Apache-2.0", "MIT"], newField=True)])
    assert {n: (v.permitted, v.reason) for n, v in verdicts.items()} == {
        "a": (False, "PolicyInvalid"),
        "b": (False, "PolicyInvalid"),
    }
