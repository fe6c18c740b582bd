"""hack/manifest-lint.yaml, the config of `make lint-manifests`: every accepted finding has a
reason, the examples it lints are all of them, and docs/manifest-lint.md lists the same
accepted findings. (Running the linters themselves is `make lint-manifests`.)"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "hack" / "manifest-lint.yaml"
DOC = ROOT / "docs" / "manifest-lint.md"
LINTERS = {"kube-score", "checkov"}
FIELDS = {"id", "checks", "objects", "containers", "sources", "messages", "reason"}


def config() -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return cfg


def accepted() -> list[dict[str, Any]]:
    return config()["accepted"]  # type: ignore[no-any-return]


def holds_aistack(path: Path) -> bool:
    docs = yaml.safe_load_all(path.read_text())
    return any(isinstance(d, dict) and d.get("kind") == "AIStack" for d in docs)


def test_accepted_findings_are_listed() -> None:
    assert accepted(), "no accepted findings: drop the list, not the key"


@pytest.mark.parametrize("entry", accepted(), ids=lambda e: str(e.get("id")))
def test_every_accepted_finding_has_a_reason(entry: dict[str, Any]) -> None:
    assert set(entry) <= FIELDS, f"unknown fields {set(entry) - FIELDS}"
    assert isinstance(entry.get("id"), str) and re.fullmatch(r"[a-z0-9-]+", entry["id"])
    reason = entry.get("reason")
    assert isinstance(reason, str) and reason.strip(), f"{entry['id']}: no reason"
    assert len(reason.split()) >= 8, f"{entry['id']}: a reason says why, in a sentence or more"
    checks = entry.get("checks")
    assert isinstance(checks, list) and checks, f"{entry['id']}: no checks"
    for check in checks:
        linter, _, name = str(check).partition(":")
        assert linter in LINTERS and name, f"{entry['id']}: {check!r} is not LINTER:CHECK"
    for field in ("objects", "containers", "sources", "messages"):
        value = entry.get(field)
        assert value is None or (
            isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
        ), f"{entry['id']}: {field} must be a non-empty list of globs"


def test_accepted_ids_are_unique() -> None:
    ids = [e["id"] for e in accepted()]
    assert len(ids) == len(set(ids))


def test_every_example_stack_is_linted() -> None:
    listed = config()["examples"]
    assert len(listed) == len(set(listed))
    for path in listed:
        assert holds_aistack(ROOT / path), f"{path} holds no AIStack"
    stacks = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "examples").rglob("*")
        if p.suffix in {".yaml", ".yml"} and holds_aistack(p)
    }
    assert stacks == set(listed), "hack/manifest-lint.yaml's examples differ from examples/"


def test_chart_variants() -> None:
    """The linted variants are the chart's ci/ values files, which the chart tests render
    and test too (one set of values, no copy to drift)."""
    chart = config()["chart"]
    assert (ROOT / chart["path"] / "Chart.yaml").is_file()
    variants = chart["variants"]
    assert {"default", "two-replicas", "everything"} <= set(variants)
    from test_chart import VARIANTS

    assert set(variants) <= set(VARIANTS)
    assert VARIANTS["default"] == {}
    for name in variants:
        assert (ROOT / chart["path"] / "ci" / f"{name}-values.yaml").is_file(), name


def test_doc_lists_the_same_accepted_findings() -> None:
    """The doc's table has one row per accepted entry: | `id` | checks | reason |."""
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), flags=re.MULTILINE)
    assert sorted(rows) == sorted(e["id"] for e in accepted())


def _lint_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "lint_manifests", ROOT / "hack" / "lint_manifests.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_an_entry_accepts_only_what_every_field_matches() -> None:
    lint = _lint_module()
    entry = {
        "id": "x",
        "checks": ["kube-score:container-resources"],
        "objects": ["Deployment/*-gateway"],
        "containers": ["gateway"],
        "sources": ["example:*"],
        "messages": ["CPU limit is not set"],
        "reason": "r",
    }
    f = lint.Finding(
        "kube-score", "container-resources", "example:quickstart",
        "Deployment/quickstart-gateway", "gateway", "CPU limit is not set",
    )  # fmt: skip
    assert lint.matches(entry, f)
    assert not lint.matches(entry, dataclasses.replace(f, linter="checkov"))
    assert not lint.matches(entry, dataclasses.replace(f, obj="Deployment/quickstart-mlflow"))
    assert not lint.matches(entry, dataclasses.replace(f, container=""))
    assert not lint.matches(entry, dataclasses.replace(f, source="chart:default"))
    assert not lint.matches(entry, dataclasses.replace(f, message="Memory limit is not set"))
    bare = {"id": "y", "checks": ["kube-score:container-resources"], "reason": "r"}
    assert lint.matches(bare, dataclasses.replace(f, container="", source="chart:default"))


def test_a_leaderworkerset_is_linted_as_the_statefulsets_lws_makes_of_it() -> None:
    from aistack.render import render
    from helpers import all_permitted, stack

    lint = _lint_module()
    s = stack(models=[{"name": "big", "source": "o/big", "nodes": 3, "replicas": 2}])
    docs = render(s, all_permitted(s))
    (lws,) = [d for d in docs if d["kind"] == "LeaderWorkerSet"]
    linted = lint.as_linted(docs)
    assert not [d for d in linted if d["kind"] == "LeaderWorkerSet"]
    sets = {d["metadata"]["name"]: d for d in linted if d["kind"] == "StatefulSet"}
    assert set(sets) == {"demo-vllm-big-lws", "demo-vllm-big-lws-0", "demo-vllm-big-lws-1"}
    template = lws["spec"]["leaderWorkerTemplate"]
    leaders, workers = sets["demo-vllm-big-lws"], sets["demo-vllm-big-lws-1"]
    assert leaders["spec"]["replicas"] == 2 and workers["spec"]["replicas"] == 2
    assert leaders["spec"]["template"]["spec"] == template["leaderTemplate"]["spec"]
    assert workers["spec"]["template"]["spec"] == template["workerTemplate"]["spec"]
    labels = workers["spec"]["template"]["metadata"]["labels"]
    assert labels["leaderworkerset.sigs.k8s.io/group-index"] == "1"
    assert labels["aistack.dev/role"] == "worker"
    (service,) = [
        d for d in linted if d["kind"] == "Service" and d["metadata"]["name"] == "demo-vllm-big-lws"
    ]
    assert service["spec"]["clusterIP"] == "None"
