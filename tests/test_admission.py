"""The license webhook fails closed, with a message to retry, when it cannot read policies.

(That it judges by the policies of the moment, also as a standby replica, is proven on a
real API server in tests/e2e/test_helm_rbac.py.)
"""

from __future__ import annotations

import socket

import kopf
import kubernetes
import pytest

from aistack import handlers
from aistack.controller import Reconciler
from aistack.kube import Kube
from aistack.licensing_bridge import license_verdicts


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
    monkeypatch.setattr(handlers.RUNTIME, "reconciler", Reconciler(kube, license_verdicts))
    with pytest.raises(kopf.AdmissionError) as err:
        handlers._current_policies()
    assert err.value.code == 503
    message = str(err.value)
    assert "cannot read the cluster's LicensePolicies" in message
    assert "licensepolicies" in message  # the request that failed
    assert "retry" in message
