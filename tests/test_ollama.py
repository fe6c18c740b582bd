"""The CPU engine (Ollama): which models run on it, what their pods are, what it refuses,
and that the license gate judges them as it judges vLLM's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from aistack.api import AIStack, rules
from aistack.components import (
    DEFAULT_IMAGES,
    ENGINE,
    RenderConfig,
    engine_of,
    monitoring,
)
from aistack.licenses import decide_stack
from aistack.licenses.admission import judged_subjects
from aistack.render import render
from aistack.render.models import OLLAMA_STORE, ollama_modelfile
from helpers import ROOT, all_permitted, by_name, example, stack, trusting_policy

DEFAULTS = tuple(RenderConfig().images.values())
GGUF_REPO = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
PVC_FILE = "pvc://models/tiny/model.gguf"


def cpu_stack(**spec: Any) -> AIStack:
    spec.setdefault(
        "models",
        [
            {"name": "small", "engine": "ollama", "source": GGUF_REPO, "quantization": "Q4_K_M",
             "maxModelLen": 4096},
            {"name": "disk", "engine": "ollama", "source": PVC_FILE, "license": "Apache-2.0"},
        ],
    )  # fmt: skip
    spec.setdefault("ray", {"enabled": False})
    return stack(**spec)


def deployments(s: AIStack, config: RenderConfig | None = None) -> dict[str, dict[str, Any]]:
    return by_name(render(s, all_permitted(s), config), "Deployment")


def pod(s: AIStack, model: str) -> dict[str, Any]:
    spec: dict[str, Any] = deployments(s)[f"demo-vllm-{model}"]["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# ---------------------------------------------------------------- which engine


def test_a_model_runs_on_its_engine_else_the_stacks() -> None:
    s = stack(
        engine="ollama",
        models=[
            {"name": "a", "source": GGUF_REPO},
            {"name": "b", "source": "org/m", "engine": "vllm"},
        ],
    )
    assert [s.spec.engine_of(m) for m in s.spec.models] == ["ollama", "vllm"]
    assert [engine_of(s, m).name for m in s.spec.models] == ["ollama", "vllm"]
    assert stack().spec.engine_of(stack().spec.models[0]) == "vllm"


def test_the_engines_image_is_the_engines_section_or_the_operators_default() -> None:
    s = cpu_stack(ollama={"image": "registry.local/ollama:1"}, vllm={"image": "r/vllm:1"})
    assert {c["image"] for c in pod(s, "small")["containers"]} == {"registry.local/ollama:1"}
    plain = cpu_stack()
    assert pod(plain, "small")["containers"][0]["image"] == DEFAULT_IMAGES["ollama"]
    assert DEFAULT_IMAGES["ollama"] == f"ollama/ollama:{ENGINE['ollama'].version}"
    custom = RenderConfig(images={"ollama": "mirror.local/ollama:0.17.4"})
    spec = deployments(plain, custom)["demo-vllm-small"]["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == "mirror.local/ollama:0.17.4"


# ---------------------------------------------------------------- the pod


def test_an_ollama_pod_asks_for_cpus_and_no_gpu() -> None:
    spec = pod(cpu_stack(), "small")
    (server,) = spec["containers"]
    assert server["command"] == ["ollama", "serve"]
    resources = server["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {})
    assert resources["requests"]["cpu"] == "2" and resources["requests"]["memory"] == "4Gi"
    assert resources["requests"]["ephemeral-storage"] == "20Gi"
    # No GPU toleration: the pod lands on nodes without the GPU taint.
    assert spec["tolerations"] == []
    assert "nodeSelector" not in spec
    # No shared memory volume (vLLM's NCCL needs one; Ollama does not).
    assert {v["name"] for v in spec["volumes"]} == {"cache", "tmp"}
    labels = deployments(cpu_stack())["demo-vllm-small"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "ollama"


def test_the_model_sizes_come_from_the_model_then_the_ollama_section() -> None:
    s = cpu_stack(
        models=[
            {"name": "m", "engine": "ollama", "source": GGUF_REPO,
             "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}, "scratchSize": "5Gi"},
        ],
        ollama={"resources": {"requests": {"cpu": "4"}}},
    )  # fmt: skip
    res = pod(s, "m")["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "5Gi"}


def test_the_server_listens_on_the_model_port_and_keeps_its_store_on_the_cache() -> None:
    spec = pod(cpu_stack(), "small")
    (server,) = spec["containers"]
    env = env_of(server)
    assert env["OLLAMA_HOST"] == "0.0.0.0:8000"
    assert env["OLLAMA_MODELS"] == OLLAMA_STORE and OLLAMA_STORE.startswith("/cache/")
    assert env["HOME"] == "/tmp"
    # Prompts never go to ollama.com's cloud models.
    assert env["OLLAMA_NO_CLOUD"] == "1"
    assert server["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/", "port": "http"}
    assert server["securityContext"]["readOnlyRootFilesystem"] is True


def test_an_init_container_imports_the_model_under_its_served_name() -> None:
    spec = pod(cpu_stack(), "small")
    (importer,) = spec["initContainers"]
    env = env_of(importer)
    assert importer["command"][:2] == ["/bin/sh", "-c"]
    assert 'ollama create "$AISTACK_MODEL"' in importer["command"][2]
    assert env["AISTACK_MODEL"] == "small"
    assert env["AISTACK_MODELFILE"] == f"FROM hf.co/{GGUF_REPO}:Q4_K_M\nPARAMETER num_ctx 4096\n"
    # Its server listens on loopback only, on the same store as the pod's server.
    assert env["OLLAMA_HOST"] == "127.0.0.1:8000"
    assert env["OLLAMA_MODELS"] == env_of(spec["containers"][0])["OLLAMA_MODELS"]
    assert importer["volumeMounts"] == spec["containers"][0]["volumeMounts"]
    # Within the startup budget, else it fails and the kubelet starts it again.
    assert 'timeout "$AISTACK_IMPORT_TIMEOUT" ollama create' in importer["command"][2]
    assert env["AISTACK_IMPORT_TIMEOUT"] == "1800"
    quick = cpu_stack(ollama={"startupTimeoutSeconds": 120})
    assert env_of(pod(quick, "small")["initContainers"][0])["AISTACK_IMPORT_TIMEOUT"] == "120"


def test_a_pvc_file_is_mounted_read_only_and_imported_from_its_path() -> None:
    spec = pod(cpu_stack(), "disk")
    (importer,) = spec["initContainers"]
    assert env_of(importer)["AISTACK_MODELFILE"] == "FROM /mnt/models/tiny/model.gguf\n"
    (claim,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mounts = {m["mountPath"]: m for m in importer["volumeMounts"]}
    assert mounts["/mnt/models"]["readOnly"] is True


def test_the_modelfile_names_hugging_faces_choice_when_no_quantization_is_given() -> None:
    s = cpu_stack(models=[{"name": "m", "engine": "ollama", "source": GGUF_REPO}])
    assert ollama_modelfile(s.spec.models[0]) == f"FROM hf.co/{GGUF_REPO}\n"


def test_a_cache_claim_keeps_the_store_and_rolls_one_pod_at_a_time() -> None:
    s = cpu_stack(
        models=[{"name": "m", "engine": "ollama", "source": GGUF_REPO, "cache": {"size": "5Gi"}}]
    )
    objs = render(s, all_permitted(s))
    assert by_name(objs, "PersistentVolumeClaim")["demo-vllm-m-cache"]
    dep = by_name(objs, "Deployment")["demo-vllm-m"]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # Without a claim a new pod starts before the old one goes.
    surge = deployments(cpu_stack())["demo-vllm-small"]["spec"]["strategy"]["rollingUpdate"]
    assert surge == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_gateway_routes_an_ollama_model_to_its_service() -> None:
    s = cpu_stack()
    objs = render(s, all_permitted(s))
    config = by_name(objs, "ConfigMap")["demo-gateway-config"]["data"]["config.yaml"]
    import yaml

    routes = {r["model_name"]: r["litellm_params"] for r in yaml.safe_load(config)["model_list"]}
    assert routes["small"]["api_base"] == "http://demo-vllm-small.ml.svc.cluster.local:8000/v1"
    svc = by_name(objs, "Service")["demo-vllm-small"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_ollama_models_get_the_model_servers_network_policy() -> None:
    s = cpu_stack()
    policy = by_name(render(s, all_permitted(s)), "NetworkPolicy")["demo-model-server"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    labels = deployments(s)["demo-vllm-small"]["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in selector.items())
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 8000, "protocol": "TCP"}]


# ---------------------------------------------------------------- metrics


def test_ollama_models_are_not_scraped_and_the_condition_says_why() -> None:
    on = RenderConfig(monitoring_crds=True)
    s = cpu_stack()
    monitors = by_name(render(s, all_permitted(s), on), "PodMonitor")
    assert "demo-model-server" not in monitors
    said = monitoring(s, on).message
    assert "Ollama models are not scraped: Ollama serves no Prometheus metrics" in said


def test_beside_vllm_models_only_the_vllm_pods_are_scraped() -> None:
    on = RenderConfig(monitoring_crds=True)
    s = cpu_stack(
        models=[
            {"name": "gpu", "source": "org/m"},
            {"name": "cpu", "engine": "ollama", "source": GGUF_REPO},
        ]
    )
    monitor = by_name(render(s, all_permitted(s), on), "PodMonitor")["demo-model-server"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/name"] == "vllm"
    deps = deployments(s, on)
    pods = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deps.items()}
    assert all(pods["demo-vllm-gpu"].get(k) == v for k, v in selector.items())
    assert not all(pods["demo-vllm-cpu"].get(k) == v for k, v in selector.items())
    # A stack of vLLM models only keeps the selector it had (no rollout on upgrade).
    plain = by_name(render(stack(), all_permitted(stack()), on), "PodMonitor")
    assert (
        "app.kubernetes.io/name"
        not in plain["demo-model-server"]["spec"]["selector"]["matchLabels"]
    )


# ---------------------------------------------------------------- what the engine refuses


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"gpus": 2}, "gpus", rules.ENGINE_OLLAMA_GPUS),
        ({"nodes": 2}, "nodes", rules.ENGINE_OLLAMA_GPUS),
        ({"tensorParallelSize": 1}, "tensorParallelSize", rules.ENGINE_OLLAMA_GPUS),
        ({"gpuMemoryUtilization": 0.5}, "gpuMemoryUtilization", rules.ENGINE_OLLAMA_GPUS),
        ({"adapters": [{"name": "a", "source": "org/a"}]}, "adapters", rules.ENGINE_OLLAMA_LORA),
        ({"speculative": {"method": "ngram", "numSpeculativeTokens": 2}}, "speculative",
         rules.ENGINE_OLLAMA_LORA),
        ({"extraArgs": ["--enforce-eager"]}, "extraArgs", rules.ENGINE_OLLAMA_ARGS),
        ({"autoscaling": {"maxReplicas": 2}}, "autoscaling", rules.ENGINE_OLLAMA_AUTOSCALING),
        ({"source": "s3://bucket/m.gguf"}, "source", rules.ENGINE_OLLAMA_SOURCE),
        ({"revision": "main"}, "revision", rules.ENGINE_OLLAMA_SOURCE),
        ({"hfTokenSecretRef": {"name": "hf", "key": "token"}}, "hfTokenSecretRef",
         rules.ENGINE_OLLAMA_SOURCE),
    ],
)  # fmt: skip
def test_what_ollama_cannot_do_is_refused_with_the_field_named(
    fields: dict[str, Any], path: str, message: str
) -> None:
    model = {"name": "m", "engine": "ollama", "source": GGUF_REPO, **fields}
    with pytest.raises(ValidationError) as err:
        stack(models=[model])
    assert f"models[m].{path}: {message}" in str(err.value)
    # Through the stack's default engine too.
    model.pop("engine")
    with pytest.raises(ValidationError, match="ollama"):
        stack(engine="ollama", models=[model])
    # The same model on vLLM is not refused for it (the vLLM rules still apply).
    if path not in ("nodes", "revision", "source"):
        stack(models=[model])


def test_quantization_only_picks_a_file_of_a_hugging_face_repo_on_ollama() -> None:
    with pytest.raises(ValidationError, match="quantization"):
        stack(models=[{"name": "m", "source": GGUF_REPO, "quantization": "Q4_K_M"}])
    with pytest.raises(ValidationError, match="quantization"):
        stack(models=[{"name": "m", "engine": "ollama", "source": PVC_FILE,
                       "quantization": "Q4_K_M"}])  # fmt: skip
    with pytest.raises(ValidationError):  # nothing but a name reaches the Modelfile
        stack(models=[{"name": "m", "engine": "ollama", "source": GGUF_REPO,
                       "quantization": "Q4\nADAPTER /etc/passwd"}])  # fmt: skip


def test_the_stacks_default_autoscaling_skips_ollama_models() -> None:
    s = cpu_stack(
        models=[
            {"name": "gpu", "source": "org/m"},
            {"name": "cpu", "engine": "ollama", "source": GGUF_REPO},
        ],
        vllm={"autoscaling": {"maxReplicas": 3}},
    )
    assert s.spec.autoscaling_of(s.spec.models[0]) is not None
    assert s.spec.autoscaling_of(s.spec.models[1]) is None


# ---------------------------------------------------------------- the license gate


def test_an_ollama_model_gets_the_same_license_verdict_as_on_vllm() -> None:
    gpl = {"source": PVC_FILE, "license": "GPL-3.0-only"}
    on_cpu = stack(models=[{"name": "m", "engine": "ollama", **gpl}])
    on_gpu = stack(models=[{"name": "m", **gpl}])
    cpu = decide_stack(on_cpu, [trusting_policy()], default_images=DEFAULTS)["m"]
    gpu = decide_stack(on_gpu, [trusting_policy()], default_images=DEFAULTS)["m"]
    assert (cpu.permitted, cpu.reason) == (gpu.permitted, gpu.reason)
    assert not cpu.permitted
    # A model that is not permitted runs no pod, and has no route.
    objs = render(on_cpu, {"m": cpu.permitted})
    assert by_name(objs, "Deployment")["demo-vllm-m"]["spec"]["replicas"] == 0
    config = by_name(objs, "ConfigMap")["demo-gateway-config"]["data"]["config.yaml"]
    assert "demo-vllm-m" not in config


def test_the_catalog_knows_the_cpu_examples_model() -> None:
    s = example(ROOT / "examples" / "cpu.yaml")
    v = decide_stack(s, [], default_images=DEFAULTS)
    assert all(x.permitted for x in v.values()), {k: x.message for k, x in v.items()}
    assert v["qwen"].license == "Apache-2.0"


def test_the_ollama_image_a_stack_names_is_held_to_the_policy() -> None:
    s = cpu_stack(ollama={"image": "ghcr.io/acme/ollama:1"})
    v = decide_stack(s, [trusting_policy()], default_images=DEFAULTS)
    assert (v["small"].permitted, v["small"].reason) == (False, "ImageNotAllowed")
    allowing = [trusting_policy(images={"allow": ["ghcr.io/acme/*"]})]
    assert decide_stack(s, allowing, default_images=DEFAULTS)["small"].permitted
    # The stack's vLLM image does not speak for its Ollama models, nor the other way round.
    vllm_named = cpu_stack(vllm={"image": "ghcr.io/acme/vllm:1"})
    assert decide_stack(vllm_named, [trusting_policy()], default_images=DEFAULTS)["small"].permitted
    # What the model's pods run records the image judged.
    dep = deployments(s)["demo-vllm-small"]
    record = json.loads(dep["metadata"]["annotations"]["aistack.dev/licensed"])
    assert record["image"] == "ghcr.io/acme/ollama:1"


def test_the_webhook_judges_a_change_of_engine_again() -> None:
    before = cpu_stack(models=[{"name": "m", "source": GGUF_REPO, "engine": "ollama"}])
    after = cpu_stack(models=[{"name": "m", "source": GGUF_REPO, "engine": "ollama"}],
                      ollama={"image": "ghcr.io/acme/ollama:1"})  # fmt: skip
    assert judged_subjects(before)["m"] != judged_subjects(after)["m"]
    moved = cpu_stack(models=[{"name": "m", "source": GGUF_REPO}], engine="ollama")
    assert json.loads(judged_subjects(moved)["m"])["engine"] == "ollama"
