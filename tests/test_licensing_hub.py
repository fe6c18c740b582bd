"""The Hugging Face Hub client behind ``--hub``, with huggingface_hub's own objects.

``HfApi.model_info`` is replaced by a function answering what the Hub's API answers
(``ModelInfo`` built from the API's JSON, ``GatedRepoError`` for a gated repo without a
token), so these tests exercise the real parsing of ``card_data`` and tags, offline.
"""

from __future__ import annotations

from typing import Any

import httpx2
import huggingface_hub
import pytest
from huggingface_hub.errors import GatedRepoError
from huggingface_hub.hf_api import ModelInfo

from aistack import hub as hub_module
from aistack.hub import CardLicense, HfHub
from aistack.licenses import decide, policies_from
from helpers import stack

Call = dict[str, Any]


def api_answer(repo_id: str, card: dict[str, Any] | None, tags: list[str]) -> ModelInfo:
    body: dict[str, Any] = {"id": repo_id, "sha": "0" * 40, "tags": tags}
    if card is not None:
        body["cardData"] = card
    return ModelInfo(**body)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Every model_info call; answers come from CARDS, gated repos need a token."""
    seen: list[Call] = []

    def model_info(self: Any, repo_id: str, **kwargs: Any) -> ModelInfo:
        seen.append({"repo_id": repo_id, **kwargs})
        if repo_id in GATED and not kwargs.get("token"):
            request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
            raise GatedRepoError("gated", response=httpx2.Response(401, request=request))
        card, tags = CARDS[repo_id]
        return api_answer(repo_id, card, tags)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    return seen


CARDS: dict[str, tuple[dict[str, Any] | None, list[str]]] = {
    "acme/research-7b": ({"license": "other", "license_name": "acme-research"},
                         ["license:other", "text-generation"]),
    "acme/open-7b": ({"license": "apache-2.0"}, ["license:apache-2.0"]),
    "acme/tag-only": ({"language": ["en"]}, ["text-generation", "license:mit"]),
    "acme/no-card": (None, ["text-generation"]),
    "acme/gated-8b": ({"license": "llama3.1"}, ["license:llama3.1"]),
}  # fmt: skip
GATED = {"acme/gated-8b"}


def test_the_card_is_read_at_the_pinned_revision(calls: list[Call]) -> None:
    hub = HfHub(token="hf_secret")
    assert hub.card_license("acme/research-7b", "abc123") == CardLicense(
        "other", "acme-research", "acme/research-7b"
    )
    (call,) = calls
    assert call["revision"] == "abc123"
    assert call["token"] == "hf_secret"
    assert call["timeout"] == 3.0, "a short timeout: a reconcile must not hang on the hub"
    assert {"cardData", "tags"} <= set(call["expand"])


def test_without_a_token_no_stored_credentials_are_used(calls: list[Call]) -> None:
    HfHub().card_license("acme/open-7b", None)
    # token=False keeps huggingface_hub from reading a token saved on the machine.
    assert calls[0]["token"] is False


def test_the_license_tag_when_the_card_has_no_license(calls: list[Call]) -> None:
    assert HfHub().card_license("acme/tag-only", None) == CardLicense("mit", "", "acme/tag-only")
    assert HfHub().card_license("acme/no-card", None) is None


def test_a_gated_model_needs_the_token(calls: list[Call]) -> None:
    assert HfHub().card_license("acme/gated-8b", None) is None
    card = HfHub(token="hf_secret").card_license("acme/gated-8b", None)
    assert card == CardLicense("llama3.1", "", "acme/gated-8b")
    assert len(calls) == 2


def test_a_gated_model_without_a_token_is_unknown_not_permitted(calls: list[Call]) -> None:
    m = stack(models=[{"name": "m", "source": "acme/gated-8b"}]).spec.models[0]
    lenient = policies_from([{"apiVersion": "aistack.dev/v1alpha1", "kind": "LicensePolicy",
                              "metadata": {"name": "p"},
                              "spec": {"allow": ["LicenseRef-llama3.1"]}}])  # fmt: skip
    denied = decide(m, lenient, hub=HfHub())
    assert (denied.permitted, denied.reason) == (False, "LicenseUnknown")
    allowed = decide(m, lenient, hub=HfHub(token="hf_secret"))
    assert (allowed.permitted, allowed.license, allowed.license_source) == (
        True,
        "LicenseRef-llama3.1",
        "Hub",
    )


def test_answers_are_cached_per_revision_until_the_ttl(
    calls: list[Call], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(hub_module.time, "monotonic", lambda: now[0])
    hub = HfHub(ttl=600.0)
    for _ in range(3):
        hub.card_license("acme/open-7b", "rev1")
    assert len(calls) == 1
    hub.card_license("acme/open-7b", "rev2")
    assert len(calls) == 2, "another revision is another card"
    now[0] += 601
    hub.card_license("acme/open-7b", "rev1")
    assert len(calls) == 3, "asked again once the answer is older than the TTL"
