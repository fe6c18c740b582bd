"""The model servers: a vLLM Deployment (or a multi-node group's leader and workers) or an
Ollama Deployment per model, its Service, its weights, adapters and draft model."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from aistack import names
from aistack.api.v1alpha1 import AdapterSpec, AIStack, ModelSpec, is_storage
from aistack.components import (
    RAY_AGENT_PORT,
    RAY_GCS_PORT,
    VLLM_MASTER_PORT,
    VLLM_PORT,
    RenderConfig,
    engine_of,
    lws_missing,
    mlflow_uri,
    namespace_of,
)
from aistack.render.common import (
    PULL_AND_SCHEDULE_SECONDS,
    Manifest,
    annotate_licensed,
    container_resources,
    container_security,
    fill_template,
    pod_security,
    secret_env,
    tolerations,
)

MODEL_MOUNT = "/mnt/models"

#: The environment LeaderWorkerSet gives each pod of a group: the leader's address (its
#: pod's name in the LeaderWorkerSet's headless Service) and the pod's index in the group
#: (0: the leader).
LWS_LEADER_ADDRESS_ENV = "LWS_LEADER_ADDRESS"
LWS_WORKER_INDEX_ENV = "LWS_WORKER_INDEX"


#: Where the init containers put the LoRA adapters they download (on the cache volume).
ADAPTER_DIR = "/cache/adapters"


#: What an adapter's init container needs: it streams files from the Hub or S3 into the
#: cache volume (its own root is read-only: only logs count against its node disk).
FETCH_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "256Mi", "ephemeral-storage": "64Mi"},
    "limits": {"memory": "1Gi", "ephemeral-storage": "1Gi"},
}


#: Where the PVCs of a model's adapters and draft model are mounted (those other than the
#: model's own claim), one directory per claim.
CLAIM_MOUNT = "/mnt/claims"


def _pvc(source: str) -> tuple[str, str]:
    """The claim and the path in it of a ``pvc://<claim>/<path>`` source."""
    claim, _, path = source.removeprefix("pvc://").partition("/")
    return claim, path


def _model_path(model: ModelSpec) -> str:
    if model.source.startswith("pvc://"):
        return f"{MODEL_MOUNT}/{_pvc(model.source)[1]}".rstrip("/")
    return model.source


def _extra_claims(model: ModelSpec) -> list[str]:
    """The PVCs of the model's pvc:// adapters and draft that the model's own source does
    not mount."""
    own = _pvc(model.source)[0] if model.source.startswith("pvc://") else None
    sources = [a.source for a in model.adapters]
    if model.speculative is not None and model.speculative.source is not None:
        sources.append(model.speculative.source)
    out: list[str] = []
    for source in sources:
        if source.startswith("pvc://"):
            claim = _pvc(source)[0]
            if claim != own and claim not in out:
                out.append(claim)
    return out


def _claim_path(model: ModelSpec, source: str) -> str:
    """Where a ``pvc://`` source of an adapter or draft is in the model's pods."""
    claim, path = _pvc(source)
    own = model.source.startswith("pvc://") and _pvc(model.source)[0] == claim
    return f"{MODEL_MOUNT if own else f'{CLAIM_MOUNT}/{claim}'}/{path}".rstrip("/")


def adapter_path(model: ModelSpec, adapter: AdapterSpec) -> str:
    """Where vLLM finds an adapter in the model's pods: under its PVC's mount, or where
    its init container downloaded it."""
    if not adapter.source.startswith("pvc://"):
        return f"{ADAPTER_DIR}/{adapter.name}"
    return _claim_path(model, adapter.source)


def speculative_config(model: ModelSpec) -> dict[str, Any] | None:
    """vLLM's ``--speculative-config`` for the model (None: no speculative decoding). A
    Hugging Face draft is loaded by vLLM itself at its pinned revision; a PVC's from its
    mount."""
    spec = model.speculative
    if spec is None:
        return None
    config: dict[str, Any] = {
        "method": spec.method,
        "num_speculative_tokens": spec.num_speculative_tokens,
    }
    if spec.source is not None:
        if spec.source.startswith("pvc://"):
            config["model"] = _claim_path(model, spec.source)
        else:
            config["model"] = spec.source
            if spec.revision is not None:
                config["revision"] = spec.revision
    return config


@cache
def _s3_fetch_program() -> str:
    return resources.files("aistack.render").joinpath("fetch_s3.py").read_text()


