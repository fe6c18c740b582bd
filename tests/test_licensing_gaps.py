"""Ways a model card or a policy could once get more than it should, now closed.

Card metadata is written by whoever owns the repo, and license-expression's SPDX table
(built from ScanCode) maps some ``LicenseRef-*`` names to real licenses: neither may turn a
custom or unknown license into a permitted one.
"""

from __future__ import annotations

from typing import Any

import pytest

from aistack.api import LicensePolicy
from aistack.hub import CardLicense, card_license_of
from aistack.licenses import compile_policy, decide, parse, policies_from
from helpers import policy, stack


class Card:
    """A hub that answers with one card for every repo."""

    def __init__(self, card: CardLicense | None) -> None:
        self.card = card

    def card_license(self, repo_id: str, revision: str | None) -> CardLicense | None:
        return self.card


def model(source: str, **kw: Any) -> Any:
    return stack(models=[{"name": "m", "source": source, **kw}]).spec.models[0]


def test_a_license_name_is_never_read_as_an_expression() -> None:
    # license: other, license_name: "x OR mit" was "LicenseRef-x OR mit", permitted via MIT.
    hub = Card(CardLicense("other", "x OR mit"))
    verdict = decide(model("org/new-model"), policies_from([]), hub=hub)
    assert not verdict.permitted
    assert verdict.reason in {"LicenseNotAllowed", "LicenseUnknown"}


@pytest.mark.parametrize("name", ["apache", "Apache-2.0", "AGPL"])
def test_a_custom_license_stays_custom(name: str) -> None:
    # license: other, license_name: apache was evaluated as Apache-2.0.
    hub = Card(CardLicense("other", name))
    verdict = decide(model("org/new-model"), policies_from([]), hub=hub)
    assert (verdict.permitted, verdict.reason) == (False, "LicenseNotAllowed")
    assert f"is under LicenseRef-{name}, which" in verdict.message, verdict.message


def test_a_declared_license_ref_stays_itself() -> None:
    verdict = decide(model("pvc://weights/m", license="LicenseRef-apache"), policies_from([]))
    assert (verdict.permitted, verdict.reason) == (False, "LicenseNotAllowed")
    assert "LicenseRef-apache" in verdict.message


@pytest.mark.parametrize(
    ("ref", "not_this"),
    [("LicenseRef-gpl", "GPL-1.0-or-later"), ("LicenseRef-lgpl", "LGPL-2.0-or-later")],
)
def test_family_ids_never_become_one_version(ref: str, not_this: str) -> None:
    # hub_to_spdx("gpl") keeps the family apart; parsing must not undo it.
    assert str(parse(ref)) == ref
    allows_it = policies_from([policy(allow=[not_this])])
    hub = Card(CardLicense(ref.removeprefix("LicenseRef-")))
    assert not decide(model("org/new-model"), allows_it, hub=hub).permitted


def test_a_card_listing_several_licenses_needs_all_of_them() -> None:
    # A repo whose card lists MIT and CC-BY-NC-4.0 holds material under both.
    card = card_license_of({"license": ["mit", "cc-by-nc-4.0"]}, [])
    assert card is not None
    verdict = decide(model("org/new-model"), policies_from([]), hub=Card(card))
    assert (verdict.permitted, verdict.reason) == (False, "LicenseDenied")


def test_a_warn_policy_is_not_hidden_by_a_dryrun_policy() -> None:
    # The webhook warns only on Warn verdicts: the order of the policies must not matter.
    audit = policy("a-audit", allow=["MIT"], enforcement="DryRun")
    legal = policy("b-legal", allow=["MIT"], enforcement="Warn")
    for order in ([audit, legal], [legal, audit]):
        verdict = decide(model("CohereForAI/c4ai-command-r-plus"), policies_from(order))
        assert (verdict.permitted, verdict.violation) == (True, True)
        assert verdict.enforcement == "Warn"
        assert verdict.message.endswith("(Warn: deployed anyway)"), verdict.message


def test_policy_entries_that_can_never_match_are_reported() -> None:
    # Leaves are compared one license at a time and "X WITH e" as X: these entries are inert.
    body = policy(
        allow=["MIT OR Apache-2.0", "Apache-2.0"],
        deny=["GPL-2.0-only WITH Classpath-exception-2.0"],
    )
    compiled, problems = compile_policy(LicensePolicy.model_validate(body))
    assert compiled.allow == frozenset({"Apache-2.0"})
    assert any("spec.allow" in p and "MIT OR Apache-2.0" in p for p in problems), problems
    assert any("spec.deny" in p and "Classpath-exception-2.0" in p for p in problems), problems
