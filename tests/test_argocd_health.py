"""The Argo CD health check for AIStack, run by a Lua 5.1 interpreter (Argo CD's gopher-lua
speaks 5.1), over Argo CD-style test cases and every phase/condition combination; and the
Argo CD examples that ship it."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from aistack.api.v1alpha1 import LicensePolicy
from aistack.cli import load_stacks

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "operator" / "aistack" / "argocd" / "health.lua"
CASES = ROOT / "tests" / "argocd"
EXAMPLES = ROOT / "examples" / "argocd"
SNIPPET = EXAMPLES / "argocd-cm.yaml"
HEALTH_KEY = "resource.customizations.health.aistack.dev_AIStack"
APP_HEALTH_KEY = "resource.customizations.health.argoproj.io_Application"
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

#: Argo CD (1.8 on) no longer assesses Applications' health, so an app of apps would not
#: wait for the operator's Application before syncing the stacks'. Its documented remedy:
APP_HEALTH = """\
hs = {}
hs.status = "Progressing"
hs.message = ""
if obj.status ~= nil and obj.status.health ~= nil then
  hs.status = obj.status.health.status
  if obj.status.health.message ~= nil then
    hs.message = obj.status.health.message
  end
end
return hs
"""


def health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """Run the check as Argo CD does: `obj` is the resource, the script returns a table."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    # Argo CD's sandbox has no os or io; neither may the check.
    lua.execute("os = nil; io = nil; require = nil; dofile = nil; loadfile = nil")
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script if script is not None else LUA.read_text())
    return {str(k): str(v) for k, v in result.items()}


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- Argo CD-style cases


def _cases() -> list[dict[str, Any]]:
    return yaml.safe_load((CASES / "health_test.yaml").read_text())["tests"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: Path(c["inputPath"]).stem)
def test_health_of_sample_stacks(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CASES / case["inputPath"]).read_text())
    got = health(obj)
    want = case["healthStatus"]
    assert got["status"] == want["status"]
    assert one_line(got["message"]) == one_line(want["message"])


def test_every_sample_is_a_case_and_every_phase_is_covered() -> None:
    paths = {c["inputPath"] for c in _cases()}
    assert paths == {f"testdata/{p.name}" for p in (CASES / "testdata").glob("*.yaml")}
    phases = {
        (yaml.safe_load((CASES / p).read_text()).get("status") or {}).get("phase") for p in paths
    }
    assert {None, "Pending", "Progressing", "Ready", "Degraded", "Blocked"} <= phases
    assert {c["healthStatus"]["status"] for c in _cases()} == STATUSES - {"Missing"}


# ---------------------------------------------------------------- every combination

PHASES = [None, "Pending", "Progressing", "Ready", "Degraded", "Blocked"]
CONDITION = [None, "True", "False", "Unknown"]


def _stack(
    phase: str | None, ready: str | None, license: str | None, stale: bool, replicas: int
) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": 4 if stale else 5}
    if phase:
        status["phase"] = phase
    conditions = []
    for kind, value in (("Ready", ready), ("LicenseCompliant", license)):
        if value:
            conditions.append({"type": kind, "status": value, "reason": "R", "message": "m"})
    if conditions:
        status["conditions"] = conditions
    status["models"] = [{"name": "m", "replicas": replicas}]
    return {"metadata": {"name": "s", "generation": 5}, "status": status}


COMBINATIONS = list(itertools.product(PHASES, CONDITION, CONDITION, [False, True], [0, 1]))


def expected(phase: str | None, ready: str | None, stale: bool, replicas: int) -> str:
    """The mapping docs/argocd.md states, as a table lookup."""
    if phase is None or stale:
        return "Progressing"
    if phase == "Ready":
        if ready != "True":
            return "Progressing"
        return "Healthy" if replicas else "Suspended"
    return {"Pending": "Progressing", "Progressing": "Progressing"}.get(phase, "Degraded")


