"""The Argo CD health checks for AIStack and LicensePolicy, run in a Lua 5.1 sandbox with
exactly the libraries Argo CD opens (tests/argocd_lua.py), over Argo CD-style test cases and
every phase/condition combination; and the Argo CD examples that ship them. Argo CD's own
evaluator runs the same cases in tests/e2e/test_argocd.py."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from aistack.api.v1alpha1 import LicensePolicy
from aistack.cli import load_stacks
from aistack.licenses import policy_status
from argocd_lua import CASES, KINDS, cases, health, health_key, one_line, run_health, script

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "argocd"
SNIPPET = EXAMPLES / "argocd-cm.yaml"
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


# ---------------------------------------------------------------- the sandbox is Argo CD's


def test_the_sandbox_has_only_the_libraries_argo_cd_opens() -> None:
    """What broke inside Argo CD (`string.format` in the stale-generation branch) fails
    here too, so a full Lua can never again hide it."""
    with pytest.raises(Exception, match="string"):
        run_health({}, 'return {status = string.format("%d", 1)}')
    with pytest.raises(Exception, match="index a string value"):
        run_health({}, 'return {status = ("x"):upper()}')
    for missing in ("math", "io", "debug", "coroutine"):
        assert run_health({}, f"return {{status = type({missing})}}")["status"] == "nil"
    got = run_health({}, "return {status = tostring(5) .. type(os.date) .. type(table.insert)}")
    assert got["status"] == "5functionfunction"
    assert run_health({}, "return {status = type(os.execute)}")["status"] == "nil"


def test_a_stale_stack_is_progressing_in_argo_cds_sandbox() -> None:
    """The branch that called string.format, on every admitted spec change."""
    stale = {"metadata": {"generation": 3}, "status": {"phase": "Ready", "observedGeneration": 2}}
    assert health(stale) == {
        "status": "Progressing",
        "message": "Waiting for the aistack operator to observe generation 3",
    }


# ---------------------------------------------------------------- Argo CD-style cases

ALL_CASES = [(kind, case) for kind in KINDS for case in cases(kind)]


@pytest.mark.parametrize(
    ("kind", "case"), ALL_CASES, ids=[f"{k}-{Path(c['inputPath']).stem}" for k, c in ALL_CASES]
)
def test_health_of_sample_objects(kind: str, case: dict[str, Any]) -> None:
    got = health(case["object"], kind)
    want = case["healthStatus"]
    assert got["status"] == want["status"]
    assert one_line(got["message"]) == one_line(want["message"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_sample_is_a_case(kind: str) -> None:
    paths = {c["inputPath"] for c in cases(kind)}
    assert paths == {f"testdata/{p.name}" for p in (CASES / kind / "testdata").glob("*.yaml")}
    assert all(c["object"]["kind"] == kind for c in cases(kind))


def test_every_stack_phase_is_covered() -> None:
    phases = {(c["object"].get("status") or {}).get("phase") for c in cases("AIStack")}
    assert {None, "Pending", "Progressing", "Ready", "Degraded", "Blocked"} <= phases
    assert {c["healthStatus"]["status"] for c in cases("AIStack")} == STATUSES - {"Missing"}


def test_policy_samples_carry_the_status_the_operator_writes() -> None:
    """The LicensePolicy samples are not hand-made: each status is what ``policy_status``
    computes for the sample's spec (the stale one: for the spec before the last edit)."""
    reasons = set()
    for case in cases("LicensePolicy"):
        obj = case["object"]
        if "status" not in obj or case["inputPath"].endswith("stale-generation.yaml"):
            continue
        assert obj["status"] == policy_status(obj, obj["status"], "2026-01-01T00:00:00Z")
        reasons.add(obj["status"]["conditions"][0]["reason"])
    assert reasons == {"Valid", "PolicyInvalid", "InvalidLicenseIds"}