def adapter_fetchers(model: ModelSpec) -> list[tuple[str, list[str]]]:
    """The init containers that download the model's Hugging Face and S3 adapters (vLLM
    loads adapters only from a local directory, or from the Hub's default branch): a name
    and a command each. Adapters on a PVC need none."""
    out: list[tuple[str, list[str]]] = []
    for i, adapter in enumerate(model.adapters):
        dest = adapter_path(model, adapter)
        if adapter.source.startswith("pvc://"):
            continue
        if adapter.source.startswith("s3://"):
            command = ["python3", "-c", _s3_fetch_program(), adapter.source, dest]
        else:
            command = ["hf", "download", adapter.source, "--local-dir", dest]
            if adapter.revision is not None:
                command += ["--revision", adapter.revision]
        out.append((f"fetch-adapter-{i}", command))
    return out


def _lora_args(model: ModelSpec) -> list[str]:
    """vLLM's LoRA flags for the model's adapters (the permitted ones: see
    ``with_permitted_adapters``); none without adapters. Every adapter is listed in one
    ``--lora-modules`` (vLLM keeps only the last of repeated ones) and kept in CPU memory."""
    if not model.adapters:
        return []
    return [
        "--enable-lora",
        "--max-loras", str(model.max_loras),
        "--max-lora-rank", str(model.max_lora_rank),
        "--max-cpu-loras", str(max(model.max_loras, len(model.adapters))),
        "--lora-modules", *(f"{a.name}={adapter_path(model, a)}" for a in model.adapters),
    ]  # fmt: skip


def _multinode_args(model: ModelSpec) -> list[str]:
    """How vLLM joins a multi-node model's group: on its Ray cluster, or by its own
    multiprocessing executor, each pod told the group's size, its rank and the leader's
    address by the environment LeaderWorkerSet gives it (the kubelet expands ``$(VAR)``)."""
    if not model.spans_nodes:
        return []
    if model.multinode_backend == "ray":
        return ["--distributed-executor-backend", "ray"]
    return [
        "--distributed-executor-backend", "mp",
        "--nnodes", str(model.nodes),
        "--node-rank", f"$({LWS_WORKER_INDEX_ENV})",
        "--master-addr", f"$({LWS_LEADER_ADDRESS_ENV})",
        "--master-port", str(VLLM_MASTER_PORT),
    ]  # fmt: skip


def _vllm_args(stack: AIStack, model: ModelSpec, config: RenderConfig) -> list[str]:
    vllm = stack.spec.vllm
    args = [
        _model_path(model),
        "--served-model-name", model.name,
        "--host", "0.0.0.0",
        "--port", str(VLLM_PORT),
        "--tensor-parallel-size", str(model.effective_tp),
    ]  # fmt: skip
    if model.pipeline_parallel_size > 1:
        args += ["--pipeline-parallel-size", str(model.pipeline_parallel_size)]
    args += _multinode_args(model)
    if model.max_model_len is not None:
        args += ["--max-model-len", str(model.max_model_len)]
    util = model.gpu_memory_utilization or vllm.gpu_memory_utilization
    args += ["--gpu-memory-utilization", str(util)]
    if model.revision is not None and not is_storage(model.source):
        args += ["--revision", model.revision]
    if model.source.startswith("s3://"):
        args += ["--load-format", "runai_streamer"]
    args += _lora_args(model)
    if (speculative := speculative_config(model)) is not None:
        args += ["--speculative-config", json.dumps(speculative, separators=(",", ":"))]
    if stack.spec.mlflow.enabled:
        # MLflow (3.6+) takes OTLP/HTTP traces; the experiment is named in a header.
        args += ["--otlp-traces-endpoint", f"{mlflow_uri(stack, config)}/v1/traces"]
    return args + list(vllm.extra_args) + list(model.extra_args)