@pytest.mark.parametrize(("phase", "ready", "license", "stale", "replicas"), COMBINATIONS)
def test_every_phase_and_condition_combination(
    phase: str | None, ready: str | None, license: str | None, stale: bool, replicas: int
) -> None:
    got = health(_stack(phase, ready, license, stale, replicas))
    assert got["status"] == expected(phase, ready, stale, replicas)
    assert got["message"], "Argo CD shows the message: never empty"
    if got["status"] == "Healthy" and license == "False":
        assert "license policy not met" in got["message"]


def test_no_status_at_all_and_an_empty_object() -> None:
    assert health({"metadata": {"name": "s"}})["status"] == "Progressing"
    assert health({"metadata": {}, "status": {"phase": "Ready"}})["status"] == "Progressing"


# ---------------------------------------------------------------- the argocd-cm snippet


def render_snippet() -> str:
    """argocd-cm.yaml, generated from health.lua (pytest --update-goldens rewrites it)."""

    def block(text: str) -> str:
        return "".join(f"    {line}".rstrip() + "\n" for line in text.splitlines())

    return (
        "# Generated from operator/aistack/argocd/health.lua by tests/test_argocd_health.py\n"
        "# (pytest --update-goldens). Merge into Argo CD's argocd-cm ConfigMap, e.g.\n"
        "#   kubectl patch configmap argocd-cm -n argocd --type merge \\\n"
        "#     --patch-file examples/argocd/argocd-cm.yaml\n"
        "# The second key restores the Application health Argo CD stopped assessing in 1.8,\n"
        "# which the sync waves of an app of apps need.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: argocd-cm\n"
        "  namespace: argocd\n"
        "  labels:\n"
        "    app.kubernetes.io/name: argocd-cm\n"
        "    app.kubernetes.io/part-of: argocd\n"
        "data:\n"
        f"  {HEALTH_KEY}: |\n{block(LUA.read_text())}"
        f"  {APP_HEALTH_KEY}: |\n{block(APP_HEALTH)}"
    )


def test_the_argocd_cm_snippet_carries_the_lua_file_byte_for_byte(update_goldens: bool) -> None:
    if update_goldens:
        SNIPPET.write_text(render_snippet())
    assert SNIPPET.read_text() == render_snippet(), "run pytest --update-goldens"
    data = yaml.safe_load(SNIPPET.read_text())["data"]
    assert data[HEALTH_KEY].encode() == LUA.read_bytes()
    assert data[APP_HEALTH_KEY] == APP_HEALTH


def test_the_application_health_snippet() -> None:
    app = {"status": {"health": {"status": "Degraded", "message": "x"}}}
    assert health(app, APP_HEALTH) == {"status": "Degraded", "message": "x"}
    assert health({}, APP_HEALTH)["status"] == "Progressing"


# ---------------------------------------------------------------- the examples


def _wave(doc: dict[str, Any]) -> int:
    return int(doc["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def test_the_operator_syncs_before_the_stacks_and_the_policy_before_a_stack() -> None:
    operator = yaml.safe_load((EXAMPLES / "aistack-operator.yaml").read_text())
    stacks = yaml.safe_load((EXAMPLES / "aistack-stacks.yaml").read_text())
    for app in (operator, stacks):
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
        assert app["spec"]["destination"]["server"] and app["spec"]["source"]["repoURL"]
    assert _wave(operator) < _wave(stacks)
    assert operator["spec"]["source"]["path"] == "charts/aistack-operator"
    assert (ROOT / operator["spec"]["source"]["path"] / "Chart.yaml").exists()
    assert (ROOT / stacks["spec"]["source"]["path"]) == EXAMPLES / "stacks"

    docs = [
        d
        for p in sorted((EXAMPLES / "stacks").glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]
    policies = [d for d in docs if d["kind"] == "LicensePolicy"]
    aistacks = [d for d in docs if d["kind"] == "AIStack"]
    assert policies and aistacks
    assert max(_wave(p) for p in policies) < min(_wave(s) for s in aistacks)
    for policy in policies:
        LicensePolicy.model_validate(policy)


def test_the_example_stacks_are_valid() -> None:
    paths = [
        str(p)
        for p in sorted((EXAMPLES / "stacks").glob("*.yaml"))
        if "kind: AIStack" in p.read_text()
    ]
    stacks, _ = load_stacks(paths)
    assert [s.metadata.name for s in stacks] == ["chat"]
