"""The renderer proper: per part, compute a context, fill its template, parse the YAML."""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jinja2
import yaml

from aistack import names
from aistack.api.v1alpha1 import (
    AdapterSpec,
    AIStack,
    ModelSpec,
    NetworkPeer,
    ProviderSpec,
    RayWorkerGroup,
    ResourceRequirements,
    SecretKeyRef,
    Toleration,
    is_storage,
)
from aistack.components import (
    GATEWAY_PORT,
    MLFLOW_PORT,
    RAY_AGENT_PORT,
    RAY_CLIENT_PORT,
    RAY_DASHBOARD_PORT,
    RAY_GCS_PORT,
    RAY_METRICS_PORT,
    VLLM_PORT,
    RenderConfig,
    Scrape,
    gateway_exports_metrics,
    group_selector,
    mlflow_uri,
    model_url,
    namespace_of,
    svc_host,
)
from aistack.yamlio import dump_all

Manifest = dict[str, Any]

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
MODEL_MOUNT = "/mnt/models"
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
#: Time a model pod may take to be scheduled and pull its (large) image before its
#: startup budget starts counting.
PULL_AND_SCHEDULE_SECONDS = 900
# Non-root user of the rayproject/ray image; the others run fine under the same id.
RUN_AS_USER = 1000


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aistack.render", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


#: libyaml's loader when PyYAML was built with it (the wheels are): the same safe YAML,
#: about ten times faster than the pure-Python one, which took most of a reconcile's time.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _template(template_name: str, /, **context: Any) -> list[Manifest]:
    text = _environment().get_template(template_name).render(**context)
    return [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc]


# ---------------------------------------------------------------- helpers