def _model_env(stack: AIStack, model: ModelSpec, config: RenderConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    if model.spans_nodes:
        env.append(
            {"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
        )
    if stack.spec.mlflow.enabled:
        headers = f"x-mlflow-experiment-id={config.mlflow_trace_experiment_id}"
        env += [
            {
                "name": "OTEL_SERVICE_NAME",
                "value": names.model_base(stack.metadata.name, model.name),
            },
            {"name": "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "value": "http/protobuf"},
            {"name": "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "value": headers},
        ]
    if model.hf_token_secret_ref is not None:
        env.append(secret_env("HF_TOKEN", model.hf_token_secret_ref))
    return env


def _scratch_size(stack: AIStack, model: ModelSpec) -> int | str:
    if model.scratch_size is not None:
        return model.scratch_size
    return stack.spec.engine_defaults(model).scratch_size


def _on_ollama(stack: AIStack, model: ModelSpec) -> bool:
    return stack.spec.engine_of(model) == "ollama"


def _model_resources(stack: AIStack, model: ModelSpec) -> dict[str, Any]:
    """CPU, memory and GPUs as the spec says, and the node disk of the pod's emptyDirs
    (``ephemeral-storage``), unless the spec requests a figure of its own."""
    gpus = model.gpus if engine_of(stack, model).gpus else 0
    out = container_resources(
        model.resources or stack.spec.engine_defaults(model).resources, gpus=gpus
    )
    out.setdefault("requests", {}).setdefault("ephemeral-storage", _scratch_size(stack, model))
    return out


def _model_volumes(stack: AIStack, model: ModelSpec) -> tuple[list[Any], list[Any]]:
    stack_name = stack.metadata.name
    scratch = _scratch_size(stack, model)
    if model.cache is None:
        cache_volume: dict[str, Any] = {"name": "cache", "emptyDir": {"sizeLimit": scratch}}
    else:
        claim = model.cache.existing_claim or names.model_cache(stack_name, model.name)
        cache_volume = {"name": "cache", "persistentVolumeClaim": {"claimName": claim}}
    volumes = [cache_volume, {"name": "tmp", "emptyDir": {"sizeLimit": scratch}}]
    mounts: list[dict[str, Any]] = [
        {"name": "cache", "mountPath": "/cache"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if not _on_ollama(stack, model):  # NCCL and PyTorch's shared memory
        shm = stack.spec.vllm.shm_size
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if model.source.startswith("pvc://"):
        claim = _pvc(model.source)[0]
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
    for i, claim in enumerate(_extra_claims(model)):
        volume = f"claim-{i}"
        volumes.append(
            {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": volume, "mountPath": f"{CLAIM_MOUNT}/{claim}", "readOnly": True})
    return volumes, mounts


def _model_context(stack: AIStack, model: ModelSpec, config: RenderConfig) -> dict[str, Any]:
    stack_name = stack.metadata.name
    volumes, mounts = _model_volumes(stack, model)
    engine = engine_of(stack, model)
    period = 10
    startup_timeout = stack.spec.engine_defaults(model).startup_timeout_seconds
    return {
        "namespace": namespace_of(stack),
        "model": model,
        "base": names.model_base(stack_name, model.name),
        "labels": names.common_labels(stack_name, "model-server", engine.name, model=model.name),
        "selector": names.selector_labels(stack_name, "model-server", model=model.name),
        "image": stack.spec.image_of(model) or config.images[engine.image],
        "resources": _model_resources(stack, model),
        "tolerations": tolerations(model.tolerations, gpu=engine.gpus),
        "node_selector": dict(model.node_selector),
        "volumes": volumes,
        "mounts": mounts,
        "credentials": model.credentials_secret_ref.name if model.credentials_secret_ref else None,
        "fetchers": adapter_fetchers(model),
        # The hf CLI asks PyPI for a newer version of itself at start: not from a pod.
        "fetch_env": [{"name": "HF_HUB_DISABLE_UPDATE_CHECK", "value": "1"}],
        "fetch_resources": FETCH_RESOURCES,
        "fetch_security": container_security(read_only_root=True),
        "pod_security": pod_security(),
        "container_security": container_security(),
        "port": VLLM_PORT,
        "startup_period": period,
        "startup_failures": -(-startup_timeout // period),
        "progress_deadline": startup_timeout + PULL_AND_SCHEDULE_SECONDS,
        "cache_pvc": (
            {
                "name": names.model_cache(stack_name, model.name),
                "size": model.cache.size,
                "storage_class": model.cache.storage_class_name,
                "access_mode": model.cache.access_mode,
            }
            if model.cache is not None and model.cache.existing_claim is None
            else None
        ),
    }


def render_model(
    stack: AIStack, model: ModelSpec, config: RenderConfig, *, permitted: bool
) -> list[Manifest]:
    ctx = _model_context(stack, model, config)
    # A model whose license is not permitted keeps its objects (and its weight cache)
    # scaled to zero, so that a policy change in either direction is cheap.
    ctx["permitted"] = permitted
    ctx["blocked_annotation"] = names.LICENSE_BLOCKED_ANNOTATION
    if _on_ollama(stack, model):
        return fill_template("model-ollama.yaml.j2", **(ctx | _ollama_context(stack, model)))
    ctx["env"] = _model_env(stack, model, config)
    if not model.spans_nodes:
        ctx["args"] = _vllm_args(stack, model, config)
        return fill_template("model.yaml.j2", **ctx)
    if lws_missing(config) is not None:
        # Without the LeaderWorkerSet API nothing of it can be made: the model's status
        # says what to install (``components.lws_missing``).
        return []
    return fill_template("model-lws.yaml.j2", **ctx, **_lws_context(stack, model, config))


def _lws_context(stack: AIStack, model: ModelSpec, config: RenderConfig) -> dict[str, Any]:
    """What the LeaderWorkerSet template needs beside a model's own context: the leader's
    and the workers' commands and ports for the group's backend."""
    stack_name = stack.metadata.name
    lws = names.model_lws(stack_name, model.name)
    serve = _vllm_args(stack, model, config)
    annotations: dict[str, str] = {}
    if model.multi_node is not None and model.multi_node.exclusive_topology:
        annotations[names.LWS_EXCLUSIVE_TOPOLOGY_ANNOTATION] = model.multi_node.exclusive_topology
    common = {
        "lws": lws,
        "backend": model.multinode_backend,
        "lws_name_label": names.LWS_NAME_LABEL,
        "group_key_label": names.LWS_GROUP_KEY_LABEL,
        "role_label": names.ROLE_LABEL,
        "lws_annotations": annotations,
    }
    if model.multinode_backend == "vllm":
        return common | {
            "commands": {"leader": ["vllm", "serve"], "worker": ["vllm", "serve"]},
            "args": {"leader": serve, "worker": [*serve, "--headless"]},
            "ports": {
                "leader": [("http", VLLM_PORT), ("dist", VLLM_MASTER_PORT)],
                "worker": [],
            },
        }
    shell = ["/bin/bash", "-c"]
    leader_script = (
        f"ray start --head --port={RAY_GCS_PORT} --dashboard-host=0.0.0.0 "
        f"--num-gpus={model.gpus} --disable-usage-stats\n"
        # vLLM places its pipeline stages only once every node has joined.
        f'until [ "$(python3 -c \'import ray; ray.init(address="auto", '
        f'logging_level="ERROR"); print(sum(1 for n in ray.nodes() if n["Alive"]))\')" '
        f"-ge {model.nodes} ]; do echo waiting for {model.nodes} Ray nodes; sleep 5; done\n"
        f"exec {shlex.join(['vllm', 'serve', *serve])}\n"
    )
    worker_script = (
        f'exec ray start --address="${LWS_LEADER_ADDRESS_ENV}:{RAY_GCS_PORT}" '
        f"--num-gpus={model.gpus} --dashboard-agent-listen-port={RAY_AGENT_PORT} "
        "--block --disable-usage-stats"
    )
    return common | {
        "commands": {"leader": shell, "worker": shell},
        "args": {"leader": [leader_script], "worker": [worker_script]},
        "ports": {
            "leader": [("http", VLLM_PORT), ("gcs", RAY_GCS_PORT)],
            # A Ray worker node listens on ports Ray picks, but for its dashboard agent's.
            "worker": [("agent", RAY_AGENT_PORT)],
        },
    }


#: Where Ollama keeps its models (its store: manifests and blobs), on the cache volume.
OLLAMA_STORE = "/cache/ollama"
#: The import container's server listens here only (nobody else may reach it).
OLLAMA_IMPORT_HOST = "127.0.0.1"
#: The init container that imports a model into Ollama's store: it starts a server on
#: loopback, waits for it, writes the Modelfile from the environment and creates the
#: model under its served name (the Ollama CLI is the server's client), within the startup
#: budget (else it fails, and the kubelet starts it again: a pull resumes where it stopped).
#: A Hugging Face source is pulled by the server (``FROM hf.co/...``) unless the store
#: already has it.
OLLAMA_IMPORT_SCRIPT = """\
set -eu
ollama serve &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
until ollama list >/dev/null 2>&1; do
  kill -0 "$server" 2>/dev/null || { echo "ollama serve exited" >&2; exit 1; }
  sleep 1
done
modelfile="${TMPDIR:-/tmp}/Modelfile"
printf '%s' "$AISTACK_MODELFILE" >"$modelfile"
timeout "$AISTACK_IMPORT_TIMEOUT" ollama create "$AISTACK_MODEL" -f "$modelfile"
"""


def ollama_from(model: ModelSpec) -> str:
    """What Ollama imports the model from (the Modelfile's ``FROM``): the GGUF file (or the
    directory) on its PVC, or the Hugging Face repo at ``hf.co``, by its quantization."""
    if model.source.startswith("pvc://"):
        return _model_path(model)
    tag = f":{model.quantization}" if model.quantization else ""
    return f"hf.co/{model.source}{tag}"


def ollama_modelfile(model: ModelSpec) -> str:
    """The Modelfile the model is created from: its weights and its context length."""
    lines = [f"FROM {ollama_from(model)}"]
    if model.max_model_len is not None:
        lines.append(f"PARAMETER num_ctx {model.max_model_len}")
    return "\n".join(lines) + "\n"


def _ollama_env(host: str) -> list[dict[str, Any]]:
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "OLLAMA_HOST", "value": f"{host}:{VLLM_PORT}"},
        {"name": "OLLAMA_MODELS", "value": OLLAMA_STORE},
        # A server per model: keep it loaded once the first request has loaded it.
        {"name": "OLLAMA_KEEP_ALIVE", "value": "-1"},
        # No model of ollama.com's cloud (where prompts would go), whatever a request names.
        {"name": "OLLAMA_NO_CLOUD", "value": "1"},
    ]


def _ollama_context(stack: AIStack, model: ModelSpec) -> dict[str, Any]:
    """What the Ollama template needs beside a model's own context."""
    import_env = [
        *_ollama_env(OLLAMA_IMPORT_HOST),
        {"name": "AISTACK_MODEL", "value": model.name},
        {"name": "AISTACK_MODELFILE", "value": ollama_modelfile(model)},
        {"name": "AISTACK_IMPORT_TIMEOUT", "value": str(stack.spec.ollama.startup_timeout_seconds)},
    ]
    # Without a cache PVC a new pod may start beside the old one; a claim (ReadWriteOnce)
    # may not be mounted on two nodes, so then the old one goes first.
    rollout = (
        {"maxSurge": 0, "maxUnavailable": 1}
        if model.cache
        else {"maxSurge": 1, "maxUnavailable": 0}
    )
    return {
        "env": _ollama_env("0.0.0.0"),
        "import_env": import_env,
        "import_command": ["/bin/sh", "-c", OLLAMA_IMPORT_SCRIPT],
        "rollout": rollout,
        "container_security": container_security(read_only_root=True),
    }


def with_permitted_adapters(model: ModelSpec, permitted: Mapping[str, bool]) -> ModelSpec:
    """The model with only its permitted adapters (the others are neither loaded nor
    routed), and its draft model only when that is permitted (else it serves without
    speculative decoding). Missing from ``permitted``: not permitted (fail closed)."""
    update: dict[str, Any] = {}
    kept = [a for a in model.adapters if permitted.get(a.name, False)]
    if len(kept) != len(model.adapters):
        update["adapters"] = kept
    draft = model.speculative
    has_weights = draft is not None and draft.source is not None
    if has_weights and not permitted.get(names.speculative_key(model.name), False):
        update["speculative"] = None
    return model.model_copy(update=update) if update else model


def served_models(stack: AIStack, permitted: Mapping[str, bool]) -> list[ModelSpec]:
    """Models that get servers and routes, each with its permitted adapters: permitted
    ones only. A model missing from ``permitted`` is treated as not permitted (fail
    closed)."""
    return [
        with_permitted_adapters(m, permitted)
        for m in stack.spec.models
        if permitted.get(m.name, False)
    ]


#: A model's fields that say what its pods load: judged again from the record while the
#: stack's spec cannot be read.
_LICENSED_FIELDS = {
    "name", "source", "revision", "quantization", "license", "adapters", "speculative",
}  # fmt: skip


def model_record(stack: AIStack, model: ModelSpec) -> dict[str, Any]:
    """What a model's Deployments run that the license decision judged: the model as
    served (its permitted adapters and draft) and the image it runs in when the stack
    names one (``names.LICENSED_ANNOTATION``)."""
    return {
        "model": model.model_dump(by_alias=True, exclude_none=True, include=_LICENSED_FIELDS),
        "image": stack.spec.image_of(model),
    }


#: The registry's part this module writes (``aistack.components``).
PART = "model-server"


def render_part(stack: AIStack, served: list[ModelSpec], config: RenderConfig) -> list[Manifest]:
    """Every model's server (``render.stack`` finds this function by ``PART``)."""
    by_name = {m.name: m for m in served}
    out: list[Manifest] = []
    for model in stack.spec.models:
        # A served model with its permitted adapters; a blocked one with none (it runs
        # no pod, and its adapters are blocked with it).
        shown = by_name.get(model.name) or model.model_copy(
            update={"adapters": [], "speculative": None}
        )
        rendered = render_model(stack, shown, config, permitted=model.name in by_name)
        out += annotate_licensed(rendered, model_record(stack, shown))
    return out
