"""The renderer: golden files for every example, schema validation, and its rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from aistack import names
from aistack.components import DEFAULT_IMAGES, RenderConfig, endpoints
from aistack.render import render, render_yaml
from aistack.render.common import GPU_RESOURCE
from aistack.render.gateway import gateway_config
from helpers import (
    EXAMPLES,
    ROOT,
    all_permitted,
    by_name,
    example,
    stack,
    validate_manifest,
)

GOLDEN = ROOT / "tests" / "golden"


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_match_their_golden_files(path: Path, update_goldens: bool) -> None:
    s = example(path)
    text = render_yaml(render(s, all_permitted(s)))
    golden = GOLDEN / f"{path.stem}.yaml"
    if update_goldens:
        golden.write_text(text)
    assert golden.exists(), f"no golden file for {path.name}: run pytest --update-goldens"
    assert text == golden.read_text(), f"{golden.name} differs: review, then --update-goldens"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_rendered_object_is_valid_kubernetes(path: Path) -> None:
    s = example(path)
    for manifest in render(s, all_permitted(s)):
        # PodMonitors: the e2e suite has the API server validate them against the
        # Prometheus Operator's own CRD (tests/e2e/test_monitoring.py).
        validate_manifest(manifest)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_object_is_labelled_namespaced_and_secured(path: Path) -> None:
    s = example(path)
    stack_name = s.metadata.name
    for m in render(s, all_permitted(s)):
        meta = m["metadata"]
        assert meta["namespace"] == (s.metadata.namespace or "default")
        assert meta["labels"][names.STACK_LABEL] == stack_name
        assert meta["labels"]["app.kubernetes.io/part-of"] == "aistack"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "aistack-operator"
        assert meta["name"].startswith(f"{stack_name}-")
        if m["kind"] != "Deployment":
            continue
        pod = m["spec"]["template"]["spec"]
        assert (
            m["spec"]["selector"]["matchLabels"].items()
            <= m["spec"]["template"]["metadata"]["labels"].items()
        )
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert c["resources"]["requests"], f"{meta['name']} has no resource requests"


def test_quickstart_model_server() -> None:
    s = example(ROOT / "examples" / "quickstart.yaml")
    out = render(s, all_permitted(s))
    deploy = by_name(out, "Deployment")["quickstart-vllm-phi-3-5-mini"]
    c = container(deploy)
    assert c["command"] == ["vllm", "serve"]
    args = c["args"]
    assert args[0] == "microsoft/Phi-3.5-mini-instruct"
    assert args[args.index("--served-model-name") + 1] == "phi-3-5-mini"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert args[args.index("--max-model-len") + 1] == "8192"
    assert args[args.index("--port") + 1] == "8000"
    assert c["resources"]["limits"][GPU_RESOURCE] == 1
    pod = deploy["spec"]["template"]["spec"]
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    # Multi-GB weights take a while: the startup budget is the spec's (an hour by default).
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    svc = by_name(out, "Service")["quickstart-vllm-phi-3-5-mini"]
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["port"] == 8000


def test_a_model_that_is_not_permitted_runs_nothing_and_gets_no_route() -> None:
    s = stack(
        models=[
            {"name": "ok", "source": "o/ok"},
            {"name": "blocked", "source": "o/nc", "cache": {"size": "100Gi"}},
            {"name": "big", "source": "o/big", "nodes": 2, "gpus": 8},
        ]
    )
    out = render(s, {"ok": True, "blocked": False, "big": False})
    deployments = by_name(out, "Deployment")
    assert deployments["demo-vllm-ok"]["spec"]["replicas"] == 1
    # Scaled to zero, not deleted: its weight cache survives a policy that flips back.
    workloads = {**deployments, **by_name(out, "LeaderWorkerSet")}
    for name in ("demo-vllm-blocked", "demo-vllm-big-lws"):
        assert workloads[name]["spec"]["replicas"] == 0
        assert (
            workloads[name]["metadata"]["annotations"][names.LICENSE_BLOCKED_ANNOTATION] == "true"
        )
    assert "demo-vllm-big-lws" not in by_name(out, "PodDisruptionBudget")
    assert "demo-vllm-blocked-cache" in by_name(out, "PersistentVolumeClaim")
    assert names.LICENSE_BLOCKED_ANNOTATION not in deployments["demo-vllm-ok"]["metadata"].get(
        "annotations", {}
    )
    routes = yaml.safe_load(by_name(out, "ConfigMap")["demo-gateway-config"]["data"]["config.yaml"])
    assert [r["model_name"] for r in routes["model_list"]] == ["ok"]


def test_a_model_without_a_decision_is_not_started() -> None:
    s = stack(models=[{"name": "m", "source": "o/m"}])
    assert by_name(render(s, {}), "Deployment")["demo-vllm-m"]["spec"]["replicas"] == 0


def test_gateway_routes_every_served_model_and_rolls_when_they_change() -> None:
    s = stack(models=[{"name": "a", "source": "o/a"}, {"name": "b", "source": "o/b"}])
    both = render(s, {"a": True, "b": True})
    only_a = render(s, {"a": True, "b": False})
    cfg = yaml.safe_load(by_name(both, "ConfigMap")["demo-gateway-config"]["data"]["config.yaml"])
    assert cfg["model_list"][1] == {
        "model_name": "b",
        "litellm_params": {
            "model": "hosted_vllm/b",
            "api_base": "http://demo-vllm-b.ml.svc.cluster.local:8000/v1",
        },
    }
    # Traces go out through LiteLLM's OpenTelemetry callback: its `mlflow` callback needs a
    # package the gateway image lacks, and from 1.110 that stops the proxy at startup.
    # Its Prometheus logger exports metrics unless monitoring is off.
    # Traces to MLflow, a client's trace context on to the model servers, and metrics.
    assert cfg["litellm_settings"] == {
        "callbacks": ["otel", "prometheus"],
        "forward_traceparent_to_llm_provider": True,
    }

    def checksum(out: list[dict[str, Any]]) -> str:
        annotations = by_name(out, "Deployment")["demo-gateway"]["spec"]["template"]["metadata"][
            "annotations"
        ]
        return str(annotations[names.CONFIG_CHECKSUM_ANNOTATION])

    assert checksum(both) != checksum(only_a)
    assert checksum(both) == checksum(render(s, {"a": True, "b": True}))


def test_vllm_sends_traces_to_mlflow_only_when_tracking_is_on() -> None:
    s = stack()
    c = container(by_name(render(s, all_permitted(s)), "Deployment")["demo-vllm-m"])
    endpoint = c["args"][c["args"].index("--otlp-traces-endpoint") + 1]
    assert endpoint == "http://demo-mlflow.ml.svc.cluster.local:5000/v1/traces"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] == "x-mlflow-experiment-id=0"
    off = stack(mlflow={"enabled": False})
    c = container(by_name(render(off, all_permitted(off)), "Deployment")["demo-vllm-m"])
    assert "--otlp-traces-endpoint" not in c["args"]
    assert not [e for e in c["env"] if e["name"].startswith("OTEL_")]


def test_gateway_auth_and_tracing_wiring() -> None:
    s = stack(gateway={"authSecretRef": {"name": "gw", "key": "k"}})
    out = render(s, all_permitted(s))
    env = {e["name"]: e for e in container(by_name(out, "Deployment")["demo-gateway"])["env"]}
    assert env["LITELLM_MASTER_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "gw", "key": "k"}
    # OTLP/HTTP to MLflow's trace endpoint, into the experiment named by id in a header.
    assert env["OTEL_EXPORTER"]["value"] == "otlp_http"
    assert env["OTEL_ENDPOINT"]["value"] == "http://demo-mlflow.ml.svc.cluster.local:5000/v1/traces"
    assert env["OTEL_HEADERS"]["value"] == "x-mlflow-experiment-id=0"
    assert "MLFLOW_TRACKING_URI" not in env
    cfg = gateway_config(s, list(s.spec.models), RenderConfig())
    assert cfg["general_settings"] == {"master_key": "os.environ/LITELLM_MASTER_KEY"}

    no_mlflow = stack(mlflow={"enabled": False})
    out = render(no_mlflow, all_permitted(no_mlflow))
    env_names = {e["name"] for e in container(by_name(out, "Deployment")["demo-gateway"])["env"]}
    assert not {n for n in env_names if n.startswith(("OTEL_", "MLFLOW_"))}
    assert gateway_config(no_mlflow, [], RenderConfig())["litellm_settings"] == {
        "callbacks": ["prometheus"]
    }
    quiet = stack(mlflow={"enabled": False}, monitoring={"enabled": False})
    assert "litellm_settings" not in gateway_config(quiet, [], RenderConfig())
    assert not [m for m in out if m["metadata"]["name"].startswith("demo-mlflow")]


def test_gateway_without_a_key_is_open_on_purpose() -> None:
    # LiteLLM refuses to start without a master key unless told that it is meant: a stack
    # without authSecretRef keeps an open gateway (reachable as its NetworkPolicy allows).
    s = stack()
    cfg = gateway_config(s, list(s.spec.models), RenderConfig())
    assert cfg["general_settings"] == {"dangerously_permit_weak_or_unset_master_key": True}
    assert "master_key" not in cfg["general_settings"]


def test_tensor_parallel_on_one_node() -> None:
    s = stack(models=[{"name": "big", "source": "o/big", "gpus": 4, "tensorParallelSize": 2}])
    c = container(by_name(render(s, all_permitted(s)), "Deployment")["demo-vllm-big"])
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "2"
    assert c["args"][c["args"].index("--pipeline-parallel-size") + 1] == "2"
    assert c["resources"]["limits"][GPU_RESOURCE] == 4


def _lws(
    out: list[dict[str, Any]], name: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A LeaderWorkerSet and the only container of its leaders and of its workers."""
    lws = by_name(out, "LeaderWorkerSet")[name]
    template = lws["spec"]["leaderWorkerTemplate"]
    (leader,) = template["leaderTemplate"]["spec"]["containers"]
    (worker,) = template["workerTemplate"]["spec"]["containers"]
    return lws, leader, worker


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_multi_node_model_is_one_leaderworkerset_of_groups() -> None:
    s = stack(models=[{"name": "huge", "source": "o/huge", "gpus": 8, "nodes": 3, "replicas": 2}])
    out = render(s, all_permitted(s))
    assert not [d for d in by_name(out, "Deployment") if "huge" in d], "no Deployments"
    lws, leader, worker = _lws(out, "demo-vllm-huge-lws")
    assert lws["spec"]["replicas"] == 2, "a group per replica"
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 3, "a group is the model's nodes"
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert lws["spec"]["rolloutStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0},
    }
    # The stock image, and vLLM's own multi-node mode: the group's size, this pod's rank
    # and the leader's address from the environment LeaderWorkerSet gives each pod.
    assert leader["image"] == worker["image"] == DEFAULT_IMAGES["vllm"]
    for c in (leader, worker):
        assert c["command"] == ["vllm", "serve"]
        args = c["args"]
        assert _flag(args, "--tensor-parallel-size") == "8"
        assert _flag(args, "--pipeline-parallel-size") == "3"
        assert _flag(args, "--distributed-executor-backend") == "mp"
        assert _flag(args, "--nnodes") == "3"
        assert _flag(args, "--node-rank") == "$(LWS_WORKER_INDEX)"
        assert _flag(args, "--master-addr") == "$(LWS_LEADER_ADDRESS)"
        assert c["resources"]["limits"][GPU_RESOURCE] == 8
    assert "--headless" in worker["args"] and "--headless" not in leader["args"]
    assert worker["args"][: len(leader["args"])] == leader["args"], "the same engine"
    assert leader["readinessProbe"]["httpGet"]["path"] == "/health"
    for role in ("leaderTemplate", "workerTemplate"):
        pod = template[role]["spec"]
        assert pod["automountServiceAccountToken"] is False
        (term,) = pod["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        # One pod of a group per node, whichever group: LeaderWorkerSet's group key.
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == {names.LWS_NAME_LABEL: "demo-vllm-huge-lws"}
        assert term["matchLabelKeys"] == [names.LWS_GROUP_KEY_LABEL]
    roles = {
        r: template[f"{r}Template"]["metadata"]["labels"][names.ROLE_LABEL]
        for r in ("leader", "worker")
    }
    assert roles == {"leader": "leader", "worker": "worker"}
    # Only leaders are behind the model's Service; the gateway routes there.
    selector = by_name(out, "Service")["demo-vllm-huge"]["spec"]["selector"]
    assert selector[names.ROLE_LABEL] == "leader"
    # Each group's pods reach each other, by the labels LeaderWorkerSet puts on them.
    policies = by_name(out, "NetworkPolicy")
    for g in range(2):
        group = policies[f"demo-vllm-huge-lws-{g}"]["spec"]
        expected = {names.LWS_NAME_LABEL: "demo-vllm-huge-lws", names.LWS_GROUP_INDEX_LABEL: str(g)}
        assert group["podSelector"]["matchLabels"] == expected
        assert group["ingress"] == [{"from": [{"podSelector": {"matchLabels": expected}}]}]


def test_a_multi_node_model_on_ray_runs_the_ray_scripts_in_its_groups() -> None:
    s = stack(
        models=[{"name": "huge", "source": "o/huge", "gpus": 8, "nodes": 3,
                 "multiNode": {"backend": "ray"}}],
        vllm={"image": "r/vllm-ray:1"},
    )  # fmt: skip
    _, leader, worker = _lws(render(s, all_permitted(s)), "demo-vllm-huge-lws")
    assert leader["image"] == worker["image"] == "r/vllm-ray:1"
    script = leader["args"][0]
    assert "ray start --head" in script
    assert "--distributed-executor-backend ray" in script
    assert "--nnodes" not in script
    assert "-ge 3 ]" in script, "the leader waits for all nodes before serving"
    assert '--address="$LWS_LEADER_ADDRESS:6379"' in worker["args"][0]
    # Ray workers serve no API: ready (and alive) while their raylet is healthy.
    for probe in ("readinessProbe", "livenessProbe"):
        assert worker[probe]["httpGet"]["path"] == "/api/local_raylet_healthz"


def test_exclusive_topology_places_each_group_in_a_domain_of_its_own() -> None:
    rack = "example.com/rack"
    s = stack(models=[{"name": "huge", "source": "o/huge", "nodes": 2,
                       "multiNode": {"exclusiveTopology": rack}}])  # fmt: skip
    lws, _, _ = _lws(render(s, all_permitted(s)), "demo-vllm-huge-lws")
    assert lws["metadata"]["annotations"][names.LWS_EXCLUSIVE_TOPOLOGY_ANNOTATION] == rack
    plain = stack(models=[{"name": "huge", "source": "o/huge", "nodes": 2}])
    lws, _, _ = _lws(render(plain, all_permitted(plain)), "demo-vllm-huge-lws")
    assert names.LWS_EXCLUSIVE_TOPOLOGY_ANNOTATION not in lws["metadata"].get("annotations", {})


def test_without_leaderworkersets_a_multi_node_model_is_not_rendered() -> None:
    s = stack(models=[{"name": "one", "source": "o/one"},
                      {"name": "huge", "source": "o/huge", "nodes": 2}])  # fmt: skip
    for config in (RenderConfig(leaderworkersets=False),
                   RenderConfig(manage_leaderworkersets=False)):  # fmt: skip
        out = render(s, all_permitted(s), config)
        assert not [
            m for m in out if "huge" in m["metadata"]["name"] and m["kind"] != "NetworkPolicy"
        ]
        assert "demo-vllm-one" in by_name(out, "Deployment"), "single-node models are unaffected"
    assert by_name(
        render(s, all_permitted(s), RenderConfig(leaderworkersets=True)), "LeaderWorkerSet"
    )


def test_a_single_node_model_renders_as_before_leaderworkerset() -> None:
    # nodes = 1 is untouched by everything multi-node: no LeaderWorkerSet, no distributed
    # flags, the same objects whether or not the cluster has LeaderWorkerSet.
    s = stack(models=[{"name": "one", "source": "o/one", "gpus": 4}])
    with_lws = render(s, all_permitted(s), RenderConfig(leaderworkersets=True))
    assert with_lws == render(s, all_permitted(s), RenderConfig(leaderworkersets=False))
    assert not by_name(with_lws, "LeaderWorkerSet")
    args = container(by_name(with_lws, "Deployment")["demo-vllm-one"])["args"]
    for flag in (
        "--nnodes",
        "--node-rank",
        "--master-addr",
        "--headless",
        "--distributed-executor-backend",
    ):
        assert flag not in args


def test_sources_map_to_vllm_arguments_and_volumes() -> None:
    s = stack(
        models=[
            {"name": "hub", "source": "o/m", "revision": "abc123",
             "hfTokenSecretRef": {"name": "hf", "key": "token"}},
            {"name": "disk", "source": "pvc://weights/llama/8b"},
            {"name": "bucket", "source": "s3://models/qwen",
             "credentialsSecretRef": {"name": "s3creds"}},
        ]
    )  # fmt: skip
    deployments = by_name(render(s, all_permitted(s)), "Deployment")
    hub = container(deployments["demo-vllm-hub"])
    assert hub["args"][hub["args"].index("--revision") + 1] == "abc123"
    token = next(e for e in hub["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}

    disk_deploy = deployments["demo-vllm-disk"]
    disk = container(disk_deploy)
    assert disk["args"][0] == "/mnt/models/llama/8b"
    volume = next(
        v for v in disk_deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "model"
    )
    assert volume["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}

    bucket = container(deployments["demo-vllm-bucket"])
    assert bucket["args"][0] == "s3://models/qwen"
    assert bucket["args"][bucket["args"].index("--load-format") + 1] == "runai_streamer"
    assert bucket["envFrom"] == [{"secretRef": {"name": "s3creds"}}]


def test_weight_cache_pvc_or_existing_claim() -> None:
    s = stack(
        models=[
            {
                "name": "new",
                "source": "o/a",
                "cache": {"size": "100Gi", "storageClassName": "fast"},
            },
            {"name": "old", "source": "o/b", "cache": {"existingClaim": "shared-weights"}},
        ]
    )
    out = render(s, all_permitted(s))
    pvcs = by_name(out, "PersistentVolumeClaim")
    assert pvcs["demo-vllm-new-cache"]["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert pvcs["demo-vllm-new-cache"]["spec"]["storageClassName"] == "fast"
    assert not [n for n in pvcs if "old" in n]
    old = by_name(out, "Deployment")["demo-vllm-old"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "shared-weights"}} in old


def test_ray_cluster() -> None:
    s = stack(ray={"workerGroups": [{"name": "cpu", "replicas": 3}, {"name": "gpu", "gpus": 2}]})
    out = render(s, all_permitted(s))
    head_svc = by_name(out, "Service")["demo-ray-head"]
    assert {p["port"] for p in head_svc["spec"]["ports"]} >= {6379, 8265, 10001}
    deployments = by_name(out, "Deployment")
    head = container(deployments["demo-ray-head"])
    assert "--head" in head["args"]
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://demo-mlflow.ml.svc.cluster.local:5000"
    cpu = deployments["demo-ray-worker-cpu"]
    assert cpu["spec"]["replicas"] == 3
    assert GPU_RESOURCE not in container(cpu)["resources"].get("limits", {})
    assert "tolerations" not in cpu["spec"]["template"]["spec"]
    gpu = deployments["demo-ray-worker-gpu"]
    assert container(gpu)["resources"]["limits"][GPU_RESOURCE] == 2
    assert "--address=demo-ray-head.ml.svc.cluster.local:6379" in container(gpu)["args"]
    assert {e["name"] for e in container(gpu)["env"]} >= {"MLFLOW_TRACKING_URI"}


def test_mlflow_local_storage_is_kept_by_default() -> None:
    s = stack()
    out = render(s, all_permitted(s))
    pvc = by_name(out, "PersistentVolumeClaim")["demo-mlflow-data"]
    assert pvc["metadata"]["annotations"][names.RETAIN_ANNOTATION] == "true"
    deploy = by_name(out, "Deployment")["demo-mlflow"]
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    args = container(deploy)["args"]
    assert args[args.index("--backend-store-uri") + 1] == "sqlite:////mlflow/mlflow.db"

    deleting = stack(mlflow={"storage": {"deleteWithStack": True}})
    pvc = by_name(render(deleting, all_permitted(deleting)), "PersistentVolumeClaim")[
        "demo-mlflow-data"
    ]
    assert names.RETAIN_ANNOTATION not in pvc["metadata"].get("annotations", {})


def test_mlflow_allows_exactly_its_service_names_and_loopback() -> None:
    # MLFLOW_SERVER_ALLOWED_HOSTS replaces MLflow's own defaults, and an entry with "*" is a
    # pattern whose "*" spans dots: only exact names (and loopback on any port, for
    # `kubectl port-forward`) keep the DNS-rebinding protection it exists for.
    s = stack(mlflow={"allowedHosts": ["mlflow.example.com"]})
    deploy = by_name(render(s, all_permitted(s)), "Deployment")["demo-mlflow"]
    hosts = next(
        e["value"] for e in container(deploy)["env"] if e["name"] == "MLFLOW_SERVER_ALLOWED_HOSTS"
    ).split(",")
    service_forms = [
        "demo-mlflow",
        "demo-mlflow.ml",
        "demo-mlflow.ml.svc",
        "demo-mlflow.ml.svc.cluster.local",
        "demo-mlflow.ml.svc.cluster.local.",  # the same name, absolute
    ]
    for form in service_forms:
        assert form in hosts
        assert f"{form}:5000" in hosts
    for loopback in ("localhost", "127.0.0.1"):
        assert loopback in hosts
        assert f"{loopback}:*" in hosts
    assert hosts[-1] == "mlflow.example.com"
    # Every pattern is a loopback name with a port wildcard; no pattern can match a name
    # below the Service's (demo-mlflow.ml.attacker.example).
    patterns = [h for h in hosts if "*" in h]
    assert patterns == ["localhost:*", "127.0.0.1:*"]
    assert len(hosts) == len(set(hosts))


def test_mlflow_external_stores_come_from_secrets() -> None:
    s = example(ROOT / "examples" / "external-stores.yaml")
    out = render(s, all_permitted(s))
    assert "tracked-mlflow-data" not in by_name(out, "PersistentVolumeClaim")
    deploy = by_name(out, "Deployment")["tracked-mlflow"]
    c = container(deploy)
    assert c["args"][c["args"].index("--backend-store-uri") + 1] == "$(MLFLOW_BACKEND_STORE_URI)"
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-db",
        "key": "uri",
    }
    assert c["envFrom"] == [{"secretRef": {"name": "mlflow-s3"}}]
    assert deploy["spec"]["replicas"] == 2


def test_images_come_from_spec_then_operator_config() -> None:
    config = RenderConfig(images={"vllm": "registry.local/vllm:1"})
    s = stack(
        models=[{"name": "a", "source": "o/a"}, {"name": "b", "source": "o/b", "image": "mine:2"}]
    )
    deployments = by_name(render(s, all_permitted(s), config), "Deployment")
    assert container(deployments["demo-vllm-a"])["image"] == "registry.local/vllm:1"
    assert container(deployments["demo-vllm-b"])["image"] == "mine:2"
    s = stack(vllm={"image": "team/vllm:3"})
    assert (
        container(by_name(render(s, all_permitted(s), config), "Deployment")["demo-vllm-m"])[
            "image"
        ]
        == "team/vllm:3"
    )


def test_longest_allowed_names_stay_dns_labels() -> None:
    stack_name = "s" * names.STACK_NAME_MAX
    model = "m" * (names.MODEL_NAME_BUDGET - names.STACK_NAME_MAX)
    wide = "w" * (names.MODEL_NAME_BUDGET - names.STACK_NAME_MAX)
    group = "g" * (names.RAY_GROUP_BUDGET - names.STACK_NAME_MAX)
    s = stack(
        name=stack_name,
        models=[{"name": model, "source": "o/m", "cache": {"size": "1Gi"}},
                {"name": wide, "source": "o/w", "nodes": 2, "replicas": names.MAX_REPLICAS,
                 "cache": {"size": "1Gi"}}],
        ray={"workerGroups": [{"name": group}]},
    )  # fmt: skip
    out = render(s, all_permitted(s))
    longest = max(len(m["metadata"]["name"]) for m in out)
    assert longest <= names.DNS_LABEL_MAX
    for m in out:
        validate_manifest(m)
    # What LeaderWorkerSet and the StatefulSet controller name after it: the last group's
    # worker StatefulSet, and the controller-revision-hash label of its pods.
    (lws,) = by_name(out, "LeaderWorkerSet")
    worker_set = f"{lws}-{names.MAX_REPLICAS - 1}"
    assert len(f"{worker_set}-0123456789") == names.DNS_LABEL_MAX


def test_render_is_pure_and_deterministic() -> None:
    s = example(ROOT / "examples" / "multi-model.yaml")
    before = copy.deepcopy(s.model_dump())
    first = render(s, all_permitted(s))
    second = render(s, all_permitted(s))
    assert first == second
    assert s.model_dump() == before
    first[0]["metadata"]["name"] = "changed"
    assert render(s, all_permitted(s))[0]["metadata"]["name"] != "changed"


def test_disabled_parts_render_nothing() -> None:
    s = stack(
        models=[], ray={"enabled": False}, mlflow={"enabled": False}, gateway={"enabled": False}
    )
    assert render(s, {}) == []


def test_user_strings_cannot_break_out_of_their_yaml_value() -> None:
    tricky = 'x"\n  injected: true\n- "y'
    s = stack(models=[{"name": "m", "source": "o/m", "extraArgs": ["--tool-call-parser", tricky],
                       "nodeSelector": {"pool": "a: b"}}])  # fmt: skip
    deploy = by_name(render(s, all_permitted(s)), "Deployment")["demo-vllm-m"]
    assert container(deploy)["args"][-1] == tricky
    assert deploy["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "a: b"}


def test_endpoints() -> None:
    s = stack()
    assert endpoints(s) == {
        "gateway": "http://demo-gateway.ml.svc.cluster.local:4000/v1",
        "mlflow": "http://demo-mlflow.ml.svc.cluster.local:5000",
        "rayDashboard": "http://demo-ray-head.ml.svc.cluster.local:8265",
        "rayClient": "ray://demo-ray-head.ml.svc.cluster.local:10001",
    }
    assert endpoints(stack(ray={"enabled": False}), RenderConfig(cluster_domain="corp")) == {
        "gateway": "http://demo-gateway.ml.svc.corp:4000/v1",
        "mlflow": "http://demo-mlflow.ml.svc.corp:5000",
    }


def test_render_yaml_round_trips() -> None:
    s = example(ROOT / "examples" / "multi-model.yaml")
    out = render(s, all_permitted(s))
    assert list(yaml.safe_load_all(render_yaml(out))) == out
