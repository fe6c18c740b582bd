"""An outage of the Hugging Face Hub never stops a model that serves.

A local HTTP server plays the Hub's API (``/api/models/<repo>/revision/<rev>``), reached by
the real ``huggingface_hub`` client: it answers, or holds every request longer than the
client's timeout. A model the Hub once permitted keeps its verdict (marked stale) while
the Hub does not answer; a model it never permitted stays unpermitted; lookups are retried
with backoff, and the stack is looked at again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from aistack.controller import LOOKUP_RETRY, Reconciler, StackView
from aistack.hub import HfHub, HubUnavailable
from aistack.licenses import decide_stack
from aistack.verdicts import LicenseVerdict
from helpers import stack_doc
from hubserver import REPO, REV, FakeHubServer
from test_controller import FakeKube


@pytest.fixture
def server() -> Iterator[FakeHubServer]:
    s = FakeHubServer()
    try:
        yield s
    finally:
        s.close()


def hub(server: FakeHubServer, **kw: Any) -> HfHub:
    kw.setdefault("timeout", 0.3)
    return HfHub(endpoint=server.url, **kw)


def body(status: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = stack_doc(models=[{"name": "m", "source": REPO, "revision": REV, "replicas": 2}])
    doc["metadata"].update(uid="uid-1", generation=1, resourceVersion="1")
    if status is not None:
        doc["status"] = status
    return doc


def verdict(h: HfHub, doc: dict[str, Any]) -> LicenseVerdict:
    from aistack.api import AIStack

    return decide_stack(AIStack.model_validate(doc), [], h)["m"]


def test_the_real_client_reads_the_license_from_the_local_hub(server: FakeHubServer) -> None:
    v = verdict(hub(server), body())
    assert (v.permitted, v.license, v.license_source, v.stale) == (
        True, "Apache-2.0", "Hub", None,
    )  # fmt: skip
    assert server.requests and f"/api/models/{REPO}/revision/{REV}" in server.requests[0]


def test_a_timeout_keeps_the_last_good_verdict_and_says_it_is_stale(
    server: FakeHubServer,
) -> None:
    h = hub(server, ttl=0.0)  # every answer expires at once: each lookup asks again
    assert verdict(h, body()).permitted
    server.hang = True
    v = verdict(h, body())
    assert (v.permitted, v.license, v.license_source) == (True, "Apache-2.0", "Hub")
    assert v.stale is not None and "did not answer" in v.stale and "Apache-2.0" in v.stale


def test_a_model_the_hub_never_permitted_stays_unpermitted_until_it_answers(
    server: FakeHubServer,
) -> None:
    server.hang = True
    h = hub(server, retry=0.5)
    v = verdict(h, body())
    assert (v.permitted, v.reason) == (False, "LicenseUnknown")
    assert v.stale is not None and "did not answer" in v.message
    asked = len(server.requests)
    # Within the backoff the hub is not asked again: the lookup fails at once.
    started = time.monotonic()
    with pytest.raises(HubUnavailable):
        h.card_license(REPO, REV)
    assert len(server.requests) == asked and time.monotonic() - started < 0.2
    # The hub is back; once the backoff has passed, the next lookup asks and permits.
    server.hang = False
    time.sleep(0.6)
    v = verdict(h, body())
    assert (v.permitted, v.license, v.stale) == (True, "Apache-2.0", None)


def test_the_backoff_doubles_while_the_hub_stays_away(server: FakeHubServer) -> None:
    server.hang = True
    h = hub(server, retry=0.2, ttl=10.0)
    delays = []
    for _ in range(3):
        with pytest.raises(HubUnavailable):
            h.card_license(REPO, REV)
        delays.append(h._failures[(REPO, REV)][1])
        time.sleep(delays[-1] + 0.05)
    assert delays == [0.2, 0.4, 0.8]


def test_an_operator_restarted_during_an_outage_keeps_what_the_status_recorded(
    server: FakeHubServer,
) -> None:
    # A fresh client (nothing cached) while the hub does not answer: the stack's status
    # says the Hub gave Apache-2.0 at this revision, and that verdict is kept.
    seen = {"models": [{"name": "m", "source": REPO, "revision": REV, "license": "Apache-2.0",
                        "licenseSource": "Hub", "permitted": True}]}  # fmt: skip
    server.hang = True
    v = verdict(hub(server), body(seen))
    assert (v.permitted, v.license, v.license_source) == (True, "Apache-2.0", "Hub")
    assert v.stale is not None
    # Not for another revision: that card was never read.
    other = body(seen)
    other["spec"]["models"][0]["revision"] = "f" * 40
    assert not verdict(hub(server), other).permitted


def test_a_serving_model_keeps_its_replicas_through_an_outage(server: FakeHubServer) -> None:
    h = hub(server, ttl=0.0)
    kube = FakeKube()
    rec = Reconciler(
        kube=kube,  # type: ignore[arg-type]
        licensing=lambda s, p: decide_stack(s, p, h),
        clock=lambda: "2026-01-01T00:00:00Z",
    )
    key = ("ml", "demo")
    deployment = ("Deployment", "ml", "demo-vllm-m")
    first = rec.reconcile_once(key, StackView(stack=body()))
    assert first is not None and first.requeue_after is None
    assert kube.objects[deployment]["spec"]["replicas"] == 2
    server.hang = True
    doc = body(kube.status)
    result = rec.reconcile_once(key, StackView(stack=doc, children=list(kube.objects.values())))
    assert result is not None
    assert kube.objects[deployment]["spec"]["replicas"] == 2, "never scaled to zero"
    assert deployment not in result.applied
    assert result.requeue_after == LOOKUP_RETRY, "the stack is looked at again"
    assert kube.status is not None
    compliant = next(c for c in kube.status["conditions"] if c["type"] == "LicenseCompliant")
    assert (compliant["status"], compliant["reason"]) == ("True", "LicenseVerdictStale")
    assert "did not answer" in compliant["message"]
