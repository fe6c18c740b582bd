"""Cross-field rules of the API, shared by the CRD's CEL rules and the pydantic validators.

The messages say what is wrong and what to do; the API server returns them verbatim to
``kubectl apply``, and ``aistack render`` prints them with the field path.
"""

from __future__ import annotations

from collections.abc import Sequence

from aistack import names

UNIQUE_MODELS = "model names must be unique within the stack"
UNIQUE_ADAPTER_NAMES = (
    "adapter names must be unique across every model and adapter of the stack, and differ "
    "from every model name: clients call an adapter by its name, as they call a model"
)
UNIQUE_ROUTES = (
    "route names must be unique across every model, adapter and provider of the stack: "
    "clients call each by its name"
)
PROVIDER_API_BASE = (
    "provider openai-compatible and azure need apiBase (the endpoint of the API or of the "
    "Azure resource)"
)
PROVIDER_REGION = "provider bedrock needs region (the AWS region of the Bedrock endpoint)"
PROVIDER_FIXED_ENDPOINT = (
    "apiBase is only for openai-compatible and azure: openai, anthropic, gemini, mistral and "
    "bedrock always send prompts to their provider's own endpoint (a LicensePolicy allows "
    "them by name); for another endpoint use provider openai-compatible, which a policy "
    "permits per host (providers.hosts)"
)
PROVIDERS_NEED_AUTH = (
    "a gateway with hosted providers needs authSecretRef: without a master key anyone who "
    "reaches the gateway would spend the providers' keys"
)
SOURCE_PATH = (
    "a pvc:// path or s3:// prefix is names separated by '/', each of letters, digits and "
    "_ . + @ ~ - (none empty, '.' or '..'); no spaces, control characters, '=' or quotes: "
    "the path reaches vLLM's arguments and the pods' mounts as it is"
)
REVISION_FOR_HUB = (
    "revision pins a commit of a Hugging Face repo: a pvc:// or s3:// source has none (its "
    "path is what is loaded; point it at the exact directory or prefix)"
)
SPECULATIVE_SOURCE = (
    "speculative.source is needed for methods draft_model, eagle and eagle3 (the draft's "
    "weights), and refused for ngram and mtp (they load no weights of their own)"
)
#: Most speculative tokens with LoRA adapters (vLLM 0.34.0, ``create_engine_config``:
#: with LoRA it needs max_num_batched_tokens >= max_num_seqs * (n + 1), and its defaults on
#: GPUs, 2048/256 and 8192/1024, hold that up to n = 7).
MAX_SPECULATIVE_TOKENS_WITH_LORA = 7
SPECULATIVE_WITH_LORA = (
    f"speculative.numSpeculativeTokens may be at most {MAX_SPECULATIVE_TOKENS_WITH_LORA} on a "
    "model with adapters: with LoRA, vLLM refuses to start unless max-num-batched-tokens is at "
    "least max-num-seqs times (tokens + 1), which its defaults hold up to "
    f"{MAX_SPECULATIVE_TOKENS_WITH_LORA} tokens"
)
SPECULATIVE_S3 = (
    "speculative.source may be a Hugging Face repo id or pvc://: vLLM does not stream a "
    "draft model from S3"
)
PVC_EXCEPTION_NAMESPACE = (
    "an exception for a pvc:// source needs namespace: a claim is named per namespace, and a "
    "LicensePolicy applies to every namespace"
)
UNKNOWN_ROUTE = (
    "gateway fallbacks and limits may name only routes of the stack (a model, an adapter or "
    "a provider)"
)
FALLBACK_TO_ITSELF = "a gateway fallback may not fall back to its own route"
#: Most adapters one model may serve.
MAX_ADAPTERS = 16
UNIQUE_WORKER_GROUPS = "Ray worker group names must be unique within the stack"
TP_DIVIDES_GPUS = (
    "tensorParallelSize must divide gpus (GPUs per node): the GPUs of a node form "
    "tensor-parallel groups and the groups become pipeline stages"
)
MULTINODE_REPLICAS = (
    f"a multi-node model (nodes > 1) may have at most {names.MAX_REPLICAS} replicas"
)
MULTINODE_IMAGE = (
    "a multi-node model on the Ray backend (nodes > 1, multiNode.backend: ray) needs an "
    "image with Ray: set models[].image or spec.vllm.image. The vllm/vllm-openai image has "
    "no Ray (an optional dependency of vLLM); images/vllm-ray/Dockerfile in the operator's "
    "repository builds one. The default backend (multiNode.backend: vllm) needs no Ray"
)
MULTINODE_ONLY = (
    "multiNode applies only to a model served across nodes: set nodes above 1, or remove multiNode"
)
ENGINE_OLLAMA_GPUS = (
    "a model on engine ollama runs on the CPUs of one pod: gpus (above 1), nodes (above 1), "
    "multiNode, tensorParallelSize and gpuMemoryUtilization are vLLM's; remove them (size the "
    "model with resources) or use engine vllm"
)
ENGINE_OLLAMA_LORA = (
    "a model on engine ollama serves no LoRA adapters and no speculative decoding (vLLM's): "
    "remove adapters and speculative, or use engine vllm"
)
ENGINE_OLLAMA_ARGS = (
    "extraArgs are arguments of vllm serve: Ollama's server takes none (the operator "
    "configures it); remove extraArgs from a model on engine ollama, or use engine vllm"
)
ENGINE_OLLAMA_AUTOSCALING = (
    "autoscaling reads vLLM's queue metrics, which Ollama does not export: a model on engine "
    "ollama runs at its replicas (remove autoscaling, or use engine vllm)"
)
ENGINE_OLLAMA_SOURCE = (
    "engine ollama loads a GGUF file (or a directory Ollama can import) from a PVC "
    "(pvc://<claim>/<path>), or pulls a public Hugging Face GGUF repo (org/name, with "
    "quantization) at its default branch: s3:// sources, revision and hfTokenSecretRef are not "
    "supported with it (put the file on a PVC instead)"
)
QUANTIZATION_FOR_OLLAMA_HUB = (
    "quantization picks the GGUF file that engine ollama pulls from a Hugging Face repo: it "
    "needs engine ollama and a Hugging Face source (a pvc:// source names its file)"
)
AUTOSCALING_RANGE = "autoscaling.minReplicas may not exceed autoscaling.maxReplicas"
AUTOSCALING_MULTINODE = (
    "autoscaling applies to models on one node: a multi-node model (nodes > 1) scales by "
    "whole LeaderWorkerSet groups, which KEDA cannot yet drive; set replicas (the number of "
    "groups) instead, or remove autoscaling"
)
AUTOSCALING_METRICS = (
    "autoscaling reads the models' metrics from Prometheus, which scrapes them through the "
    "stack's PodMonitors: it needs monitoring.enabled true or unset (not false)"
)
AUTOSCALING_WAKE = (
    "a model that may sleep (autoscaling.minReplicas: 0) is woken by the requests the "
    "gateway holds for it, which Prometheus reads from the gateway's metrics: it needs "
    "gateway.enabled, and a gateway without authSecretRef (a gateway with a key is not "
    "scraped); keep minReplicas at 1 or more otherwise"
)
NETWORK_PEER = (
    "a network peer needs either ipBlock or podSelector/namespaceSelector (not both): "
    "NetworkPolicy peers are one or the other"
)
CACHE_SIZE_OR_CLAIM = "cache needs exactly one of size (a new PVC) or existingClaim"
MLFLOW_REPLICAS = (
    "mlflow.replicas > 1 needs both backendStore and artifactStore: SQLite and artifacts on "
    "one ReadWriteOnce volume cannot be shared by several servers"
)
STACK_NAME = (
    f"the AIStack name must be a DNS-1035 label (lowercase letters, digits and '-', starting "
    f"with a letter) of at most {names.STACK_NAME_MAX} characters, because the operator "
    f"derives Service names from it"
)
MODEL_NAME_LENGTH = (
    f"the AIStack name and each model name together may have at most "
    f"{names.MODEL_NAME_BUDGET} characters, so that derived names such as "
    f"<stack>-vllm-<model>-g0-leader stay valid DNS labels; shorten either"
)
WORKER_GROUP_NAME_LENGTH = (
    f"the AIStack name and each Ray worker group name together may have at most "
    f"{names.RAY_GROUP_BUDGET} characters, so that <stack>-ray-worker-<group> stays a valid "
    f"DNS label; shorten either"
)

