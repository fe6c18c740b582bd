"""The Helm chart: lint, schema-valid renders of every variant, golden files, least privilege.

Needs the `helm` that `hack/build-tools.sh` builds (or AISTACK_HELM). Without it these
tests skip, unless AISTACK_REQUIRE_HELM=1 (set by `make chart`, which builds helm first).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from aistack.api.v1alpha1 import LicensePolicy
from aistack.licenses import default_policy
from helpers import K8S_VERSION

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "aistack-operator"
GOLDEN = ROOT / "tests" / "golden" / "chart"
RELEASE, NAMESPACE = "aistack-operator", "aistack-system"

#: name -> values: the chart's ci/<name>-values.yaml (Helm's convention for the values
#: a chart is tested with), which the manifest lint renders too.
VARIANTS: dict[str, dict[str, Any]] = {
    p.name.removesuffix("-values.yaml"): yaml.safe_load(p.read_text()) or {}
    for p in sorted((ROOT / "charts" / "aistack-operator" / "ci").glob("*-values.yaml"))
}

#: Every (apiGroup, resource, verb) the operator may be granted, and nothing else. Adding
#: to it needs a reason in templates/_helpers.tpl and a run of tests/e2e/test_helm_rbac.py.
ALLOWED: set[tuple[str, str, str]] = {
    *{("aistack.dev", "aistacks", v) for v in ("list", "watch")},
    ("aistack.dev", "aistacks/status", "patch"),
    ("aistack.dev", "aistacks/finalizers", "update"),
    *{("aistack.dev", "licensepolicies", v) for v in ("list", "watch")},
    ("aistack.dev", "licensepolicies/status", "patch"),
    *{
        (g, r, v)
        for g, r in (
            ("apps", "deployments"),
            ("", "services"),
            ("", "configmaps"),
            ("", "persistentvolumeclaims"),
            ("networking.k8s.io", "networkpolicies"),
            ("policy", "poddisruptionbudgets"),
            ("monitoring.coreos.com", "podmonitors"),  # the stacks' monitors, when on
            ("leaderworkerset.x-k8s.io", "leaderworkersets"),  # multi-node models, when on
            ("keda.sh", "scaledobjects"),  # autoscaled models, when on
        )
        for v in ("list", "watch", "create", "patch", "delete")
    },
    *{("", "pods", v) for v in ("list", "watch")},
    ("", "events", "create"),
    # A provider key's Secret: its metadata only (the opt-in label); never list or watch.
    ("", "secrets", "get"),
    *{("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")},
    *{("", "namespaces", v) for v in ("list", "watch")},  # namespaced mode only
    *{
        ("kopf.dev", r, v)
        for r in ("clusterkopfpeerings", "kopfpeerings")
        for v in ("list", "watch")
    },
    *{("kopf.dev", r, "patch") for r in ("clusterkopfpeerings", "kopfpeerings")},  # by name
}


# ---------------------------------------------------------------- helm


@cache
def helm_path() -> str | None:
    if os.environ.get("AISTACK_HELM"):
        return os.environ["AISTACK_HELM"]
    try:
        bin_dir = subprocess.run(
            [str(ROOT / "hack" / "build-tools.sh"), "--print-bin-dir"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    helm = Path(bin_dir) / "helm"
    return str(helm) if helm.exists() else None


@pytest.fixture(scope="module")
def helm() -> str:
    path = helm_path()
    if path is None:
        if os.environ.get("AISTACK_REQUIRE_HELM") == "1":
            pytest.fail("helm is not built: run hack/build-tools.sh", pytrace=False)
        pytest.skip("helm is not built (hack/build-tools.sh; `make chart` runs these tests)")
    return path


def run_helm(helm: str, *args: str, values: dict[str, Any] | None = None) -> str:
    cmd = [helm, *args]
    if values:
        cmd += ["-f", "-"]
    proc = subprocess.run(
        cmd, input=yaml.safe_dump(values or {}), capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def template(helm: str, values: dict[str, Any], *extra: str) -> list[dict[str, Any]]:
    out = run_helm(
        helm,
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
        "--kube-version", f"v{K8S_VERSION}", *extra,
        values=values,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[dict[str, Any]]]:
    return {name: template(helm, values) for name, values in VARIANTS.items()}


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {len(found)}"
    return found[0]


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def rules(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objs:
        if obj["kind"] in ("ClusterRole", "Role"):
            for rule in obj["rules"]:
                yield obj["kind"], rule


# ---------------------------------------------------------------- lint and schema


def test_helm_lint_is_clean(helm: str) -> None:
    for name, values in VARIANTS.items():
        out = run_helm(helm, "lint", "--strict", str(CHART), values=values)
        assert "0 chart(s) failed" in out, f"{name}: {out}"
        assert "[WARNING]" not in out and "[ERROR]" not in out, f"{name}: {out}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid_kubernetes(
    helm: str, rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    objs = rendered[variant]
    for obj in objs:
        group = obj["apiVersion"].rpartition("/")[0]
        if group in ("kopf.dev", "cert-manager.io", "aistack.dev", "monitoring.coreos.com"):
            continue  # custom resources: checked below (the monitoring ones further down)
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"].get("namespace", NAMESPACE) in (NAMESPACE, "team-a", "team-b", "ml")
    for obj in by_kind(objs, "Certificate") + by_kind(objs, "Issuer"):
        assert obj["apiVersion"] == "cert-manager.io/v1"
        assert obj["metadata"]["namespace"] == NAMESPACE
    for obj in by_kind(objs, "LicensePolicy"):
        LicensePolicy.model_validate(obj)  # the operator's own model: schema, CEL rules
        assert "namespace" not in obj["metadata"]  # cluster-scoped


def test_the_crds_the_chart_installs_are_valid_and_identical_to_crds(helm: str) -> None:
    chart_crds = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    top_crds = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    assert chart_crds == top_crds, "charts/aistack-operator/crds/ differs: run `make chart-crds`"
    objs = template(helm, {}, "--include-crds")
    crds = by_kind(objs, "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "aistacks.aistack.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
        "licensepolicies.aistack.dev",
    ]
    for crd in crds:
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


def test_every_object_carries_the_chart_labels(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for objs in rendered.values():
        for obj in objs:
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "aistack-operator"
            assert labels["app.kubernetes.io/instance"] == RELEASE
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert labels["app.kubernetes.io/part-of"] == "aistack"
            assert labels["app.kubernetes.io/version"] == "0.1.0"
            assert labels["helm.sh/chart"] == "aistack-operator-0.1.0"


# ---------------------------------------------------------------- golden files


def _mask(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Certificates are generated anew on every render: keep their place, not their bytes."""
    for obj in objs:
        if obj["kind"] == "Secret" and obj.get("type") == "kubernetes.io/tls":
            obj["data"] = dict.fromkeys(obj["data"], "<generated>")
        for hook in obj.get("webhooks", []):
            if "caBundle" in hook["clientConfig"]:
                hook["clientConfig"]["caBundle"] = "<generated>"
    return objs


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_renders_match_their_golden_files(
    rendered: dict[str, list[dict[str, Any]]], variant: str, update_goldens: bool
) -> None:
    text = yaml.safe_dump_all(_mask(rendered[variant]), sort_keys=False)
    golden = GOLDEN / f"{variant}.yaml"
    if update_goldens:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file for {variant}: run pytest --update-goldens"
    assert text == golden.read_text(), f"{golden.name} differs: review, then --update-goldens"


