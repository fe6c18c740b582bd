"""GitOps with a real Argo CD (``make gitops``): the application-controller and repo-server
built from Argo CD's Go module, syncing ``examples/argocd`` from a git server on loopback
into the local cluster, with the operator reconciling and judging what Argo CD applies.
Every verdict asserted is Argo CD's own: the Applications' sync and health status, their
operation state and the health it computes for each resource with the project's Lua.

As on ``make demo``, the operator runs on the host (kwok runs no container), so the
operator's Application installs the chart with its webhook off (the host's operator serves
the webhook itself); otherwise the examples are committed as shipped, with the git
server's URL for the repository's.

The tests run in order, each from where the last left the repository and the cluster.
"""

from __future__ import annotations

import contextlib
import copy
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_process import REPO_ROOT, OperatorProcess

from argocd import NAMESPACE, ArgoCD, GitRepo, argocd_bin_dir, running
from conftest import governed_operator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from argocd_lua import KINDS, cases, one_line

EXAMPLES = REPO_ROOT / "examples" / "argocd"
STACKS_NS = "ml"
PARENT, OPERATOR_APP, STACKS_APP = "aistack-apps", "aistack-operator", "aistack-stacks"
NC_MODEL = {"name": "command-r", "source": "CohereForAI/c4ai-command-r-plus", "gpus": 1}
SYNC_TIMEOUT = 240


# ---------------------------------------------------------------- Argo CD's own evaluator