MODEL_NAME_CLASH = (
    "a model name must not be another model's name followed by -g<N>, -g<N>-leader or "
    "-g<N>-worker: a multi-node model's objects are named that way, and the two would "
    "collide; rename the model"
)
#: The part of a clashing name after "<other model>-g".
_CLASH_TAIL = "^[0-9]+(-leader|-worker)?$"

# CEL rules at the root of the AIStack schema (only there can CEL see metadata.name).
ROOT_CEL_RULES: list[tuple[str, str]] = [
    (
        f"size(self.metadata.name) <= {names.STACK_NAME_MAX} && "
        f"self.metadata.name.matches('{names.DNS_1035_PATTERN}')",
        STACK_NAME,
    ),
    (
        "!has(self.spec.models) || self.spec.models.all(m, "
        f"size(self.metadata.name) + size(m.name) <= {names.MODEL_NAME_BUDGET})",
        MODEL_NAME_LENGTH,
    ),
    (
        "!has(self.spec.ray) || !has(self.spec.ray.workerGroups) || "
        "self.spec.ray.workerGroups.all(g, "
        f"size(self.metadata.name) + size(g.name) <= {names.RAY_GROUP_BUDGET})",
        WORKER_GROUP_NAME_LENGTH,
    ),
    (
        "!has(self.spec.models) || self.spec.models.all(a, self.spec.models.all(b, "
        "!b.name.startsWith(a.name + '-g') || "
        f"!b.name.substring(size(a.name) + 2).matches('{_CLASH_TAIL}')))",
        MODEL_NAME_CLASH,
    ),
]


def stack_name_errors(
    stack: str, model_names: Sequence[str], worker_groups: Sequence[str]
) -> list[str]:
    """The root rules above, in Python."""
    import re

    errors: list[str] = []
    if len(stack) > names.STACK_NAME_MAX or not re.match(names.DNS_1035_PATTERN, stack):
        errors.append(f"{STACK_NAME} (got {stack!r})")
    for parts, budget, rule in (
        (model_names, names.MODEL_NAME_BUDGET, MODEL_NAME_LENGTH),
        (worker_groups, names.RAY_GROUP_BUDGET, WORKER_GROUP_NAME_LENGTH),
    ):
        if too_long := [p for p in parts if len(stack) + len(p) > budget]:
            errors.append(f"{rule} (too long: {', '.join(too_long)})")
    clashes = sorted(
        b
        for a in model_names
        for b in model_names
        if b.startswith(a + "-g") and re.match(_CLASH_TAIL, b[len(a) + 2 :])
    )
    if clashes:
        errors.append(f"{MODEL_NAME_CLASH} (got {', '.join(clashes)})")
    return errors