# ---------------------------------------------------------------- least privilege


def test_rbac_grants_nothing_beyond_the_allow_list(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    granted: set[tuple[str, str, str]] = set()
    for variant, objs in rendered.items():
        for kind, rule in rules(objs):
            assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{variant} {kind}: wildcard in {rule}"
            if "secrets" in rule["resources"]:  # one rule, on Secrets only, get only
                assert (rule["resources"], rule["verbs"]) == (["secrets"], ["get"]), rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        entry = (group, resource, verb)
                        assert entry in ALLOWED, f"{variant} {kind} grants {entry}"
                        granted.add(entry)
            if rule["apiGroups"] == ["kopf.dev"] and "patch" in rule["verbs"]:
                assert rule["resourceNames"] == ["aistack-operator"], rule
    assert granted == ALLOWED, f"allowed but never granted: {ALLOWED - granted}"


def test_cluster_wide_mode_binds_one_cluster_role(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["default"]
    assert by_kind(objs, "Role") == [] and by_kind(objs, "RoleBinding") == []
    binding = one(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "aistack-operator", "namespace": NAMESPACE}
    ]
    assert "--namespace" not in " ".join(container(objs)["args"])
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "aistack-operator"


def test_namespaced_mode_keeps_namespaced_grants_in_roles(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["namespaced"]
    cluster_resources = {
        r for _, rule in rules(by_kind(objs, "ClusterRole")) for r in rule["resources"]
    }
    assert cluster_resources == {
        "licensepolicies",
        "licensepolicies/status",
        "customresourcedefinitions",
        "namespaces",
    }
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(objs, "RoleBinding")) == [
        "team-a",
        "team-b",
    ]
    assert sorted(p["metadata"]["namespace"] for p in by_kind(objs, "KopfPeering")) == [
        "team-a",
        "team-b",
    ]
    assert by_kind(objs, "ClusterKopfPeering") == []
    args = container(objs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    hook = one(objs, "ValidatingWebhookConfiguration")["webhooks"][0]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    ]


# ---------------------------------------------------------------- the operator's pod


def test_the_operator_pod_is_locked_down(rendered: dict[str, list[dict[str, Any]]]) -> None:
    sts = one(rendered["default"], "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = pod["containers"][0]
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert c["image"] == "ghcr.io/aistack-dev/aistack-operator:0.1.0"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "webhook-tls"}
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_replicas_get_distinct_peering_priorities(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    sts = one(rendered["two-replicas"], "StatefulSet")
    assert sts["spec"]["replicas"] == 2
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert "--peering=aistack-operator" in c["args"]
    assert "--priority=-$(POD_INDEX)" in c["args"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env == {
        "POD_ID": "metadata.name",
        "POD_INDEX": "metadata.labels['apps.kubernetes.io/pod-index']",
    }
    # The webhook goes to every replica: each judges by the policies it reads per review.
    svc = named(rendered["two-replicas"], "Service", "aistack-operator-webhook")
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "aistack-operator",
        "app.kubernetes.io/instance": RELEASE,
    }


def test_more_than_one_replica_without_peering_is_refused(helm: str) -> None:
    with pytest.raises(AssertionError, match=r"replicaCount > 1 needs peering\.enabled"):
        template(helm, {"replicaCount": 2, "peering": {"enabled": False}})


def selects_the_operator_pods(selector: dict[str, Any], objs: list[dict[str, Any]]) -> bool:
    """The selector is the StatefulSet's own, and its pods carry those labels."""
    sts = one(objs, "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    return selector == sts["spec"]["selector"] and selector["matchLabels"].items() <= (
        pod_labels.items()
    )


def test_a_disruption_budget_exactly_when_there_is_more_than_one_replica(
    helm: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    # One replica gets none: a budget could only block node drains or allow everything.
    for variant, objs in rendered.items():
        replicas = one(objs, "StatefulSet")["spec"]["replicas"]
        assert len(by_kind(objs, "PodDisruptionBudget")) == (replicas > 1), variant
    assert by_kind(rendered["default"], "PodDisruptionBudget") == []
    # More than one: a drain evicts them one at a time, so one replica stays up to serve the
    # fail-closed webhook; a replica that is not ready never holds a drain up.
    for objs in (rendered["two-replicas"], template(helm, {"replicaCount": 3})):
        pdb = one(objs, "PodDisruptionBudget")
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["metadata"]["namespace"] == NAMESPACE
        assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert selects_the_operator_pods(pdb["spec"]["selector"], objs)


def test_the_network_policy_is_opt_in(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant, objs in rendered.items():
        enabled = VARIANTS[variant].get("networkPolicy", {}).get("enabled", False)
        assert len(by_kind(objs, "NetworkPolicy")) == enabled, variant
    assert by_kind(rendered["default"], "NetworkPolicy") == []


def test_the_network_policy_admits_webhook_calls_from_anywhere_by_default(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["network-policy"]
    policy = one(objs, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == NAMESPACE
    spec = policy["spec"]
    assert selects_the_operator_pods(spec["podSelector"], objs)
    assert spec["policyTypes"] == ["Ingress"]  # egress untouched
    # Where the API server's calls come from depends on the cluster: a rule without `from`
    # admits any source. The health port gets no rule: only the pod's node (the kubelet).
    assert spec["ingress"] == [{"ports": [{"port": 9443, "protocol": "TCP"}]}]
    webhook_port = next(p for p in container(objs)["ports"] if p["name"] == "webhook")
    assert webhook_port["containerPort"] == 9443


def test_the_network_policy_admits_the_configured_peers(
    helm: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    values = VARIANTS["everything"]["networkPolicy"]
    objs = rendered["everything"]
    spec = one(objs, "NetworkPolicy")["spec"]
    assert selects_the_operator_pods(spec["podSelector"], objs)
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [
        {"ports": [{"port": 9443, "protocol": "TCP"}], "from": values["webhookFrom"]},
        {
            "ports": [{"port": 8080, "protocol": "TCP"}, {"port": 9100, "protocol": "TCP"}],
            "from": values["monitoringFrom"],
        },
    ]
    # The ports follow their values, and each is a port of the operator's container.
    moved = {
        "webhook": {"port": 8443},
        "healthPort": 8081,
        "networkPolicy": {"enabled": True, "monitoringFrom": values["monitoringFrom"]},
    }
    objs = template(helm, moved)
    rules = one(objs, "NetworkPolicy")["spec"]["ingress"]
    assert [[p["port"] for p in r["ports"]] for r in rules] == [[8443], [8081, 9090]]
    assert "from" not in rules[0] and rules[1]["from"] == values["monitoringFrom"]
    container_ports = {p["containerPort"] for p in container(objs)["ports"]}
    assert {p["port"] for r in rules for p in r["ports"]} <= container_ports


def test_the_network_policy_without_the_webhook(helm: str) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
    health_and_metrics = [{"port": 8080, "protocol": "TCP"}, {"port": 9090, "protocol": "TCP"}]
    for monitoring, ingress in (
        ([], []),  # nothing to serve: no ingress at all
        (peers, [{"ports": health_and_metrics, "from": peers}]),
    ):
        values = {
            "webhook": {"enabled": False},
            "networkPolicy": {"enabled": True, "monitoringFrom": monitoring},
        }
        policy = one(template(helm, values), "NetworkPolicy")
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
        assert policy["spec"]["ingress"] == ingress


def test_the_webhook_wiring(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["default"]
    hook = one(objs, "ValidatingWebhookConfiguration")["webhooks"][0]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["clientConfig"]["service"] == {
        "name": "aistack-operator-webhook",
        "namespace": NAMESPACE,
        "path": "/license",
        "port": 443,
    }
    assert hook["rules"] == [
        {
            "apiGroups": ["aistack.dev"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["aistacks"],
            "scope": "Namespaced",
        }
    ]
    svc = named(objs, "Service", "aistack-operator-webhook")
    assert svc["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    c = container(objs)
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in c["ports"]
    assert "--webhook-port=9443" in c["args"]
    assert "--webhook-cert=/etc/aistack/webhook-tls/tls.crt" in c["args"]
    secret = one(objs, "Secret")
    assert secret["metadata"]["name"] == "aistack-operator-webhook-tls"
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert "annotations" not in one(objs, "ValidatingWebhookConfiguration")["metadata"]


def test_the_self_signed_certificate_serves_the_service_name(helm: str) -> None:
    from base64 import b64decode

    from cryptography import x509

    objs = template(helm, {})
    secret = one(objs, "Secret")
    cert = x509.load_pem_x509_certificate(b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(b64decode(secret["data"]["ca.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"aistack-operator-webhook.{NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)


def test_cert_manager_replaces_the_generated_certificate(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["cert-manager"]
    assert by_kind(objs, "Secret") == []
    cert = one(objs, "Certificate")
    assert cert["spec"]["secretName"] == "aistack-operator-webhook-tls"
    assert cert["spec"]["issuerRef"] == {"kind": "Issuer", "name": "aistack-operator-selfsigned"}
    assert f"aistack-operator-webhook.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    vwc = one(objs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/aistack-operator-webhook"
    }
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]
    issued = rendered["cert-manager-issuer"]
    assert by_kind(issued, "Issuer") == []
    assert one(issued, "Certificate")["spec"]["issuerRef"] == {
        "kind": "ClusterIssuer",
        "name": "ca",
    }


def test_webhook_off_renders_no_webhook_objects(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objs = rendered["webhook-off"]
    kinds = {o["kind"] for o in objs}
    assert kinds.isdisjoint({"ValidatingWebhookConfiguration", "Secret", "Certificate"})
    # The metrics Service stays: it is not the webhook's.
    assert [s["metadata"]["name"] for s in by_kind(objs, "Service")] == ["aistack-operator-metrics"]
    c = container(objs)
    assert not [a for a in c["args"] if a.startswith("--webhook")]
    assert [v["name"] for v in c["volumeMounts"]] == ["tmp"]


def test_operator_settings_become_flags(rendered: dict[str, list[dict[str, Any]]]) -> None:
    c = container(rendered["everything"])
    for flag in (
        "--vllm-image=example.com/vllm:1",
        "--gateway-image=example.com/litellm:1",
        "--cluster-domain=example.local",
        "--hub",
        "--verbose",
        "--debug",
        "--namespace=ml",
        "--resync-interval=60",
    ):
        assert flag in c["args"], flag
    assert "--resync-interval=300" in container(rendered["default"])["args"], "the default"
    assert not [a for a in c["args"] if a.startswith(("--ray-image", "--mlflow-image"))]
    hf = next(e for e in c["env"] if e["name"] == "HF_TOKEN")
    assert hf["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}


def test_stack_monitoring_off_drops_its_rbac_and_tells_the_operator(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    def podmonitor_rules(variant: str) -> list[Any]:
        return [r for _, r in rules(rendered[variant]) if "podmonitors" in r["resources"]]

    assert podmonitor_rules("default") and podmonitor_rules("everything")
    assert "--no-stack-monitoring" not in container(rendered["default"])["args"]
    assert podmonitor_rules("no-stack-monitoring") == []
    assert "--no-stack-monitoring" in container(rendered["no-stack-monitoring"])["args"]


def test_leaderworkersets_off_drops_their_rbac_and_tells_the_operator(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    def lws_rules(variant: str) -> list[Any]:
        return [r for _, r in rules(rendered[variant]) if "leaderworkersets" in r["resources"]]

    assert lws_rules("default") and lws_rules("everything")
    assert lws_rules("default")[0]["apiGroups"] == ["leaderworkerset.x-k8s.io"]
    assert "--no-leaderworkersets" not in container(rendered["default"])["args"]
    assert lws_rules("no-leaderworkersets") == []
    assert "--no-leaderworkersets" in container(rendered["no-leaderworkersets"])["args"]


def test_autoscaling_off_drops_its_rbac_and_the_prometheus_address_reaches_the_operator(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    def keda_rules(variant: str) -> list[Any]:
        return [r for _, r in rules(rendered[variant]) if "scaledobjects" in r["resources"]]

    assert keda_rules("default") and keda_rules("everything")
    assert keda_rules("default")[0]["apiGroups"] == ["keda.sh"]
    assert "--no-keda" not in container(rendered["default"])["args"]
    assert keda_rules("no-keda") == []
    assert "--no-keda" in container(rendered["no-keda"])["args"]
    address = "--prometheus-address=http://prometheus-operated.monitoring.svc:9090"
    assert address in container(rendered["everything"])["args"]
    assert not any(
        a.startswith("--prometheus-address") for a in container(rendered["default"])["args"]
    )


def test_the_chart_ships_the_operators_default_license_policy(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    shipped = (CHART / "files" / "default-licensepolicy.yaml").read_text()
    builtin = resources.files("aistack").joinpath("data/default-licensepolicy.yaml").read_text()
    assert shipped == builtin, "files/default-licensepolicy.yaml differs from the operator's"
    policy = one(rendered["license-policy"], "LicensePolicy")
    assert policy["metadata"]["name"] == "default"
    assert policy["spec"] == yaml.safe_load(builtin)["spec"]
    assert LicensePolicy.model_validate(policy).spec == default_policy().spec
    assert policy["metadata"]["annotations"] == {"argocd.argoproj.io/sync-wave": "-1"}
    # Off by default: a policy of one's own then replaces the built-in default, where an
    # installed default would still apply beside it (the strictest policy wins).
    assert not [o for v, objs in rendered.items() if v != "license-policy"
                for o in by_kind(objs, "LicensePolicy")]  # fmt: skip


# ---------------------------------------------------------------- metrics and monitoring

MONITORING_KINDS = {"ServiceMonitor": "serviceMonitor", "PrometheusRule": "prometheusRule"}


def dashboards(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]


def test_the_metrics_port_and_flag_are_wired(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant, objs in rendered.items():
        port = VARIANTS[variant].get("metrics", {}).get("port", 9090)
        c = container(objs)
        assert f"--metrics-port={port}" in c["args"], variant
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"]
        svc = named(objs, "Service", "aistack-operator-metrics")
        assert svc["spec"]["ports"] == [
            {"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}
        ]
        # Every replica, as the webhook's Service: the standby's metrics are scraped too.
        assert selects_the_operator_pods({"matchLabels": svc["spec"]["selector"]}, objs)
        assert svc["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
    # The ports the pod serves stay distinct.
    names = [p["containerPort"] for p in container(rendered["default"])["ports"]]
    assert sorted(names) == [8080, 9090, 9443]


def test_metrics_port_zero_serves_no_metrics(helm: str) -> None:
    objs = template(helm, {"metrics": {"port": 0}})
    c = container(objs)
    assert "--metrics-port=0" in c["args"]  # the operator's default would be 9090
    assert "metrics" not in {p["name"] for p in c["ports"]}
    assert [s["metadata"]["name"] for s in by_kind(objs, "Service")] == ["aistack-operator-webhook"]
    policy = one(
        template(helm, {"metrics": {"port": 0}, "networkPolicy": {"enabled": True,
                 "monitoringFrom": [{"podSelector": {}}]}}),
        "NetworkPolicy",
    )  # fmt: skip
    assert policy["spec"]["ingress"][1]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    # Nothing to scrape, nothing to alert on: refused rather than an alert that always fires.
    for key in ("serviceMonitor", "prometheusRule"):
        with pytest.raises(AssertionError, match=f"monitoring.{key}.enabled needs metrics.port"):
            template(helm, {"metrics": {"port": 0}, "monitoring": {key: {"enabled": True}}})
    # The dashboard still shows the models' vLLM metrics.
    assert dashboards(template(helm, {"metrics": {"port": 0},
                                      "monitoring": {"dashboard": {"enabled": True}}}))  # fmt: skip


def test_the_monitoring_objects_are_opt_in(
    helm: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    for variant, objs in rendered.items():
        monitoring = VARIANTS[variant].get("monitoring", {})
        for kind, key in MONITORING_KINDS.items():
            enabled = monitoring.get(key, {}).get("enabled", False)
            assert len(by_kind(objs, kind)) == enabled, (variant, kind)
        enabled = monitoring.get("dashboard", {}).get("enabled", False)
        assert len(dashboards(objs)) == enabled, (variant, "dashboard")
    default = rendered["default"]
    assert not [o for o in default if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert by_kind(default, "ConfigMap") == []
    # Each alone renders only itself.
    for kind, key in MONITORING_KINDS.items():
        objs = template(helm, {"monitoring": {key: {"enabled": True}}})
        assert {o["kind"] for o in objs if o["kind"] in MONITORING_KINDS} == {kind}
        assert dashboards(objs) == []
    objs = template(helm, {"monitoring": {"dashboard": {"enabled": True}}})
    assert len(dashboards(objs)) == 1
    assert not [o for o in objs if o["kind"] in MONITORING_KINDS]


def test_the_service_monitor_scrapes_every_replica_on_the_metrics_port(
    helm: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objs = rendered["everything"]
    values = VARIANTS["everything"]["monitoring"]["serviceMonitor"]
    sm = one(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == NAMESPACE
    assert sm["metadata"]["labels"]["release"] == "prometheus"  # Prometheus' selector
    spec = sm["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # It selects the metrics Service and no other (not the webhook's).
    chosen = [
        svc["metadata"]["name"]
        for svc in by_kind(objs, "Service")
        if spec["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    ]
    assert chosen == ["aistack-operator-metrics"]
    svc = named(objs, "Service", "aistack-operator-metrics")
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
    assert endpoint["interval"] == values["interval"]
    assert endpoint["scrapeTimeout"] == values["scrapeTimeout"]
    # The stack's namespace on per-stack series wins over the target's (the operator's).
    assert endpoint["honorLabels"] is True
    # The job the alerts select, whatever the release is called.
    from test_alerts import JOB

    assert endpoint["relabelings"] == [
        {"action": "replace", "targetLabel": "job", "replacement": JOB}
    ]
    assert f'up{{job="{JOB}"}}' in (CHART / "files" / "alerts.yaml").read_text()
    other = one(template(helm, {"fullnameOverride": "ops", "monitoring": {
        "serviceMonitor": {"enabled": True}}}), "ServiceMonitor")  # fmt: skip
    assert other["spec"]["endpoints"][0]["relabelings"][0]["replacement"] == JOB
    assert "scrapeTimeout" not in other["spec"]["endpoints"][0]  # Prometheus' default
    assert other["spec"]["endpoints"][0]["interval"] == "30s"


def test_the_prometheus_rule_is_the_alerts_file(
    helm: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    shipped = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    # By default: the file's groups as they are (what promtool tested).
    rule = one(template(helm, {"monitoring": {"prometheusRule": {"enabled": True}}}),
               "PrometheusRule")  # fmt: skip
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["spec"] == {"groups": shipped["groups"]}
    # With values: the refusal threshold and the extra alert labels, nothing else.
    values = VARIANTS["everything"]["monitoring"]["prometheusRule"]
    rule = one(rendered["everything"], "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    want = {r["alert"]: r for g in shipped["groups"] for r in g["rules"]}
    got = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert got.keys() == want.keys()
    for name, r in got.items():
        assert r["labels"] == {**want[name]["labels"], "team": "ml-platform"}, name
        expected = dict(want[name], labels=r["labels"])
        if name == "AIStackWebhookRefusalsSpiking":
            assert want[name]["expr"].endswith("> 0.1")
            expected["expr"] = want[name]["expr"].removesuffix("> 0.1") + "> 0.5"
        assert r == expected, name
    # An alert's own severity wins over the extra labels; `--set` gives the number as text.
    rule = one(
        template(helm, {"monitoring": {"prometheusRule": {
            "enabled": True, "alertLabels": {"severity": "page"},
            "webhookRefusalsPerSecond": "2"}}}),
        "PrometheusRule",
    )  # fmt: skip
    got = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert got["AIStackOperatorDown"]["labels"] == {"severity": "critical"}
    assert got["AIStackWebhookRefusalsSpiking"]["expr"].endswith("> 2")
    assert values["webhookRefusalsPerSecond"] == 0.5


def test_the_dashboard_config_map(helm: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    [cm] = dashboards(rendered["everything"])
    assert cm["metadata"]["name"] == "aistack-operator-dashboard"
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # Grafana's sidecar label
    assert cm["metadata"]["annotations"] == {"grafana_folder": "AI"}
    [(key, text)] = cm["data"].items()
    assert key.endswith(".json")
    shipped = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert json.loads(text) == shipped
    # Another sidecar label, in Grafana's namespace.
    values = {"dashboard": {"enabled": True, "labels": {"grafana_dashboard": None,
              "dashboards": "aistack"}, "namespace": "grafana"}}  # fmt: skip
    [cm] = dashboards(template(helm, {"monitoring": values}))
    assert cm["metadata"]["namespace"] == "grafana"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["labels"]["dashboards"] == "aistack"
    assert "annotations" not in cm["metadata"]


# ---------------------------------------------------------------- values.yaml


def test_every_value_is_documented() -> None:
    """Every key has a comment right above it, or sits inside a documented map value
    (resources, securityContext), or is a plain group whose keys are documented."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    documented_at: list[int] = []  # indents of the documented ancestors
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        assert key[0].islower() and "_" not in key, f"values keys are lowerCamelCase: {key}"
        documented_at = [d for d in documented_at if d < indent]
        if lines[i - 1].strip().startswith("#"):
            documented_at.append(indent)
            continue
        is_group = i + 1 < len(lines) and re.match(rf"^\s{{{indent + 1},}}\S", lines[i + 1])
        if not documented_at and not is_group:
            undocumented.append(key)
    assert undocumented == []


def test_rendering_is_fast(helm: str) -> None:
    start = time.monotonic()
    template(helm, VARIANTS["everything"])
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"watchNamespace": ["a"]}, "additional properties 'watchNamespace' not allowed"),
        ({"webhook": {"failurePolicy": "Sometimes"}}, "value must be one of 'Fail', 'Ignore'"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"networkPolicy": {"enable": True}}, "additional properties 'enable' not allowed"),
        ({"networkPolicy": {"webhookFrom": [{}]}}, "minProperties: got 0, want 1"),
        (
            {"networkPolicy": {"monitoringFrom": [{"namespaceSelecter": {}}]}},
            "additional properties 'namespaceSelecter' not allowed",
        ),
        (
            # Kubernetes refuses an ipBlock beside a selector in the same peer.
            {
                "networkPolicy": {
                    "webhookFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]
                }
            },
            "maxProperties: got 2, want 1",
        ),
        ({"networkPolicy": {"webhookFrom": [{"ipBlock": {}}]}}, "missing property 'cidr'"),
        ({"resyncInterval": -1}, "/resyncInterval"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"metrics": {"prot": 9090}}, "additional properties 'prot' not allowed"),
        (
            {"monitoring": {"serviceMonitor": {"enable": True}}},
            "additional properties 'enable' not allowed",
        ),
        ({"monitoring": {"serviceMonitor": {"interval": "30"}}}, "/monitoring/serviceMonitor"),
        (
            {"monitoring": {"prometheusRule": {"webhookRefusalsPerSecond": "lots"}}},
            "/monitoring/prometheusRule/webhookRefusalsPerSecond",
        ),
        ({"monitoring": {"dashboard": {"labels": {"a": 1}}}}, "/monitoring/dashboard/labels"),
        (
            {
                "networkPolicy": {
                    "monitoringFrom": [
                        {
                            "podSelector": {
                                "matchExpressions": [{"key": "app", "operator": "Equals"}]
                            }
                        }
                    ]
                }
            },
            "/networkPolicy/monitoringFrom/0/podSelector/matchExpressions/0/operator",
        ),
    ],
)
def test_values_schema_catches_mistakes(helm: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        template(helm, values)


def test_the_charts_image_settings_are_written_from_the_registry() -> None:
    # values.yaml's images block, the schema's images and templates/_images.tpl are what
    # `make chart-images` writes from the components registry.
    from aistack import chartgen

    assert chartgen.stale(CHART) == [], "run `make chart-images`"


def test_the_charts_images_are_the_components_images() -> None:
    # The chart's `images.<key>` values become `--<key>-image`: its keys, in values.yaml,
    # values.schema.json and the arguments template, are the components' image keys, and
    # the model engines'.
    from aistack.components import ENGINES, IMAGED

    keys = {c.image for c in IMAGED}
    assert {e.image for e in ENGINES} <= keys
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values["images"]) == keys
    assert set(schema["properties"]["images"]["properties"]) == keys
    assert schema["properties"]["images"]["additionalProperties"] is False
    template = (CHART / "templates" / "_images.tpl").read_text()
    assert set(re.findall(r"--(\w+)-image=", template)) == keys


def test_every_image_value_becomes_its_flag_in_registry_order(helm: str) -> None:
    from aistack.components import IMAGED

    images = {c.image: f"registry.local/{c.image}:1" for c in IMAGED}
    args = container(template(helm, {"images": images}))["args"]
    flags = [a for a in args if "-image=" in a]
    assert flags == [f"--{c.image}-image=registry.local/{c.image}:1" for c in IMAGED]


# ---------------------------------------------------------------- the docs' RBAC table

VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


def test_the_install_docs_rbac_table_lists_exactly_the_grants() -> None:
    """docs/install.md's table of what the operator may do is what a user writing their
    own RBAC copies: every (resource, verb) the chart may grant is in it, and nothing else."""
    text = (ROOT / "docs" / "install.md").read_text()
    section = text.split("## What the operator may do", 1)[1].split("\n\n", 3)[2]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        resources = re.findall(r"`([a-z/]+)`", cells[0])
        verbs = set(re.findall(r"[a-z]+", cells[1])) & VERBS
        documented |= {(r, v) for r in resources if "." not in r for v in verbs}
    granted = {(r, v) for _, r, v in ALLOWED}
    assert documented == granted
