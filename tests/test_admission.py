"""The license webhook fails closed, with a message to retry, when it cannot read policies.

(That it judges by the policies of the moment, also as a standby replica, is proven on a
real API server in tests/e2e/test_helm_rbac.py.)
"""

from __future__ import annotations

import asyncio
import socket

import kopf
import kubernetes
import pytest

from aistack import handlers
from aistack.controller import Reconciler
from aistack.kube import Kube
from aistack.licenses import decide_stack


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns


def test_a_replica_that_has_not_started_refuses_with_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers.RUNTIME, "reconciler", None)
    with pytest.raises(kopf.AdmissionError, match=r"is starting.*retry") as err:
        handlers._current_policies()
    assert err.value.code == 503


def test_an_unreadable_policy_list_refuses_with_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    config = kubernetes.client.Configuration()
    config.host = f"http://127.0.0.1:{closed_port()}"
    kube = Kube(kubernetes.client.ApiClient(configuration=config))
    monkeypatch.setattr(handlers.RUNTIME, "reconciler", Reconciler(kube, decide_stack))
    with pytest.raises(kopf.AdmissionError) as err:
        handlers._current_policies()
    assert err.value.code == 503
    message = str(err.value)
    assert "cannot read the cluster's LicensePolicies" in message
    assert "licensepolicies" in message  # the request that failed
    assert "retry" in message


def test_the_webhook_refuses_under_a_policy_it_cannot_read_and_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    newer = {"apiVersion": "aistack.dev/v1alpha1", "kind": "LicensePolicy",
             "metadata": {"name": "legal"},
             "spec": {"allow": ["Apache-2.0"], "datasets": {"allow": ["CC-BY-4.0"]}}}  # fmt: skip
    monkeypatch.setattr(handlers, "_current_policies", lambda: [newer])
    # A started replica (its client is never asked: the stack has no provider keys).
    kube = Kube(kubernetes.client.ApiClient())
    monkeypatch.setattr(handlers.RUNTIME, "reconciler", Reconciler(kube, decide_stack))
    model = {"name": "m", "source": "mistralai/Mistral-7B-v0.3"}  # Apache-2.0
    stack = {"apiVersion": "aistack.dev/v1alpha1", "kind": "AIStack",
             "metadata": {"name": "s", "namespace": "ml"}, "spec": {"models": [model]}}  # fmt: skip
    with pytest.raises(kopf.AdmissionError) as err:
        asyncio.run(handlers.admit_stack(body=stack, warnings=[], dryrun=False))  # type: ignore[arg-type]
    assert err.value.code == 403
    assert "LicensePolicy legal" in str(err.value) and "spec.datasets" in str(err.value)
