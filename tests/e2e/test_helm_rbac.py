"""The Helm chart's RBAC, proven: the chart is installed with `helm install`, then the real
operator runs authenticated as the chart's ServiceAccount through a whole scenario (create,
update, policy change, drift, delete) and the API server refuses none of its requests.

The chart's own operator pods are only simulated on the local cluster (kwok runs no
container), so the operator runs on the host with a token of the chart's ServiceAccount
and the peering flags the chart gives it, at a priority above the chart's pods (where they
do run, they pause in its favour). The license webhook is off but in one test: the local
API server runs on the host and cannot reach a Service; that test calls the webhook
directly, as the API server would.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_process import REPO_ROOT, OperatorProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stacks import (
    conditions,
    default_policy,
    deployments,
    load,
    routes,
    wait_exists,
    wait_phase,
)

from argocd_lua import health

CHART = REPO_ROOT / "charts" / "aistack-operator"
MISTRAL = {"name": "mistral", "source": "mistralai/Mistral-7B-Instruct-v0.3"}  # Apache-2.0
GPT = {"name": "gpt", "provider": "openai", "model": "gpt-4o-mini",
       "credentialsSecretRef": {"name": "llm-keys", "key": "openai"}}  # fmt: skip
#: How a refusal shows in the operator's log: the API server's message ("... is forbidden:
#: User ... cannot ..."), kopf's APIForbiddenError, kopf's fallback warnings.
ARGOCD_STACKS = REPO_ROOT / "examples" / "argocd" / "stacks"
REFUSED = re.compile(r"forbidden|unauthorized|not enough permissions", re.IGNORECASE)


def helm_binary() -> str:
    bin_dir = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-tools.sh"), "--print-bin-dir"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    helm = Path(bin_dir) / "helm"
    assert helm.exists(), "helm is not built: run hack/build-tools.sh"
    return str(helm)


def refusals(cluster: Any) -> dict[str, float]:
    """The API server's counts of requests it did not authenticate or authorize.

    (apiserver_request_total does not see requests the authorization filter refuses; these
    counters do, for every client: the test window holds only the operator's and the
    admin's requests, and the admin is never refused.)
    """
    out: dict[str, float] = {}
    for line in cluster.kubectl("get", "--raw", "/metrics", timeout=30).stdout.splitlines():
        if re.match(r'authorization_attempts_total\{result="(?!allowed")', line) or re.match(
            r'authentication_attempts\{result="(?!success")', line
        ):
            labels, value = line.rsplit(" ", 1)
            out[labels] = float(value)
    return out


def new_refusals(before: dict[str, float], after: dict[str, float]) -> list[str]:
    return [k for k, v in after.items() if v > before.get(k, 0)]


def sa_kubeconfig(cluster: Any, namespace: str, sa: str, path: Path) -> str:
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout
    admin = json.loads(
        cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    )
    path.write_text(
        json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
            "users": [{"name": sa, "user": {"token": token.strip()}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": sa}}],
            "current-context": "c",
        })
    )  # fmt: skip
    path.chmod(0o600)
    return str(path)


@dataclass
class Release:
    name: str  # also the full name: ServiceAccount, ClusterRole, peering object
    namespace: str
    kubeconfig: str  # a token of the release's ServiceAccount

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


@pytest.fixture
def install(cluster: Any, tmp_path: Path) -> Iterator[Any]:
    """`helm install` the chart (webhook off) into a fresh namespace; uninstalled after."""
    helm = helm_binary()
    made: list[Release] = []

    def _install(**values: Any) -> Release:
        name = f"aistack-operator-{uuid.uuid4().hex[:6]}"
        namespace = f"{name}-system"
        values = {"webhook": {"enabled": False}, **values}
        # The restricted Pod Security Standard, enforced: --wait fails unless the
        # operator's pods are admitted. (Only where pods are simulated: elsewhere they would
        # need the operator image, which these tests neither build nor load.)
        cluster.kubectl("create", "namespace", namespace)
        cluster.kubectl("label", "namespace", namespace,
                        "pod-security.kubernetes.io/enforce=restricted")  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(
            [helm, "install", name, str(CHART), "--namespace", namespace, "-f", "-",
             *(["--wait", "--timeout", "120s"] if cluster.simulated_nodes else [])],
            input=json.dumps(values), capture_output=True, text=True, env=cluster.env,
            timeout=180,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        print(f"helm install {name}: {time.monotonic() - started:.1f}s")
        release = Release(name, namespace, "")
        made.append(release)
        release.kubeconfig = sa_kubeconfig(cluster, namespace, name, tmp_path / f"{name}.kcfg")
        return release

    yield _install
    for release in made:
        subprocess.run(
            [helm, "uninstall", release.name, "--namespace", release.namespace, "--wait"],
            capture_output=True, text=True, env=cluster.env, timeout=120, check=False,
        )  # fmt: skip
        cluster.kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)


def operator_as(cluster: Any, release: Release, log_dir: Path, *args: str) -> OperatorProcess:
    """The operator as the chart runs it (peering), as the release's ServiceAccount."""
    env = {**cluster.env, "KUBECONFIG": release.kubeconfig, "POD_ID": f"{release.name}-0"}
    op = OperatorProcess(
        env,
        log_dir,
        ["--kubeconfig", release.kubeconfig, f"--peering={release.name}", "--priority=1", *args],
    )
    who = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=release.kubeconfig)
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == release.user
    return op