def _resources(res: ResourceRequirements, gpus: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if res.requests:
        out["requests"] = dict(res.requests)
    limits = dict(res.limits)
    if gpus:
        limits[GPU_RESOURCE] = gpus
    if limits:
        out["limits"] = limits
    return out


def _tolerations(user: list[Toleration], gpu: bool) -> list[dict[str, Any]]:
    out = [GPU_TOLERATION] if gpu else []
    out += [t.model_dump(exclude_none=True) for t in user]
    return out


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security(read_only_root: bool = False) -> dict[str, Any]:
    """``read_only_root`` only where the conformance suite runs the program with a
    read-only root (MLflow, the adapters' init containers). vLLM compiles kernels, Ray
    writes session files and LiteLLM rewrites its UI files at start: their root
    filesystems stay writable; /tmp and caches are volumes anyway."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
    }


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    """An environment variable read from a Secret: secrets never appear in manifests."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- models


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


def _vllm_args(
    stack: AIStack, model: ModelSpec, config: RenderConfig, *, multi_node: bool
) -> list[str]:
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
    if multi_node:
        args += ["--distributed-executor-backend", "ray"]
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


def _model_env(
    stack: AIStack, model: ModelSpec, config: RenderConfig, *, multi_node: bool
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    if multi_node:
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
        env.append(_secret_env("HF_TOKEN", model.hf_token_secret_ref))
    return env


def _scratch_size(stack: AIStack, model: ModelSpec) -> int | str:
    return model.scratch_size if model.scratch_size is not None else stack.spec.vllm.scratch_size


def _model_resources(stack: AIStack, model: ModelSpec) -> dict[str, Any]:
    """CPU, memory and GPUs as the spec says, and the node disk of the pod's emptyDirs
    (``ephemeral-storage``), unless the spec requests a figure of its own."""
    out = _resources(model.resources or stack.spec.vllm.resources, gpus=model.gpus)
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
    volumes = [
        cache_volume,
        {"name": "tmp", "emptyDir": {"sizeLimit": scratch}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": stack.spec.vllm.shm_size}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "cache", "mountPath": "/cache"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
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
    period = 10
    return {
        "namespace": namespace_of(stack),
        "model": model,
        "base": names.model_base(stack_name, model.name),
        "labels": names.common_labels(stack_name, "model-server", "vllm", model=model.name),
        "selector": names.selector_labels(stack_name, "model-server", model=model.name),
        "image": model.image or stack.spec.vllm.image or config.images["vllm"],
        "resources": _model_resources(stack, model),
        "tolerations": _tolerations(model.tolerations, gpu=True),
        "node_selector": dict(model.node_selector),
        "volumes": volumes,
        "mounts": mounts,
        "credentials": model.credentials_secret_ref.name if model.credentials_secret_ref else None,
        "fetchers": adapter_fetchers(model),
        # The hf CLI asks PyPI for a newer version of itself at start: not from a pod.
        "fetch_env": [{"name": "HF_HUB_DISABLE_UPDATE_CHECK", "value": "1"}],
        "fetch_resources": FETCH_RESOURCES,
        "fetch_security": _container_security(read_only_root=True),
        "pod_security": _pod_security(),
        "container_security": _container_security(),
        "port": VLLM_PORT,
        "startup_period": period,
        "startup_failures": -(-stack.spec.vllm.startup_timeout_seconds // period),
        "progress_deadline": stack.spec.vllm.startup_timeout_seconds + PULL_AND_SCHEDULE_SECONDS,
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
    if not model.multi_node:
        ctx["args"] = _vllm_args(stack, model, config, multi_node=False)
        ctx["env"] = _model_env(stack, model, config, multi_node=False)
        return _template("model.yaml.j2", **ctx)

    stack_name = stack.metadata.name
    serve = shlex.join(["vllm", "serve", *_vllm_args(stack, model, config, multi_node=True)])
    groups = []
    for i in range(model.replicas):
        head = svc_host(names.model_group(stack_name, model.name, i), ctx["namespace"], config)
        leader_script = (
            f"ray start --head --port={RAY_GCS_PORT} --dashboard-host=0.0.0.0 "
            f"--num-gpus={model.gpus} --disable-usage-stats\n"
            # vLLM places its pipeline stages only once every node has joined.
            f'until [ "$(python3 -c \'import ray; ray.init(address="auto", '
            f'logging_level="ERROR"); print(sum(1 for n in ray.nodes() if n["Alive"]))\')" '
            f"-ge {model.nodes} ]; do echo waiting for {model.nodes} Ray nodes; sleep 5; done\n"
            f"exec {serve}\n"
        )
        worker_script = (
            f"exec ray start --address={head}:{RAY_GCS_PORT} --num-gpus={model.gpus} "
            f"--dashboard-agent-listen-port={RAY_AGENT_PORT} --block --disable-usage-stats"
        )
        groups.append(
            {
                "index": i,
                "service": names.model_group(stack_name, model.name, i),
                "leader": names.model_group_leader(stack_name, model.name, i),
                "workers": names.model_group_workers(stack_name, model.name, i),
                "group_selector": group_selector(stack_name, model, i),
                "leader_script": leader_script,
                "worker_script": worker_script,
            }
        )
    ctx["groups"] = groups
    ctx["env"] = _model_env(stack, model, config, multi_node=True)
    ctx["role_label"] = names.ROLE_LABEL
    ctx["group_label"] = names.GROUP_LABEL
    ctx["ray_port"] = RAY_GCS_PORT
    ctx["agent_port"] = RAY_AGENT_PORT
    return _template("model-multinode.yaml.j2", **ctx)


# ---------------------------------------------------------------- Ray


def render_ray(stack: AIStack, config: RenderConfig) -> list[Manifest]:
    stack_name = stack.metadata.name
    ray = stack.spec.ray
    head = names.ray_head(stack_name)
    env: list[dict[str, Any]] = [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}]
    if stack.spec.mlflow.enabled:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri(stack, config)})

    def worker(group: RayWorkerGroup) -> dict[str, Any]:
        return {
            "name": names.ray_worker(stack_name, group.name),
            "group": group,
            "labels": names.common_labels(stack_name, "ray-worker", "ray", ray_group=group.name),
            "selector": names.selector_labels(stack_name, "ray-worker", ray_group=group.name),
            "resources": _resources(group.resources, gpus=group.gpus),
            "tolerations": _tolerations(group.tolerations, gpu=group.gpus > 0),
            "node_selector": dict(group.node_selector),
            "args": [
                "start",
                f"--address={svc_host(head, namespace_of(stack), config)}:{RAY_GCS_PORT}",
                f"--num-gpus={group.gpus}",
                f"--dashboard-agent-listen-port={RAY_AGENT_PORT}",
                f"--metrics-export-port={RAY_METRICS_PORT}",
                "--block",
            ],
        }

    return _template(
        "ray.yaml.j2",
        namespace=namespace_of(stack),
        head=head,
        image=ray.image or config.images["ray"],
        head_labels=names.common_labels(stack_name, "ray-head", "ray"),
        head_selector=names.selector_labels(stack_name, "ray-head"),
        head_resources=_resources(ray.head.resources),
        head_args=[
            "start",
            "--head",
            f"--port={RAY_GCS_PORT}",
            "--dashboard-host=0.0.0.0",
            f"--dashboard-port={RAY_DASHBOARD_PORT}",
            f"--ray-client-server-port={RAY_CLIENT_PORT}",
            f"--metrics-export-port={RAY_METRICS_PORT}",
            "--num-gpus=0",
            "--block",
        ],
        workers=[worker(g) for g in ray.worker_groups],
        env=env,
        ports={
            "gcs": RAY_GCS_PORT,
            "dashboard": RAY_DASHBOARD_PORT,
            "client": RAY_CLIENT_PORT,
            "metrics": RAY_METRICS_PORT,
            "agent": RAY_AGENT_PORT,
        },
        pod_security=_pod_security(),
        container_security=_container_security(),
    )


# ---------------------------------------------------------------- MLflow


def mlflow_allowed_hosts(stack: AIStack, config: RenderConfig) -> list[str]:
    """The Host headers MLflow accepts (its DNS-rebinding protection).

    MLFLOW_SERVER_ALLOWED_HOSTS replaces MLflow's defaults (loopback names on any port,
    private IP ranges), and an entry matches exactly unless it holds ``*`` (then it is an
    fnmatch pattern, where ``*`` also spans dots). So the list names every in-cluster
    spelling of the Service, without a port and with the Service's port, and loopback on
    any port (``kubectl port-forward``); no pattern covers names below the Service's, such
    as ``<svc>.<ns>.attacker.example``. The user's ``allowedHosts`` come last.
    """
    service = names.mlflow(stack.metadata.name)
    namespace = namespace_of(stack)
    allowed: list[str] = []
    for host in (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{config.cluster_domain}",
    ):
        allowed += [host, f"{host}:{MLFLOW_PORT}"]
    for host in ("localhost", "127.0.0.1"):
        allowed += [host, f"{host}:*"]
    return allowed + list(stack.spec.mlflow.allowed_hosts)


def render_mlflow(stack: AIStack, config: RenderConfig) -> list[Manifest]:
    stack_name = stack.metadata.name
    namespace = namespace_of(stack)
    mlflow = stack.spec.mlflow
    service = names.mlflow(stack_name)
    env: list[dict[str, Any]] = []
    if mlflow.backend_store is not None:
        env.append(_secret_env("MLFLOW_BACKEND_STORE_URI", mlflow.backend_store.uri_secret_ref))
        backend = "$(MLFLOW_BACKEND_STORE_URI)"
    else:
        backend = "sqlite:////mlflow/mlflow.db"
    if mlflow.artifact_store is not None:
        destination = mlflow.artifact_store.destination_secret_ref
        env.append(_secret_env("MLFLOW_ARTIFACTS_DESTINATION", destination))
        artifacts = "$(MLFLOW_ARTIFACTS_DESTINATION)"
        creds = mlflow.artifact_store.credentials_secret_ref
    else:
        artifacts = "/mlflow/artifacts"
        creds = None
    env.append(
        {
            "name": "MLFLOW_SERVER_ALLOWED_HOSTS",
            "value": ",".join(mlflow_allowed_hosts(stack, config)),
        }
    )
    env.append({"name": "HOME", "value": "/tmp"})
    return _template(
        "mlflow.yaml.j2",
        namespace=namespace,
        name=service,
        mlflow=mlflow,
        image=mlflow.image or config.images["mlflow"],
        labels=names.common_labels(stack_name, "tracking", "mlflow"),
        selector=names.selector_labels(stack_name, "tracking"),
        pvc=names.mlflow_data(stack_name) if mlflow.needs_pvc else None,
        retain_annotation=names.RETAIN_ANNOTATION,
        args=[
            "server",
            "--host",
            "0.0.0.0",
            "--port",
            str(MLFLOW_PORT),
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            artifacts,
            "--serve-artifacts",
        ],
        env=env,
        credentials=creds.name if creds else None,
        resources=_resources(mlflow.resources),
        port=MLFLOW_PORT,
        pod_security=_pod_security(),
        container_security=_container_security(read_only_root=True),
    )


# ---------------------------------------------------------------- gateway


#: Added to a route's rpm in LiteLLM's config (see ``gateway_config``).
LITELLM_RPM_OFFSET = 1
#: LiteLLM's model prefix per provider id (openai-compatible: OpenAI's client at apiBase).
PROVIDER_PREFIX = {
    "openai": "openai", "anthropic": "anthropic", "gemini": "gemini", "azure": "azure",
    "bedrock": "bedrock", "mistral": "mistral", "openai-compatible": "openai",
}  # fmt: skip


def provider_key_env(provider: ProviderSpec) -> str:
    """The gateway's environment variable holding a provider route's API key."""
    return f"AISTACK_PROVIDER_{provider.name.upper().replace('-', '_')}_KEY"


def _provider_params(provider: ProviderSpec) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": f"{PROVIDER_PREFIX[provider.provider]}/{provider.model}",
        # LiteLLM reads the key from the environment when the config says so: the key
        # itself is never in the ConfigMap.
        "api_key": f"os.environ/{provider_key_env(provider)}",
    }
    if provider.api_base is not None:
        params["api_base"] = provider.api_base
    if provider.region is not None:
        params["aws_region_name"] = provider.region
    return params


def with_permitted_providers(stack: AIStack, permitted: Mapping[str, bool]) -> AIStack:
    """The stack with only the hosted providers the policies permit (missing from
    ``permitted``: not permitted): the others get no route and their keys stay out of
    the gateway."""
    gateway = stack.spec.gateway
    kept = [p for p in gateway.providers if permitted.get(p.name, False)]
    if len(kept) == len(gateway.providers):
        return stack
    spec = stack.spec.model_copy(update={"gateway": gateway.model_copy(update={"providers": kept})})
    return stack.model_copy(update={"spec": spec})


def gateway_config(stack: AIStack, served: list[ModelSpec], config: RenderConfig) -> dict[str, Any]:
    """LiteLLM proxy configuration: one route per permitted, deployed model, and one per
    permitted adapter of it, to the same server (vLLM serves an adapter under its name),
    and one per permitted hosted provider; then fallbacks and limits between them."""
    model_list: list[dict[str, Any]] = [
        {
            "model_name": name,
            "litellm_params": {
                "model": f"hosted_vllm/{name}",
                "api_base": model_url(stack, m, config),
            },
        }
        for m in served
        for name in [m.name, *(a.name for a in m.adapters)]
    ]
    gateway = stack.spec.gateway
    model_list += [
        {"model_name": p.name, "litellm_params": _provider_params(p)} for p in gateway.providers
    ]
    routed = {r["model_name"] for r in model_list}
    for limit in gateway.limits:
        for route in model_list:
            if route["model_name"] == limit.route:
                if limit.rpm is not None:
                    # LiteLLM 1.110.2 admits a route only while its count in the minute
                    # + 1 < rpm (BerriAI/litellm#33032): rendered one higher, the route
                    # gets exactly the requests the spec allows (conformance-tested).
                    route["litellm_params"]["rpm"] = limit.rpm + LITELLM_RPM_OFFSET
                if limit.tpm is not None:
                    route["litellm_params"]["tpm"] = limit.tpm
    cfg: dict[str, Any] = {"model_list": model_list}
    router: dict[str, Any] = {}
    # Fallbacks between the routes there are (a blocked route is neither a source nor a
    # target).
    fallbacks = [
        {f.model: [t for t in f.to if t in routed]}
        for f in gateway.fallbacks
        if f.model in routed and any(t in routed for t in f.to)
    ]
    if fallbacks:
        router["fallbacks"] = fallbacks
    if any(limit.route in routed for limit in gateway.limits):
        # The strategy that enforces each route's rpm/tpm (in the replica's memory, with no
        # database). Over the limit it raises a rate-limit error with `retry-after: 60`,
        # which the router would retry after that wait (the request held a minute, then
        # served): not retried, the request takes its fallback, or is answered 429.
        router["routing_strategy"] = "usage-based-routing-v2"
        router["retry_policy"] = {"RateLimitErrorRetries": 0}
    if router:
        cfg["router_settings"] = router
    callbacks: list[str] = []
    if stack.spec.mlflow.enabled:
        # Request traces go to MLflow's OTLP endpoint (env set in _render_gateway). The
        # image has no `mlflow` package: LiteLLM's own `mlflow` callback cannot load there,
        # and from 1.110 an unloadable callback stops the proxy at startup.
        callbacks.append("otel")
    if gateway_exports_metrics(stack):
        # LiteLLM's Prometheus logger (open source): /metrics on the gateway's port, in the
        # proxy's own process. Not its separate metrics process (--prometheus_metrics_port):
        # with one worker, LiteLLM 1.110.2 sets up the samples directory after
        # prometheus_client has loaded, and that process serves no sample (conformance).
        callbacks.append("prometheus")
    if callbacks:
        cfg["litellm_settings"] = {"callbacks": callbacks}
    if stack.spec.gateway.auth_secret_ref is not None:
        cfg["general_settings"] = {"master_key": "os.environ/LITELLM_MASTER_KEY"}
    else:
        # No key asked for: an open gateway, reachable only as the NetworkPolicies allow.
        # LiteLLM (from 1.110) refuses to start without a master key unless told so.
        cfg["general_settings"] = {"dangerously_permit_weak_or_unset_master_key": True}
    return cfg


def render_gateway(stack: AIStack, served: list[ModelSpec], config: RenderConfig) -> list[Manifest]:
    stack_name = stack.metadata.name
    gateway = stack.spec.gateway
    config_text = yaml.safe_dump(gateway_config(stack, served, config), sort_keys=False)
    env: list[dict[str, Any]] = []
    if gateway.auth_secret_ref is not None:
        env.append(_secret_env("LITELLM_MASTER_KEY", gateway.auth_secret_ref))
    env += [_secret_env(provider_key_env(p), p.credentials_secret_ref) for p in gateway.providers]
    if stack.spec.mlflow.enabled:
        # LiteLLM's `otel` callback: OTLP over HTTP to MLflow's trace endpoint, into the
        # experiment named by id (MLflow's OTLP endpoint takes an id, not a name).
        env += [
            {"name": "OTEL_EXPORTER", "value": "otlp_http"},
            {"name": "OTEL_ENDPOINT", "value": f"{mlflow_uri(stack, config)}/v1/traces"},
            {
                "name": "OTEL_HEADERS",
                "value": f"x-mlflow-experiment-id={config.mlflow_trace_experiment_id}",
            },
        ]
    env.append({"name": "HOME", "value": "/tmp"})
    return _template(
        "gateway.yaml.j2",
        namespace=namespace_of(stack),
        name=names.gateway(stack_name),
        config_name=names.gateway_config(stack_name),
        gateway=gateway,
        image=gateway.image or config.images["gateway"],
        labels=names.common_labels(stack_name, "gateway", "litellm"),
        selector=names.selector_labels(stack_name, "gateway"),
        config_text=config_text,
        checksum_annotation=names.CONFIG_CHECKSUM_ANNOTATION,
        checksum=_checksum(config_text),
        env=env,
        resources=_resources(gateway.resources),
        port=GATEWAY_PORT,
        pod_security=_pod_security(),
        container_security=_container_security(),
    )


# ---------------------------------------------------------------- network isolation


def _peers(peers: list[NetworkPeer]) -> list[dict[str, Any]]:
    return [p.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True) for p in peers]


@dataclass(frozen=True)
class Ingress:
    """One NetworkPolicy of a stack: the pods it selects and who may connect to them.

    ``sources`` are pod selectors of the stack's own parts, admitted on ``port`` (every
    port when None); with ``public``, anyone may connect to ``port`` (or, when
    ``spec.network.gatewayFrom`` is set, those peers and the stack's own pods).
    ``spec.network.allowFrom`` is admitted on every port by every policy."""

    name: str
    selector: dict[str, str]
    sources: list[dict[str, str]]
    port: int | None = None
    public: bool = False
    #: The port Prometheus scrapes (``spec.monitoring.scrapeFrom`` is admitted to it).
    metrics_port: int | None = None


def _ingress_rules(stack: AIStack, ingress: Ingress) -> list[dict[str, Any]]:
    scrape = _peers(stack.spec.monitoring.scrape_from)
    scrape_rule = (
        [{"ports": [{"port": ingress.metrics_port, "protocol": "TCP"}], "from": scrape}]
        if scrape and ingress.metrics_port is not None
        else []
    )
    return _part_rules(stack, ingress) + scrape_rule


def _part_rules(stack: AIStack, ingress: Ingress) -> list[dict[str, Any]]:
    network = stack.spec.network
    allow_from = _peers(network.allow_from)
    ports = [{"port": ingress.port, "protocol": "TCP"}] if ingress.port is not None else None
    if ingress.public and ports:
        rule: dict[str, Any] = {"ports": ports}
        if network.gateway_from:
            own_pods = {"podSelector": {"matchLabels": {names.STACK_LABEL: stack.metadata.name}}}
            rule["from"] = [own_pods, *allow_from, *_peers(network.gateway_from)]
        return [rule]
    sources = [{"podSelector": {"matchLabels": s}} for s in ingress.sources]
    # No rule at all admits nothing; a rule with an empty `from` would admit everyone.
    if ports is None:
        return [{"from": sources + allow_from}] if sources or allow_from else []
    rules = [{"ports": ports, "from": sources}] if sources else []
    return rules + ([{"from": allow_from}] if allow_from else [])


def render_network(stack: AIStack, policies: list[Ingress]) -> list[Manifest]:
    """The stack's NetworkPolicies (ingress only), one per entry of ``policies`` (the
    components say who may reach them; see ``components.network``)."""
    stack_name = stack.metadata.name
    return _template(
        "network.yaml.j2",
        namespace=namespace_of(stack),
        labels=names.common_labels(stack_name, "network", "aistack"),
        policies=[
            {"name": p.name, "selector": p.selector, "ingress": _ingress_rules(stack, p)}
            for p in policies
        ],
    )


# ---------------------------------------------------------------- disruption budgets


def render_disruption_budgets(stack: AIStack, manifests: list[Manifest]) -> list[Manifest]:
    """A PodDisruptionBudget (``maxUnavailable: 1``) for every Deployment of ``manifests``
    with more than one replica, named after it."""
    deployments = [
        {
            "name": d["metadata"]["name"],
            "labels": d["metadata"]["labels"],
            "selector": d["spec"]["selector"]["matchLabels"],
        }
        for d in manifests
        if d["kind"] == "Deployment" and d["spec"]["replicas"] > 1
    ]
    if not deployments:
        return []
    return _template("disruption.yaml.j2", namespace=namespace_of(stack), deployments=deployments)


# ---------------------------------------------------------------- entry points


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


# ---------------------------------------------------------------- what runs, on record


#: A model's fields that say what its pods load: judged again from the record while the
#: stack's spec cannot be read.
_LICENSED_FIELDS = {"name", "source", "revision", "license", "adapters", "speculative"}


def model_record(stack: AIStack, model: ModelSpec) -> dict[str, Any]:
    """What a model's Deployments run that the license decision judged: the model as
    served (its permitted adapters and draft) and the image it runs in when the stack
    names one (``names.LICENSED_ANNOTATION``)."""
    return {
        "model": model.model_dump(by_alias=True, exclude_none=True, include=_LICENSED_FIELDS),
        "image": model.image or stack.spec.vllm.image,
    }


def part_record(image: str | None, providers: Sequence[ProviderSpec] = ()) -> dict[str, Any]:
    """What another part's Deployments run that was judged: the image the stack names for
    it; for the gateway, also the hosted providers it sends prompts to (the permitted
    ones)."""
    record: dict[str, Any] = {"image": image}
    if providers:
        record["providers"] = [p.model_dump(by_alias=True, exclude_none=True) for p in providers]
    return record


def annotate_licensed(manifests: list[Manifest], record: Mapping[str, Any]) -> list[Manifest]:
    """Put ``record`` on every Deployment of ``manifests`` (on the Deployment, not its pods:
    a change of it rolls nothing)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    for manifest in manifests:
        if manifest["kind"] == "Deployment":
            manifest["metadata"].setdefault("annotations", {})[names.LICENSED_ANNOTATION] = text
    return manifests


def block(manifests: list[Manifest]) -> list[Manifest]:
    """A part that may not run: every Deployment of it at zero replicas, marked (its other
    objects stay, so that a policy change back is cheap)."""
    for manifest in manifests:
        if manifest["kind"] == "Deployment":
            manifest["spec"]["replicas"] = 0
            annotations = manifest["metadata"].setdefault("annotations", {})
            annotations[names.LICENSE_BLOCKED_ANNOTATION] = "true"
    return manifests


def render_yaml(manifests: list[Manifest]) -> str:
    """Multi-document YAML, like ``helm template``."""
    return dump_all(manifests)


# ---------------------------------------------------------------- monitoring


def render_monitors(
    stack: AIStack, monitors: list[tuple[str, dict[str, str], Scrape]]
) -> list[Manifest]:
    """A Prometheus Operator PodMonitor per part: its name (the part's), the labels of its
    pods and where they serve metrics. Targets carry the stack's label."""
    stack_name = stack.metadata.name
    monitoring = stack.spec.monitoring
    return _template(
        "monitoring.yaml.j2",
        namespace=namespace_of(stack),
        labels={
            **dict(monitoring.labels),
            **names.common_labels(stack_name, "monitoring", "aistack"),
        },
        interval=monitoring.interval,
        target_labels=[names.STACK_LABEL],
        monitors=[
            {"name": names.part(stack_name, part), "selector": selector, "scrape": scrape}
            for part, selector, scrape in monitors
        ],
    )