def test_policy_health_follows_the_valid_condition() -> None:
    def policy(status: str, reason: str, generation: int = 1) -> dict[str, Any]:
        condition = {"type": "Valid", "status": status, "reason": reason, "message": "m"}
        return {
            "metadata": {"generation": generation},
            "status": {"observedGeneration": 1, "conditions": [condition]},
        }

    assert health(policy("True", "Valid"), "LicensePolicy")["status"] == "Healthy"
    for reason in ("PolicyInvalid", "InvalidLicenseIds"):
        got = health(policy("False", reason), "LicensePolicy")
        assert got == {"status": "Degraded", "message": f"{reason}: m"}
    assert health(policy("True", "Valid", 2), "LicensePolicy")["status"] == "Progressing"
    assert health(policy("Unknown", "X"), "LicensePolicy")["status"] == "Progressing"
    assert health({"metadata": {}}, "LicensePolicy")["status"] == "Progressing"


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
    """argocd-cm.yaml, generated from the health scripts (pytest --update-goldens rewrites
    it)."""

    def block(text: str) -> str:
        return "".join(f"    {line}".rstrip() + "\n" for line in text.splitlines())

    return (
        "# Generated from operator/aistack/argocd/<Kind>/health.lua by\n"
        "# tests/test_argocd_health.py (pytest --update-goldens). Merge into Argo CD's argocd-cm\n"
        "# ConfigMap (it sets only these keys), e.g.\n"
        "#   kubectl patch configmap argocd-cm -n argocd --type merge \\\n"
        "#     --patch-file examples/argocd/argocd-cm.yaml\n"
        "# The scripts use only what Argo CD's Lua sandbox opens (no string library), so no\n"
        "# useOpenLibs is needed. The last key restores the Application health Argo CD stopped\n"
        "# assessing in 1.8, which the sync waves of an app of apps need.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: argocd-cm\n"
        "  namespace: argocd\n"
        "  labels:\n"
        "    app.kubernetes.io/name: argocd-cm\n"
        "    app.kubernetes.io/part-of: argocd\n"
        "data:\n"
        + "".join(f"  {health_key(kind)}: |\n{block(script(kind).read_text())}" for kind in KINDS)
        + f"  {APP_HEALTH_KEY}: |\n{block(APP_HEALTH)}"
    )


def test_the_argocd_cm_snippet_carries_the_lua_file_byte_for_byte(update_goldens: bool) -> None:
    if update_goldens:
        SNIPPET.write_text(render_snippet())
    assert SNIPPET.read_text() == render_snippet(), "run pytest --update-goldens"
    data = yaml.safe_load(SNIPPET.read_text())["data"]
    for kind in KINDS:
        assert data[health_key(kind)].encode() == script(kind).read_bytes()
    assert data[APP_HEALTH_KEY] == APP_HEALTH


def test_the_application_health_snippet() -> None:
    app = {"status": {"health": {"status": "Degraded", "message": "x"}}}
    assert run_health(app, APP_HEALTH) == {"status": "Degraded", "message": "x"}
    assert run_health({}, APP_HEALTH)["status"] == "Progressing"


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


def test_the_app_of_apps_syncs_just_the_two_applications() -> None:
    """A parent over examples/argocd that synced argocd-cm.yaml too would own Argo CD's
    own ConfigMap; ``directory.include`` names exactly the two Applications."""
    parent = yaml.safe_load((EXAMPLES / "aistack-apps.yaml").read_text())
    source = parent["spec"]["source"]
    assert ROOT / source["path"] == EXAMPLES
    include = source["directory"]["include"]
    assert include.startswith("{") and include.endswith("}")
    named = set(include[1:-1].split(","))
    assert named == {"aistack-operator.yaml", "aistack-stacks.yaml"}
    kinds = {p.name: yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES.glob("*.yaml")}
    assert {n for n, k in kinds.items() if k == "Application"} - named == {"aistack-apps.yaml"}


def test_the_stacks_land_where_the_demo_operator_serves_and_fixes_are_not_held_back() -> None:
    stacks = yaml.safe_load((EXAMPLES / "aistack-stacks.yaml").read_text())
    namespace = stacks["spec"]["destination"]["namespace"]
    demo = (ROOT / "hack" / "demo.sh").read_text()
    assert f"--namespace {namespace}" in demo
    retry = stacks["spec"]["syncPolicy"]["retry"]
    # Retries with the newest commit, and a fix waits at most one backoff step.
    assert retry["refresh"] is True
    assert retry["backoff"]["maxDuration"] in ("30s", "1m", "60s")