def argocd_health(stack: dict[str, Any]) -> str:
    """What Argo CD's health check says of a real stack, in Argo CD's Lua sandbox."""
    return health(stack)["status"]


def scenario(cluster: Any, namespace: str, policy: Any) -> None:
    """Create, update, policy change, drift, delete: every API call the operator makes."""
    doc = load("quickstart.yaml")
    cluster.apply(doc, namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")

    # Update: a second model, then the first removed (prune: DELETE of its objects).
    doc["spec"]["models"].append(dict(MISTRAL))
    cluster.apply(doc, namespace=namespace)
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    assert stack["status"]["modelsReady"] == "2/2"
    assert argocd_health(stack) == "Healthy"
    assert routes(cluster, namespace, "quickstart") == ["phi-3-5-mini", "mistral"]

    # Policy change: mistral (Apache-2.0) denied, then the policy goes and it comes back.
    name = f"e2e-rbac-{uuid.uuid4().hex[:6]}"
    policy(name, allow=["MIT"])
    stack = wait_phase(cluster, namespace, "quickstart", "Degraded")
    assert conditions(stack)["LicenseCompliant"]["status"] == "False"
    assert argocd_health(stack) == "Degraded"
    assert deployments(cluster, namespace)["quickstart-vllm-mistral"]["spec"]["replicas"] == 0
    cluster.wait_until(
        lambda: cluster.get_json("licensepolicy", name).get("status", {}).get("conditions"),
        timeout=30, message="the LicensePolicy's status",
    )  # fmt: skip
    cluster.kubectl("delete", "licensepolicy", name)
    wait_phase(cluster, namespace, "quickstart", "Ready")

    # A hosted provider: each reconcile gets its key's Secret (the metadata only) to check
    # the opt-in label. Then the route goes again.
    name = f"e2e-rbac-providers-{uuid.uuid4().hex[:6]}"
    policy(name, **default_policy(providers={"allow": ["openai"]}))
    cluster.kubectl("create", "secret", "generic", "gateway-key", "-n", namespace,
                    "--from-literal=key=sk-not-for-the-operator")  # fmt: skip
    cluster.kubectl("create", "secret", "generic", "llm-keys", "-n", namespace,
                    "--from-literal=openai=sk-not-for-the-operator")  # fmt: skip
    cluster.kubectl("label", "secret", "llm-keys", "-n", namespace,
                    "aistack.dev/provider-credentials=true")  # fmt: skip
    doc["spec"]["gateway"] = {"authSecretRef": {"name": "gateway-key", "key": "key"},
                              "providers": [dict(GPT)]}  # fmt: skip
    cluster.apply(doc, namespace=namespace)
    stack = wait_phase(cluster, namespace, "quickstart", "Ready")
    gpt = {r["name"]: r for r in stack["status"]["gateway"]["routes"]}["gpt"]
    assert (gpt["kind"], gpt["permitted"]) == ("Provider", True)
    assert routes(cluster, namespace, "quickstart") == ["phi-3-5-mini", "mistral", "gpt"]
    del doc["spec"]["gateway"]
    cluster.apply(doc, namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")
    assert routes(cluster, namespace, "quickstart") == ["phi-3-5-mini", "mistral"]
    cluster.kubectl("delete", "licensepolicy", name)

    doc["spec"]["models"] = [dict(MISTRAL)]
    cluster.apply(doc, namespace=namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")
    cluster.wait_until(
        lambda: "quickstart-vllm-phi-3-5-mini" not in deployments(cluster, namespace),
        timeout=30, message="the removed model's Deployment to go",
    )  # fmt: skip
    assert routes(cluster, namespace, "quickstart") == ["mistral"]

    # Drift: deleted children come back.
    cluster.kubectl("delete", "deployment", "quickstart-ray-head", "-n", namespace)
    cluster.kubectl("delete", "service", "quickstart-gateway", "-n", namespace)
    wait_exists(cluster, "deployment", "quickstart-ray-head", namespace)
    wait_exists(cluster, "service", "quickstart-gateway", namespace)
    wait_phase(cluster, namespace, "quickstart", "Ready")

    # Delete: the children go with the stack.
    cluster.kubectl("delete", "aistack", "quickstart", "-n", namespace, "--wait=true", timeout=60)
    cluster.wait_until(
        lambda: not cluster.get_json(
            "deployments,services,configmaps", "-n", namespace, "-l", "aistack.dev/stack"
        )["items"],
        timeout=60, message="the children to be garbage-collected",
    )  # fmt: skip


def argocd_example(cluster: Any, namespace: str) -> None:
    """examples/argocd/stacks/ in its sync-wave order: the policy, then the stack, which
    becomes Ready and Healthy to Argo CD's health check."""
    docs = [
        d for p in sorted(ARGOCD_STACKS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
    ]
    wave = "argocd.argoproj.io/sync-wave"
    for doc in sorted(docs, key=lambda d: int(d["metadata"]["annotations"][wave])):
        cluster.apply(doc, namespace=namespace if doc["kind"] == "AIStack" else None)
    stack = wait_phase(cluster, namespace, "chat", "Ready")
    assert [m["license"] for m in stack["status"]["models"]] == ["MIT", "Apache-2.0"]
    assert argocd_health(stack) == "Healthy"


def assert_nothing_refused(op: OperatorProcess, before: dict[str, float], after: Any) -> None:
    refused = new_refusals(before, after)
    assert refused == [], "the API server refused requests:\n" + "\n".join(refused)
    lines = [line for line in op.log().splitlines() if REFUSED.search(line)]
    assert lines == [], "refusals in the operator's log:\n" + "\n".join(lines[:20])


def assert_cannot_list_secrets(cluster: Any, release: Release, namespace: str) -> None:
    """The operator may get one Secret by name (it asks for the metadata only: a provider
    key's opt-in label), and never list or watch them."""
    cluster.kubectl("create", "secret", "generic", "hf-token", "-n", namespace,
                    "--from-literal=token=not-for-the-operator")  # fmt: skip
    for verb, expected in (("get", "yes"), ("list", "no"), ("watch", "no")):
        can = cluster.kubectl(
            "auth", "can-i", verb, "secrets", "-n", namespace, f"--as={release.user}",
            check=False,
        )  # fmt: skip
        assert can.stdout.strip() == expected, (verb, can.stdout, can.stderr)
    before = refusals(cluster)
    got = cluster.kubectl(
        "get", "secrets", "-n", namespace, kubeconfig=release.kubeconfig, check=False
    )
    assert got.returncode != 0
    assert "Forbidden" in got.stderr and 'cannot list resource "secrets"' in got.stderr
    # ... and the refusal counter sees it: an empty diff above means something.
    assert new_refusals(before, refusals(cluster))


def test_the_operator_runs_the_whole_scenario_as_the_charts_service_account(
    cluster: Any, crds: None, namespace: str, install: Any, policy: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    release = install()
    op = operator_as(cluster, release, tmp_path)
    before = refusals(cluster)
    op.start()
    try:
        scenario(cluster, namespace, policy)
        argocd_example(cluster, namespace)
        after = refusals(cluster)
    finally:
        op.stop()
        cluster.kubectl("delete", "-f", str(ARGOCD_STACKS), "--ignore-not-found", check=False)
    assert_nothing_refused(op, before, after)
    assert f"Keep-alive in '{release.name}' cluster-wide: ok" in op.log()
    assert_cannot_list_secrets(cluster, release, namespace)
    for verb, resource in (("update", "deployments"), ("get", "deployments"), ("create", "pods")):
        can = cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, f"--as={release.user}", check=False
        )
        assert can.stdout.strip() == "no", (verb, resource)
    print(f"cluster-wide RBAC scenario: {time.monotonic() - started:.1f}s")


def test_a_namespaced_release_works_in_its_namespaces_and_nowhere_else(
    cluster: Any, crds: None, namespace: str, install: Any, policy: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    release = install(watchNamespaces=[namespace])
    assert cluster.get_json("kopfpeering", release.name, "-n", namespace)
    op = operator_as(cluster, release, tmp_path, "--namespace", namespace)
    before = refusals(cluster)
    op.start()
    try:
        scenario(cluster, namespace, policy)
        after = refusals(cluster)
    finally:
        op.stop()
    assert_nothing_refused(op, before, after)
    assert f"Keep-alive in '{release.name}' in '{namespace}': ok" in op.log()
    assert_cannot_list_secrets(cluster, release, namespace)
    for verb, resource in (("list", "aistacks"), ("create", "deployments"), ("list", "pods")):
        for ns in (release.namespace, "default"):
            can = cluster.kubectl(
                "auth", "can-i", verb, resource, "-n", ns, f"--as={release.user}", check=False
            )
            assert can.stdout.strip() == "no", (verb, resource, ns)
    print(f"namespaced RBAC scenario: {time.monotonic() - started:.1f}s")


def test_uninstall_keeps_the_crds_and_the_stacks(
    cluster: Any, crds: None, namespace: str, install: Any
) -> None:
    release = install(replicaCount=2)
    if cluster.simulated_nodes:
        pods = cluster.get_json("pods", "-n", release.namespace)["items"]
        indexes = sorted(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"] for p in pods)
        assert indexes == ["0", "1"]
    cluster.apply(load("quickstart.yaml"), namespace=namespace)
    subprocess.run(
        [helm_binary(), "uninstall", release.name, "--namespace", release.namespace, "--wait"],
        capture_output=True, text=True, env=cluster.env, timeout=120, check=True,
    )  # fmt: skip
    for kind, name in (("clusterrole", release.name), ("clusterkopfpeering", release.name)):
        gone = cluster.kubectl("get", kind, name, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, (kind, gone.stderr)
    for crd in ("aistacks.aistack.dev", "licensepolicies.aistack.dev"):
        cluster.kubectl("get", "crd", crd)
    cluster.kubectl("get", "aistack", "quickstart", "-n", namespace)


def test_server_side_apply_that_creates_needs_create(
    cluster: Any, namespace: str, tmp_path: Path
) -> None:
    """Why the chart grants `create` beside `patch`: SSA of a new object is a create."""
    sa = "ssa-probe"
    cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    cluster.kubectl("create", "role", "patch-only", "--verb=patch", "--resource=configmaps",
                    "-n", namespace)  # fmt: skip
    cluster.kubectl("create", "rolebinding", "patch-only", "--role=patch-only",
                    f"--serviceaccount={namespace}:{sa}", "-n", namespace)  # fmt: skip
    kubeconfig = sa_kubeconfig(cluster, namespace, sa, tmp_path / "ssa.kcfg")
    cm = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "probe", "namespace": namespace}})  # fmt: skip

    def ssa() -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(  # type: ignore[no-any-return]
            "apply", "--server-side", "--field-manager=probe", "-f", "-",
            input=cm, kubeconfig=kubeconfig, check=False,
        )  # fmt: skip

    refused = ssa()
    assert refused.returncode != 0 and 'cannot create resource "configmaps"' in refused.stderr
    cluster.kubectl("create", "role", "create-too", "--verb=create", "--resource=configmaps",
                    "-n", namespace)  # fmt: skip
    cluster.kubectl("create", "rolebinding", "create-too", "--role=create-too",
                    f"--serviceaccount={namespace}:{sa}", "-n", namespace)  # fmt: skip
    cluster.wait_until(lambda: ssa().returncode == 0, timeout=30, message="SSA to be allowed")


def admission_review(port: int, ca: Path, host: str, namespace: str, source: str) -> dict[str, Any]:
    """POST an AdmissionReview for a stack to https://127.0.0.1:PORT/license, verifying the
    server's certificate for HOST (the Service's DNS name) against CA, as the API server
    would."""
    stack = load("quickstart.yaml")
    stack["metadata"]["namespace"] = namespace
    stack["spec"]["models"][0]["source"] = source
    review = {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()), "operation": "CREATE", "dryRun": False,
            "kind": {"group": "aistack.dev", "version": "v1alpha1", "kind": "AIStack"},
            "resource": {"group": "aistack.dev", "version": "v1alpha1", "resource": "aistacks"},
            "namespace": namespace, "name": "quickstart", "object": stack,
            "userInfo": {"username": "e2e"},
        },
    }  # fmt: skip
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        conn = http.client.HTTPConnection(host, timeout=10)
        conn.sock = context.wrap_socket(raw, server_hostname=host)
        conn.request(
            "POST", "/license", body=json.dumps(review),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        answer = conn.getresponse()
        assert answer.status == 200, answer.read()
        return json.loads(answer.read())["response"]  # type: ignore[no-any-return]


def test_the_webhook_objects_install_and_fail_closed(
    cluster: Any, crds: None, namespace: str, install: Any, policy: Any, tmp_path: Path
) -> None:
    """The chart's webhook as the API server sees it. Its Service cannot be reached from
    the host-run API server, which is what failurePolicy Fail shows: the stack is refused.
    The webhook only judges the release's namespace, so no other test is affected. Then
    the operator serves the webhook on the host with the chart's certificate, and answers
    a client that verifies it as the API server would: as a standby replica (another
    operator of the release is active), by the LicensePolicies of the moment."""
    release = install(watchNamespaces=[namespace], webhook={"enabled": True}, replicaCount=2)
    name = release.name
    hook = cluster.get_json("validatingwebhookconfiguration", name)["webhooks"][0]
    secret = cluster.get_json("secret", f"{name}-webhook-tls", "-n", release.namespace)
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert hook["clientConfig"]["service"]["name"] == f"{name}-webhook"
    endpoints = cluster.get_json(
        "endpointslices",
        "-n",
        release.namespace,
        "-l",
        f"kubernetes.io/service-name={name}-webhook",
    )["items"]
    if cluster.simulated_nodes:
        assert [len(e.get("endpoints") or []) for e in endpoints] == [2], "every replica"
    refused = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(load("quickstart.yaml")), check=False
    )
    assert refused.returncode != 0
    assert 'failed calling webhook "license.aistack.dev"' in refused.stderr, refused.stderr

    files = {}
    for key in ("ca.crt", "tls.crt", "tls.key"):
        files[key] = tmp_path / key
        files[key].write_bytes(base64.b64decode(secret["data"][key]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    op = operator_as(
        cluster, release, tmp_path, "--namespace", namespace,
        f"--webhook-port={port}", "--webhook-addr=127.0.0.1",
        f"--webhook-cert={files['tls.crt']}", f"--webhook-key={files['tls.key']}",
    )  # fmt: skip
    host = f"{name}-webhook.{release.namespace}.svc"
    active = OperatorProcess(
        {**cluster.env, "KUBECONFIG": release.kubeconfig, "POD_ID": f"{name}-active"},
        tmp_path / "active",
        ["--kubeconfig", release.kubeconfig, f"--peering={name}", "--priority=100",
         "--namespace", namespace],
    )  # fmt: skip
    (tmp_path / "active").mkdir()
    active.start()
    op.start()
    try:
        cluster.wait_until(
            lambda: "Pausing the watch-stream for licensepolicies" in op.log(),
            timeout=30,
            message="the webhook's operator to hold its watches (the standby)",
        )

        def first_answer() -> dict[str, Any] | None:
            try:
                return admission_review(
                    port, files["ca.crt"], host, namespace, "CohereForAI/c4ai-command-r-plus"
                )
            except OSError:  # not listening yet
                return None

        denied = cluster.wait_until(first_answer, timeout=30, message="the webhook to answer")
        allowed = admission_review(
            port, files["ca.crt"], host, namespace, "microsoft/Phi-3.5-mini-instruct"
        )
        # A policy that appears while this replica is paused (it watches nothing) counts.
        policy(f"{name}-no-mit", deny=["MIT"])
        denied_now = admission_review(
            port, files["ca.crt"], host, namespace, "microsoft/Phi-3.5-mini-instruct"
        )
        standby_log = op.log()
    finally:
        op.stop()
        active.stop()
    # It stayed paused the whole time: it never watched, never listed into its caches.
    assert "Resuming operations" not in standby_log
    assert "Resuming operations" in active.log()
    assert denied["allowed"] is False
    assert "CC-BY-NC-4.0" in denied["status"]["message"], denied
    assert allowed["allowed"] is True, allowed
    assert denied_now["allowed"] is False, denied_now
    assert "MIT" in denied_now["status"]["message"], denied_now
    lines = [line for line in op.log().splitlines() if REFUSED.search(line)]
    assert lines == [], lines


@pytest.mark.parametrize("on", [True, False], ids=["stack-monitoring", "no-stack-monitoring"])
def test_the_charts_rbac_covers_the_stacks_monitors_exactly_when_on(
    cluster: Any, crds: None, namespace: str, install: Any, tmp_path: Path, on: bool
) -> None:
    """With the Prometheus Operator's CRDs installed, the chart's service account writes,
    watches and prunes the stacks' PodMonitors without a refusal; with
    stackMonitoring.enabled false it has no such rights, and the operator (run with the
    flag the chart then passes) writes none and says so."""
    from test_monitoring import install_crds, podmonitors, remove_crds

    # Earlier modules' namespaces gone first: the operator serves every namespace, and
    # its writes for a stack left in a terminating one are refused (not for RBAC).
    cluster.wait_until(
        lambda: not [n for n in cluster.get_json("namespaces")["items"]
                     if n["status"].get("phase") == "Terminating"],
        timeout=180, message="terminating namespaces to go",
    )  # fmt: skip
    release = install(stackMonitoring={"enabled": on})
    install_crds(cluster)
    # (kubectl resolves the resource first: asked before the CRD exists, it says no.)
    can = cluster.kubectl(
        "auth", "can-i", "create", "podmonitors.monitoring.coreos.com", "-n", namespace,
        f"--as={release.user}", check=False,
    )  # fmt: skip
    assert can.stdout.strip() == ("yes" if on else "no")
    op = operator_as(cluster, release, tmp_path, *([] if on else ["--no-stack-monitoring"]))
    before = refusals(cluster)
    op.start()
    try:
        cluster.apply(load("quickstart.yaml"), namespace=namespace)
        stack = wait_phase(cluster, namespace, "quickstart", "Ready")
        if on:
            cluster.wait_until(
                lambda: len(podmonitors(cluster, namespace)) == 3,
                timeout=60, message="the stack's PodMonitors",
            )  # fmt: skip
            cluster.kubectl("delete", "podmonitor", "quickstart-ray", "-n", namespace)
            cluster.wait_until(
                lambda: "quickstart-ray" in podmonitors(cluster, namespace),
                timeout=60, message="the deleted PodMonitor to come back",
            )  # fmt: skip
        else:
            monitoring = conditions(stack)["Monitoring"]
            assert monitoring["reason"] == "TurnedOff", monitoring
            assert podmonitors(cluster, namespace) == {}
        cluster.kubectl("delete", "aistack", "quickstart", "-n", namespace, "--wait=true",
                        timeout=60)  # fmt: skip
        cluster.wait_until(
            lambda: not podmonitors(cluster, namespace),
            timeout=60, message="the PodMonitors to go with the stack",
        )  # fmt: skip
        after = refusals(cluster)
    finally:
        op.stop()
        remove_crds(cluster)
    assert_nothing_refused(op, before, after)


@pytest.mark.parametrize("on", [True, False], ids=["autoscaling", "no-autoscaling"])
def test_the_charts_rbac_covers_the_scaledobjects_exactly_when_on(
    cluster: Any, crds: None, namespace: str, install: Any, tmp_path: Path, on: bool
) -> None:
    """With KEDA's and the Prometheus Operator's CRDs installed, the chart's service account
    writes, watches and prunes the autoscaled models' ScaledObjects without a refusal, and
    leaves the replicas KEDA would choose alone; with autoscaling.enabled false it has no
    such rights, and the operator (run with the flag the chart then passes) writes none and
    says so. The example stack is the one docs/autoscaling.md shows."""
    import gzip

    from test_monitoring import install_crds, remove_crds

    cluster.wait_until(
        lambda: not [n for n in cluster.get_json("namespaces")["items"]
                     if n["status"].get("phase") == "Terminating"],
        timeout=180, message="terminating namespaces to go",
    )  # fmt: skip
    release = install(autoscaling={"enabled": on})
    keda = gzip.decompress((REPO_ROOT / "tests/schemas/keda.sh_scaledobjects.yaml.gz").read_bytes())
    cluster.kubectl("apply", "--server-side", "-f", "-", input=keda.decode())
    cluster.wait_established("scaledobjects.keda.sh")
    install_crds(cluster)
    can = cluster.kubectl(
        "auth", "can-i", "create", "scaledobjects.keda.sh", "-n", namespace,
        f"--as={release.user}", check=False,
    )  # fmt: skip
    assert can.stdout.strip() == ("yes" if on else "no")
    op = operator_as(cluster, release, tmp_path, *([] if on else ["--no-keda"]))

    def scaledobjects() -> set[str]:
        items = cluster.get_json("scaledobjects", "-n", namespace)["items"]
        return {s["metadata"]["name"] for s in items}

    before = refusals(cluster)
    op.start()
    try:
        cluster.apply(load("autoscaling.yaml"), namespace=namespace)
        stack = wait_phase(cluster, namespace, "elastic", "Ready")
        if on:
            assert conditions(stack)["Autoscaling"]["reason"] == "Scaling"
            assert scaledobjects() == {"elastic-vllm-chat", "elastic-vllm-coder"}
            # What KEDA would do: the operator does not take it back.
            cluster.kubectl("scale", "deployment/elastic-vllm-chat", "--replicas=3",
                            "-n", namespace)  # fmt: skip
            cluster.kubectl("delete", "scaledobject", "elastic-vllm-coder", "-n", namespace)
            cluster.wait_until(
                lambda: "elastic-vllm-coder" in scaledobjects(),
                timeout=60, message="the deleted ScaledObject to come back",
            )  # fmt: skip
            chat = cluster.get_json("deployment", "elastic-vllm-chat", "-n", namespace)
            assert chat["spec"]["replicas"] == 3
        else:
            autoscaling = conditions(stack)["Autoscaling"]
            assert autoscaling["reason"] == "TurnedOff", autoscaling
            assert scaledobjects() == set()
            chat = cluster.get_json("deployment", "elastic-vllm-chat", "-n", namespace)
            assert chat["spec"]["replicas"] == 2  # the spec's, fixed
        cluster.kubectl("delete", "aistack", "elastic", "-n", namespace, "--wait=true",
                        timeout=60)  # fmt: skip
        cluster.wait_until(
            lambda: not scaledobjects(), timeout=60, message="the ScaledObjects to go"
        )
        after = refusals(cluster)
    finally:
        op.stop()
        remove_crds(cluster)
        cluster.kubectl("delete", "crd", "scaledobjects.keda.sh", "--ignore-not-found",
                        check=False)  # fmt: skip
    assert_nothing_refused(op, before, after)
