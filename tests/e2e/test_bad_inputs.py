"""The bad-input table (tests/bad_inputs.py) against the real API server: every case it
can see is refused (CRD schema, CEL rules or the license webhook) with a message naming
the field; nothing is stored; the operator neither crashes nor logs a traceback."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_process import OperatorProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bad_inputs import CASES, Case

API_CASES = [c for c in CASES if c.api is not None]


@pytest.fixture(scope="module")
def bad_ns(cluster: Any) -> Iterator[str]:
    name = f"e2e-bad-inputs-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # The Secrets the table's provider routes name, the provider's key opted in: a case
    # about where prompts go is then refused for that, not for a missing key.
    cluster.kubectl("create", "secret", "generic", "gw", "-n", name, "--from-literal=key=k")
    cluster.kubectl("create", "secret", "generic", "keys", "-n", name, "--from-literal=openai=k")
    cluster.kubectl("label", "secret", "keys", "-n", name, "aistack.dev/provider-credentials=true")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_the_api_server_refuses_naming_the_field(
    case: Case, cluster: Any, governed: OperatorProcess, bad_ns: str
) -> None:
    assert case.doc is not None and case.api is not None
    # `create`, not `apply`: apply would copy the whole object into an annotation, and a
    # huge field would then be refused for the annotation's size instead of its own.
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-n", bad_ns, "-f", "-",
        input=json.dumps(case.doc), check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0, f"admitted: {proc.stdout}"
    assert case.api in proc.stderr, proc.stderr[-1500:]
    assert len(proc.stderr) < 20_000, "the refusal should not echo a huge input back"


def test_nothing_was_stored_and_the_operator_is_unharmed(
    cluster: Any, governed: OperatorProcess, bad_ns: str
) -> None:
    assert cluster.get_json("aistacks", "-n", bad_ns)["items"] == []
    assert not [
        p for p in cluster.get_json("licensepolicies")["items"]
        if p["metadata"]["name"] == "bad-policy"
    ]  # fmt: skip
    assert governed.proc is not None and governed.proc.poll() is None, "the operator exited"
    log = governed.log()
    assert "Traceback" not in log, log[-3000:]