def _evaluate(path: Path) -> tuple[str, str]:
    out = subprocess.run(
        [str(argocd_bin_dir() / "argocd"), "admin", "settings", "resource-overrides", "health",
         str(path), "--argocd-cm-path", str(EXAMPLES / "argocd-cm.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"argocd could not evaluate {path.name}:\n{out.stderr[-2000:]}"
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    return lines["STATUS"], lines.get("MESSAGE", "")


ALL_CASES = [(kind, case) for kind in KINDS for case in cases(kind)]


@pytest.mark.parametrize(
    ("kind", "case"), ALL_CASES, ids=[f"{k}-{Path(c['inputPath']).stem}" for k, c in ALL_CASES]
)
def test_argo_cds_own_evaluator_agrees_with_every_health_case(
    kind: str, case: dict[str, Any]
) -> None:
    """`argocd admin settings resource-overrides health` over the shipped argocd-cm.yaml:
    Argo CD's Lua runtime, libraries and all (no `string`, no `useOpenLibs`)."""
    path = REPO_ROOT / "tests" / "argocd" / kind / case["inputPath"]
    status, message = _evaluate(path)
    assert status == case["healthStatus"]["status"]
    assert one_line(message) == one_line(case["healthStatus"]["message"])


# ---------------------------------------------------------------- the GitOps scenario


class Scenario:
    """Argo CD, its git repository and the operator, with helpers to read Argo CD's view."""

    def __init__(self, cluster: Any, argo: ArgoCD, repo: GitRepo, reconciler: OperatorProcess):
        self.cluster, self.argo, self.repo, self.reconciler = cluster, argo, repo, reconciler

    def app(self, name: str) -> dict[str, Any]:
        return self.argo.app(name)

    def summary(self, name: str) -> tuple[str, str, str, str]:
        """(sync status, synced revision, health, operation phase) as Argo CD reports."""
        st = self.app(name).get("status") or {}
        return (
            (st.get("sync") or {}).get("status", ""),
            (st.get("sync") or {}).get("revision", ""),
            (st.get("health") or {}).get("status", ""),
            (st.get("operationState") or {}).get("phase", ""),
        )

    def resource(self, app: str, kind: str, name: str) -> dict[str, Any]:
        """Argo CD's record of one resource of an Application (sync status and health)."""
        for r in (self.app(app).get("status") or {}).get("resources") or []:
            if r.get("kind") == kind and r.get("name") == name:
                return dict(r)
        return {}

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = SYNC_TIMEOUT) -> Any:
        try:
            return self.cluster.wait_until(predicate, timeout=timeout, interval=1, message=what)
        except AssertionError as err:
            apps = {n: self.summary(n) for n in (PARENT, OPERATOR_APP, STACKS_APP)}
            ops = {n: (self.app(n).get("status") or {}).get("operationState") for n in apps}
            tail = self.argo.log("application-controller")[-3000:]
            raise AssertionError(f"{err}\napps: {apps}\noperations: {ops}\n{tail}") from None

    def refusals(self, app: str, revision: str) -> list[str]:
        """The messages of the AIStacks whose apply failed in the Application's operation
        at ``revision`` (none while the operation is of another revision)."""
        op = (self.app(app).get("status") or {}).get("operationState") or {}
        result = op.get("syncResult") or {}
        if result.get("revision") != revision:
            return []
        return [
            one_line(r.get("message", ""))
            for r in result.get("resources") or []
            if r["kind"] == "AIStack" and r.get("status") == "SyncFailed"
        ]

    def synced_healthy(self, name: str, revision: str) -> bool:
        sync, rev, health, phase = self.summary(name)
        return (sync, rev, health, phase) == ("Synced", revision, "Healthy", "Succeeded")

    def chat(self) -> dict[str, Any]:
        return yaml.safe_load((self.repo.path / "examples/argocd/stacks/chat.yaml").read_text())

    def write_chat(self, doc: dict[str, Any]) -> None:
        self.repo.write({"examples/argocd/stacks/chat.yaml": yaml.safe_dump(doc, sort_keys=False)})

    def policy(self) -> dict[str, Any]:
        path = self.repo.path / "examples/argocd/stacks/license-policy.yaml"
        return yaml.safe_load(path.read_text())

    def write_policy(self, doc: dict[str, Any]) -> None:
        self.repo.write(
            {"examples/argocd/stacks/license-policy.yaml": yaml.safe_dump(doc, sort_keys=False)}
        )


def _as_committed(repo_url: str) -> dict[str, str]:
    """The files Argo CD reads: the chart and examples/argocd, with the Applications aimed
    at the local git server, and the operator's chart without its webhook (see above)."""
    files = {
        str(p.relative_to(REPO_ROOT)): p.read_text()
        for base in (REPO_ROOT / "charts" / "aistack-operator", EXAMPLES)
        for p in sorted(base.rglob("*"))
        if p.is_file()
    }
    for name in ("aistack-apps.yaml", "aistack-operator.yaml", "aistack-stacks.yaml"):
        key = f"examples/argocd/{name}"
        app = yaml.safe_load(files[key])
        app["spec"]["source"]["repoURL"] = repo_url
        if name == "aistack-operator.yaml":
            values = app["spec"]["source"]["helm"].setdefault("valuesObject", {})
            values["webhook"] = {"enabled": False}
        files[key] = yaml.safe_dump(app, sort_keys=False)
    return files


@pytest.fixture(scope="module")
def gitops(
    cluster: Any, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    work = tmp_path_factory.mktemp("gitops")
    settings = yaml.safe_load((EXAMPLES / "argocd-cm.yaml").read_text())["data"]
    repo = GitRepo(work / "git")
    repo.start(work / "git-daemon.log")
    # Two operators: one serves only the license webhook (it reconciles a namespace that
    # holds nothing), the other reconciles every namespace. The second can be paused to
    # catch the stack between an admitted change and its reconcile.
    reconciler = OperatorProcess(cluster.env, work / "reconciler")
    (work / "reconciler").mkdir()
    with contextlib.ExitStack() as stack:
        stack.callback(repo.stop)
        stack.enter_context(governed_operator(cluster, work, "--namespace", "no-stacks-here"))
        reconciler.start()
        stack.callback(reconciler.stop)
        argo = stack.enter_context(running(cluster, work / "argocd", settings))
        repo.write(_as_committed(repo.url))
        repo.commit("the chart and examples/argocd, as shipped")
        yield Scenario(cluster, argo, repo, reconciler)
        # The policy is cluster-scoped and would judge later tests' stacks: remove it with
        # the Applications (their finalizers prune the rest).
        cluster.kubectl("delete", "application", PARENT, "-n", NAMESPACE, "--wait=false",
                        check=False)  # fmt: skip
        cluster.kubectl("delete", "licensepolicy", "ml-team", "--ignore-not-found", check=False)


def test_sync_waves_put_the_operator_first_and_the_policy_before_the_stack(
    gitops: Scenario,
) -> None:
    head = gitops.repo.git("rev-parse", "HEAD")
    parent = yaml.safe_load((gitops.repo.path / "examples/argocd/aistack-apps.yaml").read_text())
    gitops.cluster.apply(parent)
    for name in (OPERATOR_APP, STACKS_APP, PARENT):
        gitops.wait(f"{name} Synced and Healthy at {head[:7]}",
                    lambda n=name: gitops.synced_healthy(n, head))  # fmt: skip
    operator_op = gitops.app(OPERATOR_APP)["status"]["operationState"]
    stacks_op = gitops.app(STACKS_APP)["status"]["operationState"]
    # App of apps: the stacks' Application is created (wave 1) only once the operator's
    # (wave -1) is Healthy, which Argo CD can tell only with the Application health check.
    stacks_created = gitops.app(STACKS_APP)["metadata"]["creationTimestamp"]
    assert operator_op["finishedAt"] <= stacks_created <= stacks_op["startedAt"]
    # Inside the stacks' Application: the policy (wave -1) is Healthy by its own health
    # check, that is validated by the operator, before the stack (wave 0) is applied.
    policy = gitops.cluster.get_json("licensepolicy", "ml-team")
    valid = {c["type"]: c for c in policy["status"]["conditions"]}["Valid"]
    stack = gitops.cluster.get_json("aistack", "chat", "-n", STACKS_NS)
    assert valid["status"] == "True"
    assert valid["lastTransitionTime"] <= stack["metadata"]["creationTimestamp"]
    assert gitops.resource(STACKS_APP, "LicensePolicy", "ml-team")["health"] == {
        "status": "Healthy", "message": "Valid: every listed license parses",
    }  # fmt: skip
    # Every child of the stack shows in Argo CD's tree through its ownerReferences: Argo
    # CD's resource tree is not in the Application; the children carry the owner it walks.
    children = gitops.cluster.get_json("deployments", "-n", STACKS_NS)["items"]
    assert children and all(
        any(
            o["kind"] == "AIStack" and o["name"] == "chat" for o in d["metadata"]["ownerReferences"]
        )
        for d in children
    )


def test_argo_cd_computes_the_stacks_health_progressing_then_healthy(gitops: Scenario) -> None:
    """The branch that broke inside Argo CD: right after an admitted spec change, before
    the operator has looked at it. The reconciling operator is paused to hold that moment."""
    doc = gitops.chat()
    doc["spec"]["models"][0]["replicas"] = 2
    gitops.write_chat(doc)
    gitops.reconciler.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        head = gitops.repo.commit("two replicas of phi")
        gitops.argo.refresh(STACKS_APP)
        health = gitops.wait(
            "Argo CD to show the changed stack Progressing",
            lambda: (h := gitops.resource(STACKS_APP, "AIStack", "chat").get("health", {}))
            and h.get("status") == "Progressing" and "observe generation" in h.get("message", "")
            and h,
        )  # fmt: skip
        generation = gitops.cluster.get_json("aistack", "chat", "-n", STACKS_NS)["metadata"][
            "generation"
        ]
        assert health["message"] == (
            f"Waiting for the aistack operator to observe generation {generation}"
        )
        assert gitops.summary(STACKS_APP)[2] == "Progressing"
    finally:
        gitops.reconciler.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    gitops.wait("the stack Healthy again", lambda: gitops.synced_healthy(STACKS_APP, head))
    health = gitops.resource(STACKS_APP, "AIStack", "chat")["health"]
    assert health == {"status": "Healthy", "message": "Ready: 2/2 models serve"}


def test_a_denied_model_fails_the_sync_with_the_webhooks_message_and_a_revert_recovers(
    gitops: Scenario,
) -> None:
    before = gitops.repo.git("rev-parse", "HEAD")
    doc = gitops.chat()
    doc["spec"]["models"].append(copy.deepcopy(NC_MODEL))
    gitops.write_chat(doc)
    bad = gitops.repo.commit("add a non-commercial model")
    gitops.argo.refresh(STACKS_APP)

    (message,) = gitops.wait(
        "Argo CD to show the webhook's refusal", lambda: gitops.refusals(STACKS_APP, bad)
    )
    # What docs/argocd.md shows.
    assert re.fullmatch(
        r'error when patching "[^"]+": admission webhook "license\.[^"]+" denied the request: '
        r"CohereForAI/c4ai-command-r-plus is under CC-BY-NC-4\.0, which policy ml-team denies",
        message,
    ), message
    sync, _, health, _ = gitops.summary(STACKS_APP)
    assert (sync, health) == ("OutOfSync", "Healthy")  # what runs is untouched
    # Argo CD's documented caveat of an app of apps: the parent stays Healthy meanwhile.
    assert gitops.summary(PARENT)[2] == "Healthy"

    gitops.repo.git("revert", "--no-edit", bad)
    fixed = gitops.repo.git("rev-parse", "HEAD")
    started = time.monotonic()
    gitops.argo.refresh(STACKS_APP)
    gitops.wait("the revert to sync", lambda: gitops.synced_healthy(STACKS_APP, fixed))
    print(f"revert synced {time.monotonic() - started:.0f} s after its commit (retry.refresh)")
    assert [m["name"] for m in gitops.cluster.get_json(
        "aistack", "chat", "-n", STACKS_NS)["spec"]["models"]] == [
        m["name"] for m in gitops.chat()["spec"]["models"]
    ]  # fmt: skip
    assert before != fixed


def test_a_policy_tightened_under_a_running_stack_never_fails_a_later_sync(
    gitops: Scenario,
) -> None:
    policy = gitops.policy()
    policy["spec"]["allow"] = [a for a in policy["spec"]["allow"] if a != "MIT"]
    policy["spec"]["deny"] = [*policy["spec"]["deny"], "MIT"]  # phi-3.5-mini is MIT
    gitops.write_policy(policy)
    tightened = gitops.repo.commit("deny MIT")
    gitops.argo.refresh(STACKS_APP)
    gitops.wait(
        "the stack Degraded by the tightened policy, the sync Succeeded",
        lambda: gitops.summary(STACKS_APP) == ("Synced", tightened, "Degraded", "Succeeded"),
    )
    health = gitops.resource(STACKS_APP, "AIStack", "chat")["health"]
    assert health["status"] == "Degraded"
    assert "MIT" in health["message"] and "ml-team" in health["message"]

    # A later commit re-applies the stack, with its now-denied model unchanged: admitted.
    doc = gitops.chat()
    doc["metadata"].setdefault("labels", {})["team"] = "chat"
    gitops.write_chat(doc)
    relabelled = gitops.repo.commit("label the stack")
    gitops.argo.refresh(STACKS_APP)
    gitops.wait(
        "the re-applied stack to sync",
        lambda: gitops.summary(STACKS_APP) == ("Synced", relabelled, "Degraded", "Succeeded"),
    )
    stack = gitops.cluster.get_json("aistack", "chat", "-n", STACKS_NS)
    assert stack["metadata"]["labels"]["team"] == "chat"
    phi = gitops.cluster.get_json("deployment", "chat-vllm-phi-3-5-mini", "-n", STACKS_NS)
    assert phi["spec"]["replicas"] == 0  # the operator keeps the denied model from running

    # Adding a denied model is still refused.
    doc["spec"]["models"].append(copy.deepcopy(NC_MODEL))
    gitops.write_chat(doc)
    bad = gitops.repo.commit("add a non-commercial model under the tight policy")
    gitops.argo.refresh(STACKS_APP)

    message = " ".join(
        gitops.wait("the new denied model refused", lambda: gitops.refusals(STACKS_APP, bad))
    )
    assert "CohereForAI/c4ai-command-r-plus is under CC-BY-NC-4.0" in message
    assert "phi" not in message.lower()  # the unchanged model is not refused again
    gitops.repo.git("revert", "--no-edit", bad)
    gitops.repo.git("revert", "--no-edit", tightened)
    head = gitops.repo.git("rev-parse", "HEAD")
    gitops.argo.refresh(STACKS_APP)
    gitops.wait("the stack Healthy again", lambda: gitops.synced_healthy(STACKS_APP, head))


def test_a_policy_that_does_not_parse_degrades_its_application_and_holds_the_stacks_back(
    gitops: Scenario,
) -> None:
    policy = gitops.policy()
    policy["spec"]["deny"] = ["CC-BY-NC-4.0 OR"]
    gitops.write_policy(policy)
    doc = gitops.chat()
    doc["metadata"].setdefault("labels", {})["tier"] = "gold"
    gitops.write_chat(doc)
    broken = gitops.repo.commit("a policy that does not parse, and a stack change")
    gitops.argo.refresh(STACKS_APP)

    def degraded() -> dict[str, Any] | None:
        if gitops.summary(STACKS_APP)[2] != "Degraded":
            return None
        r = gitops.resource(STACKS_APP, "LicensePolicy", "ml-team")
        if (r.get("health") or {}).get("status") != "Degraded":
            return None
        return r

    r = gitops.wait("the policy's Application Degraded", degraded)
    assert r["health"]["message"].startswith("PolicyInvalid: this operator cannot read the policy")
    # The policy is wave -1 and Degraded: Argo CD does not go on to wave 0, so the stack's
    # change in the same commit is held back, and the operation says why.
    gitops.wait(
        "the sync to fail on the Degraded wave",
        lambda: gitops.summary(STACKS_APP)[3] in ("Failed", "Running")
        and (gitops.app(STACKS_APP)["status"]["operationState"].get("syncResult") or {}).get(
            "revision"
        ) == broken,
    )  # fmt: skip
    stack = gitops.cluster.get_json("aistack", "chat", "-n", STACKS_NS)
    assert "tier" not in (stack["metadata"].get("labels") or {})
    gitops.repo.git("revert", "--no-edit", broken)
    head = gitops.repo.git("rev-parse", "HEAD")
    gitops.argo.refresh(STACKS_APP)
    gitops.wait("the policy Healthy again", lambda: gitops.synced_healthy(STACKS_APP, head))


def test_nothing_is_left_out_of_sync(gitops: Scenario) -> None:
    head = gitops.repo.git("rev-parse", "HEAD")
    for name in (OPERATOR_APP, STACKS_APP, PARENT):
        gitops.wait(f"{name} in sync", lambda n=name: gitops.synced_healthy(n, head))
        out_of_sync = [
            (r["kind"], r["name"])
            for r in gitops.app(name)["status"].get("resources") or []
            if r.get("status") != "Synced"
        ]
        assert out_of_sync == [], name
