"""aistack.dev/v1alpha1: AIStack and LicensePolicy.

These pydantic models are the API. The CRDs in ``crds/`` are generated from them
(``aistack crds``), so field docstrings become the schema descriptions users read in
``kubectl explain``. Cross-field rules exist twice, on purpose: as CEL rules in the CRD
(what ``kubectl apply`` users hit first) and as validators here (what ``aistack render``
and the operator hit); both use the messages from :mod:`aistack.api.rules`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from aistack import names, vllm_flags
from aistack.api import rules

GROUP = names.GROUP
VERSION = "v1alpha1"
API_VERSION: Final = "aistack.dev/v1alpha1"
#: What the API server allows all annotations of an object together.
ANNOTATIONS_MAX_BYTES = 256 * 1024

# Non-negative: no resource, size or limit of a stack can be below zero.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[
    int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
# A model source: a Hugging Face repo id, a path on a PVC, or an S3 prefix (its shape).
SOURCE_SHAPE = (
    r"^(([A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[\s\S]*)?"
    r"|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[\s\S]*)?)$"
)
# One directory or file name of a pvc:// path or an s3:// prefix: letters, digits and
# ``_ . + @ ~ -``, never ``.`` or ``..`` alone. No control characters (NUL cannot pass
# execve), no ``=`` (``--lora-modules name=path``), no spaces, quotes, commas or colons: a
# path reaches vLLM's argv, init containers and mounts as it is.
_PATH_CHARS = r"[A-Za-z0-9_+@~-]"
PATH_SEGMENT = (
    rf"(?:{_PATH_CHARS}[A-Za-z0-9_.+@~-]*|\.{_PATH_CHARS}[A-Za-z0-9_.+@~-]*"
    r"|\.\.[A-Za-z0-9_.+@~-]+)"
)
_PATH = rf"(/{PATH_SEGMENT})*/?"
#: A source whose path (if it has one) holds only such names.
SOURCE_PATTERN = (
    r"^(([A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*"
    rf"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?{_PATH}"
    rf"|s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9]{_PATH})$"
)
SOURCE_RE = re.compile(SOURCE_PATTERN)


# A container image reference: [registry[:port]/]path[:tag][@sha256:digest] (the grammar of
# the distribution project, without upper-case repository paths).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REPOSITORY = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    rf"(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
)
IMAGE_PATTERN = (
    rf"^{_IMAGE_REPOSITORY}"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
Image = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=IMAGE_PATTERN)]
#: What a LicensePolicy's ``images.allow`` lists: an image reference (a repository, any
#: tag or digest; or with a tag or digest, exactly that), or a repository prefix ending in
#: ``/*`` (every repository below it).
ImagePattern = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=512, pattern=rf"{IMAGE_PATTERN}|^{_IMAGE_REPOSITORY}/\*$"
    ),
]
#: A license: an SPDX id or expression, a ``LicenseRef-``, or a Hugging Face license name.
LicenseText = Annotated[
    str, StringConstraints(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9.+:()_ -]+$")
]
#: Node labels a part's pods require (label values are at most 63 characters).
NodeSelector = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=317)],
        Annotated[str, StringConstraints(max_length=63)],
    ],
    Field(max_length=32),
]


def _extra_arg(item: str) -> str:
    if (problem := vllm_flags.item_problem(item)) is not None:
        raise ValueError(problem)
    return item


def _starts_with_a_flag(args: list[str]) -> list[str]:
    if vllm_flags.starts_with_value(args):
        raise ValueError(vllm_flags.FIRST_ITEM_IS_A_VALUE)
    return args


#: Extra ``vllm serve`` arguments: passed as argv (never through a shell), bounded in size.
#: A flag that names weights, code or files to load, or that the operator sets from a field,
#: is refused (``aistack.vllm_flags``: every flag of the default vLLM, classified).
ExtraArgs = Annotated[
    list[Annotated[str, StringConstraints(max_length=4096), AfterValidator(_extra_arg)]],
    Field(max_length=64),
    AfterValidator(_starts_with_a_flag),
]
#: A Host header MLflow accepts: a host name or address, optionally ``:port`` or ``:*``,
#: ``*`` wildcards allowed.
HostPattern = Annotated[
    str, StringConstraints(min_length=1, max_length=261, pattern=r"^[A-Za-z0-9*.\[\]:-]+$")
]


#: CEL: a revision only with a Hugging Face source.
_REVISION_RULE = (
    "!has(self.revision) || (has(self.source) && !self.source.startsWith('pvc://') "
    "&& !self.source.startsWith('s3://'))",
    rules.REVISION_FOR_HUB,
)


def is_storage(source: str) -> bool:
    """Whether a source is a path on a PVC or an S3 prefix (not a Hugging Face repo)."""
    return source.startswith(("pvc://", "s3://"))


def _check_revision(source: str | None, revision: str | None) -> None:
    if revision is not None and (source is None or is_storage(source)):
        raise ValueError(rules.REVISION_FOR_HUB)


class APIModel(BaseModel):
    """Base of every API object: camelCase on the wire, immutable, unknown fields refused,
    types as strict as the API server's schema (``"on"`` is no boolean, ``"2"`` no integer)."""

    model_config = ConfigDict(
        strict=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


def _crd_rules(*items: tuple[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in items]}


def _source_path(source: str) -> str:
    if not SOURCE_RE.fullmatch(source):
        raise ValueError(f"{rules.SOURCE_PATH} (got {source!r})")
    return source


#: A weight source (see ``SOURCE_SHAPE``), its path held to ``SOURCE_PATTERN`` (a CEL rule
#: for the API server, with a message rather than the pattern).
Source = Annotated[
    str,
    StringConstraints(pattern=SOURCE_SHAPE, max_length=512),
    AfterValidator(_source_path),
    Field(json_schema_extra=_crd_rules((f"self.matches(r'{SOURCE_PATTERN}')", rules.SOURCE_PATH))),
]


# ---------------------------------------------------------------- shared building blocks


class SecretKeyRef(APIModel):
    """A key of a Secret in the stack's namespace."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """Name of the Secret."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """Key in the Secret whose value is used."""


class SecretRef(APIModel):
    """A whole Secret in the stack's namespace; each key becomes an environment variable."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """Name of the Secret."""


class Toleration(APIModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = None
    """Taint key the toleration applies to; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value; Equal matches ``value``."""
    value: str | None = None
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated before eviction."""


class ResourceRequirements(APIModel):
    """CPU and memory for a container (core/v1 ResourceRequirements)."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    """Minimum resources, e.g. ``{cpu: "2", memory: 8Gi}``."""
    limits: dict[str, Quantity] = Field(default_factory=dict)
    """Maximum resources, e.g. ``{memory: 16Gi}``. GPU limits are set from ``gpus``."""


# ---------------------------------------------------------------- models (vLLM)


class WeightCache(APIModel):
    """A PersistentVolumeClaim that keeps downloaded weights across pod restarts."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            (
                "has(self.size) != has(self.existingClaim)",
                rules.CACHE_SIZE_OR_CLAIM,
            )
        )
    )

    size: Quantity | None = None
    """Size of a PVC the operator creates (``<stack>-vllm-<model>-cache``)."""
    existing_claim: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Use this existing PVC instead of creating one."""
    storage_class_name: str | None = None
    """StorageClass of the created PVC; the cluster default when empty."""
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = "ReadWriteOnce"
    """Access mode of the created PVC. Use ReadWriteMany when replicas > 1 span nodes."""

    @model_validator(mode="after")
    def _size_or_claim(self) -> WeightCache:
        if (self.size is None) == (self.existing_claim is None):
            raise ValueError(rules.CACHE_SIZE_OR_CLAIM)
        return self


#: The LoRA ranks vLLM can serve (``--max-lora-rank``).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
Revision = Annotated[
    str, StringConstraints(max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
]
#: The programs that serve models (``aistack.components.ENGINES`` describes each).
ENGINE_NAMES: Final = ("vllm", "ollama")
Engine = Literal["vllm", "ollama"]


class AdapterSpec(APIModel):
    """A LoRA adapter served on top of its model, under a name of its own. Its license is
    checked like a model's, and it is served only when both its license and its base
    model's are permitted."""

    model_config = ConfigDict(json_schema_extra=_crd_rules(_REVISION_RULE))

    name: Annotated[str, StringConstraints(pattern=names.DNS_1035_PATTERN, max_length=63)]
    """Name clients send as ``model`` to reach the adapter: a DNS label, unique across every
    model and adapter of the stack."""
    source: Source
    """Where the adapter comes from: a Hugging Face repo id (``org/name``),
    ``pvc://<claim>/<path>`` or ``s3://<bucket>/<prefix>``. Hugging Face and S3 adapters are
    downloaded by an init container of the model's pods (with the model's
    ``hfTokenSecretRef`` or ``credentialsSecretRef``); a PVC is mounted read-only."""
    revision: Revision | None = None
    """Pinned commit, branch or tag of a Hugging Face source: downloaded at this revision,
    and its license checked there."""
    license: LicenseText | None = None
    """Declared license as an SPDX expression. Needed for sources nothing else knows the
    license of (pvc://, s3://)."""

    @model_validator(mode="after")
    def _check(self) -> AdapterSpec:
        _check_revision(self.source, self.revision)
        return self


#: Speculative decoding methods (vLLM's ``--speculative-config`` ``method``): those that load
#: weights of their own (a draft model, an EAGLE head), and those that do not (n-gram lookup
#: in the prompt; the model's own multi-token-prediction layers).
DRAFT_METHODS = ("draft_model", "eagle", "eagle3")
SELF_METHODS = ("ngram", "mtp")


class SpeculativeSpec(APIModel):
    """Speculative decoding: a cheaper proposer suggests tokens that the model checks,
    several at a time (vLLM's ``--speculative-config``). A draft model or EAGLE head has
    weights of its own: its license is checked like an adapter's, and speculation is used
    only when both its license and its model's are permitted (else the model serves
    without it)."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            (
                "(self.method in ['ngram', 'mtp']) != has(self.source)",
                rules.SPECULATIVE_SOURCE,
            ),
            (
                "!has(self.source) || !self.source.startsWith('s3://')",
                rules.SPECULATIVE_S3,
            ),
            _REVISION_RULE,
        )
    )

    method: Literal[DRAFT_METHODS + SELF_METHODS]  # type: ignore[valid-type]
    """``draft_model`` (a smaller model of the same family), ``eagle`` or ``eagle3`` (an
    EAGLE head trained for the model): each needs ``source``; ``ngram`` (tokens looked up
    in the prompt) and ``mtp`` (the model's own multi-token-prediction layers) load no
    weights of their own."""
    source: Source | None = None
    """Where the draft's weights come from: a Hugging Face repo id or
    ``pvc://<claim>/<path>`` (mounted read-only)."""
    revision: Revision | None = None
    """Pinned commit, branch or tag of a Hugging Face draft: loaded at this revision, and its
    license checked there."""
    license: LicenseText | None = None
    """The draft's declared license (SPDX expression); needed where nothing else knows it."""
    num_speculative_tokens: Annotated[int, Field(ge=1, le=32)]
    """Tokens proposed per step."""

    @model_validator(mode="after")
    def _check(self) -> SpeculativeSpec:
        if (self.method in SELF_METHODS) == (self.source is not None):
            raise ValueError(rules.SPECULATIVE_SOURCE)
        if self.source is not None and self.source.startswith("s3://"):
            raise ValueError(rules.SPECULATIVE_S3)
        _check_revision(self.source, self.revision)
        return self


#: A label key (``[prefix/]name``), e.g. a node label that names a topology domain.
LabelKey = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=317,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$",
    ),
]


class MultiNodeSpec(APIModel):
    """How a model with ``nodes > 1`` is served across its nodes: each replica is one
    LeaderWorkerSet group of ``nodes`` pods, created, placed, restarted and rolled as one."""

    backend: Literal["vllm", "ray"] = "vllm"
    """``vllm``: vLLM's own multi-node mode (its multiprocessing executor: ``--nnodes``,
    ``--node-rank``, ``--master-addr``; workers run ``--headless``), with the stock vLLM
    image. ``ray``: the group's pods form a Ray cluster and vLLM runs on it
    (``--distributed-executor-backend ray``); it needs an image with Ray
    (``models[].image`` or ``spec.vllm.image``)."""
    exclusive_topology: LabelKey | None = None
    """A node label whose value names a topology domain (a rack, an NVLink domain, e.g.
    ``topology.kubernetes.io/zone``): each group is placed in one domain of its own, and
    no other group shares it (LeaderWorkerSet's exclusive-topology placement)."""


#: What each autoscaling signal reads: the vLLM gauge (as vLLM exports it, per server) and
#: the default target per replica.
AUTOSCALING_METRICS: dict[str, tuple[str, int]] = {
    "RequestsWaiting": ("vllm:num_requests_waiting", 5),
    "RequestsRunning": ("vllm:num_requests_running", 100),
}


class AutoscalingSpec(APIModel):
    """Scale a model's replicas with its load, between ``minReplicas`` and ``maxReplicas``
    (a KEDA ScaledObject reading the model servers' metrics from Prometheus). The model's
    ``replicas`` is then its starting size only: the operator never sets the replica count
    of a running model again."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            (
                "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                rules.AUTOSCALING_RANGE,
            ),
        )
    )

    min_replicas: Annotated[int, Field(ge=0, le=1024)] = 1
    """Fewest replicas, however idle the model. 0: the model sleeps when idle (no pod, no
    GPU) and wakes on the first request, which the gateway holds meanwhile."""
    max_replicas: Annotated[int, Field(ge=1, le=1024)]
    """Most replicas, however busy (each takes the model's GPUs)."""
    metric: Literal[tuple(AUTOSCALING_METRICS)] = "RequestsWaiting"  # type: ignore[valid-type]
    """The load signal, summed over the model's servers: ``RequestsWaiting`` (requests in
    vLLM's queue, ``vllm:num_requests_waiting``: a full batch) or ``RequestsRunning``
    (requests being served, ``vllm:num_requests_running``)."""
    target: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """The signal's value per replica to scale to (more replicas above it, fewer below).
    Defaults: 5 waiting requests, or 100 running requests."""
    scale_down_delay_seconds: Annotated[int, Field(ge=0, le=86400)] = 300
    """How long the load must stay lower before replicas are removed (a stabilization
    window: the highest recommendation over it wins)."""

    wake_timeout_seconds: Annotated[int, Field(ge=10, le=3600)] = 600
    """With ``minReplicas: 0``: how long the gateway holds a request for the sleeping model
    until a replica is ready (it then fails as it would have). Cover a cold start: pulling
    the image, downloading and loading the weights."""

    @property
    def sleeps(self) -> bool:
        return self.min_replicas == 0

    @property
    def series(self) -> str:
        return AUTOSCALING_METRICS[self.metric][0]

    @property
    def per_replica(self) -> int:
        return self.target if self.target is not None else AUTOSCALING_METRICS[self.metric][1]

    @model_validator(mode="after")
    def _check(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(rules.AUTOSCALING_RANGE)
        return self


class ModelSpec(APIModel):
    """One model served behind the stack's gateway: by vLLM on GPUs, or by Ollama on CPUs
    (``engine``)."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            (
                "!has(self.tensorParallelSize) || !has(self.gpus) "
                "|| self.gpus % self.tensorParallelSize == 0",
                rules.TP_DIVIDES_GPUS,
            ),
            (
                "!has(self.nodes) || self.nodes == 1 || !has(self.replicas) || self.replicas <= 64",
                rules.MULTINODE_REPLICAS,
            ),
            ("!has(self.multiNode) || (has(self.nodes) && self.nodes > 1)", rules.MULTINODE_ONLY),
            (
                "!has(self.autoscaling) || !has(self.nodes) || self.nodes == 1",
                rules.AUTOSCALING_MULTINODE,
            ),
            _REVISION_RULE,
            (
                "!has(self.speculative) || !has(self.adapters) || size(self.adapters) == 0 || "
                "self.speculative.numSpeculativeTokens <= "
                f"{rules.MAX_SPECULATIVE_TOKENS_WITH_LORA}",
                rules.SPECULATIVE_WITH_LORA,
            ),
        )
    )

    name: Annotated[
        str, StringConstraints(pattern=names.DNS_1035_PATTERN, max_length=names.MODEL_NAME_BUDGET)
    ]
    """Served model name (what clients send as ``model``); unique in the stack, a DNS label."""
    engine: Engine | None = None
    """The program that serves it: ``vllm`` (on GPUs) or ``ollama`` (on CPUs, a GGUF file:
    for clusters, development and CI without GPUs). Defaults to ``spec.engine``."""
    source: Source
    """Where the weights come from: a Hugging Face repo id (``org/name``),
    ``pvc://<claim>/<path>`` or ``s3://<bucket>/<prefix>``. With engine ollama: a GGUF file
    on a PVC (``pvc://<claim>/<file>.gguf``), or a Hugging Face GGUF repo."""
    revision: Revision | None = None
    """Pinned commit, branch or tag of a Hugging Face source (``--revision``). The license is
    checked at this revision. Not with engine ollama (it pulls the default branch)."""
    quantization: (
        Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_]+$")]
        | None
    ) = None
    """With engine ollama and a Hugging Face GGUF repo: which of its files to pull, by the
    quantization in its name (``Q4_K_M``, ``IQ3_M``; case-insensitive). When empty, Hugging
    Face picks ``Q4_K_M`` if the repo has it, else another of its files."""
    license: LicenseText | None = None
    """Declared license as an SPDX expression (``LicenseRef-*`` for custom model licenses).
    Needed for sources nothing else knows the license of (pvc://, s3://)."""
    replicas: Annotated[int, Field(ge=0, le=1024)] = 1
    """Number of serving replicas (for nodes > 1: number of multi-node groups). With
    ``autoscaling``, the starting size only."""
    autoscaling: AutoscalingSpec | None = None
    """Scale the replicas with the model's load; defaults to ``spec.vllm.autoscaling`` for a
    model on one node."""
    gpus: Annotated[int, Field(ge=1, le=64)] = 1
    """GPUs per replica on each node (``nvidia.com/gpu``)."""
    nodes: Annotated[int, Field(ge=1, le=64)] = 1
    """Nodes per replica. Above 1 the model is served across nodes: each replica is a
    LeaderWorkerSet group of a leader and ``nodes - 1`` workers (``multiNode``); tensor
    parallel within a node, pipeline parallel across nodes. Needs LeaderWorkerSet
    (``sigs.k8s.io/lws``) in the cluster."""
    multi_node: MultiNodeSpec | None = None
    """For ``nodes > 1``: the backend that joins the nodes and the groups' placement."""
    tensor_parallel_size: Annotated[int, Field(ge=1, le=64)] | None = None
    """``--tensor-parallel-size``; defaults to ``gpus``. Must divide ``gpus``; the rest of the
    GPUs of a node become pipeline stages."""
    max_model_len: Annotated[int, Field(ge=1, le=2**24)] | None = None
    """``--max-model-len``: the context length to serve; vLLM's default when empty."""
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    """``--gpu-memory-utilization``; defaults to ``spec.vllm.gpuMemoryUtilization``."""
    node_selector: NodeSelector = Field(default_factory=dict)
    """Node labels the model's pods require, e.g. ``nvidia.com/gpu.product``."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(default_factory=list)
    """Extra tolerations. A toleration for the ``nvidia.com/gpu`` taint is always added."""
    resources: ResourceRequirements | None = None
    """CPU and memory per pod; defaults to ``spec.vllm.resources``."""
    hf_token_secret_ref: SecretKeyRef | None = None
    """Hugging Face token for gated models, passed as ``HF_TOKEN``."""
    credentials_secret_ref: SecretRef | None = None
    """Secret whose keys become environment variables, e.g. ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY`` and ``AWS_ENDPOINT_URL`` for s3:// sources."""
    cache: WeightCache | None = None
    """Persistent weight cache; without it weights are downloaded into an emptyDir."""
    scratch_size: Quantity | None = None
    """Node disk per pod; defaults to ``spec.vllm.scratchSize``."""
    extra_args: ExtraArgs = Field(default_factory=list)
    """Extra ``vllm serve`` arguments, appended after the operator's own."""
    image: Image | None = None
    """vLLM image for this model; defaults to ``spec.vllm.image`` or the operator's default."""
    adapters: Annotated[
        list[AdapterSpec],
        Field(
            max_length=rules.MAX_ADAPTERS,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ] = Field(default_factory=list)
    """LoRA adapters served on this model, each under its own name (``--lora-modules``).
    Adding or removing one restarts the model's pods one at a time."""
    max_loras: Annotated[int, Field(ge=1, le=64)] = 1
    """``--max-loras``: how many adapters one batch may use at once (each takes GPU memory
    for its rank). Only with adapters."""
    max_lora_rank: Literal[LORA_RANKS] = 16  # type: ignore[valid-type]
    """``--max-lora-rank``: the highest rank of any adapter (vLLM refuses to load one of a
    higher rank). One of 1, 8, 16, 32, 64, 128, 256, 320, 512. Only with adapters."""
    speculative: SpeculativeSpec | None = None
    """Speculative decoding (``--speculative-config``), with a draft model whose license is
    checked like an adapter's."""

    @property
    def effective_tp(self) -> int:
        return self.tensor_parallel_size or self.gpus

    @property
    def pipeline_parallel_size(self) -> int:
        """Pipeline stages: GPUs of a node beyond one TP group, times the nodes."""
        return (self.gpus // self.effective_tp) * self.nodes

    @property
    def spans_nodes(self) -> bool:
        return self.nodes > 1

    @property
    def multinode_backend(self) -> str:
        """How the nodes of a group are joined (``MultiNodeSpec.backend``)."""
        return self.multi_node.backend if self.multi_node is not None else "vllm"

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.tensor_parallel_size is not None and self.gpus % self.tensor_parallel_size:
            raise ValueError(rules.TP_DIVIDES_GPUS)
        if self.nodes > 1 and self.replicas > names.MAX_REPLICAS:
            raise ValueError(rules.MULTINODE_REPLICAS)
        if self.multi_node is not None and self.nodes == 1:
            raise ValueError(rules.MULTINODE_ONLY)
        _check_revision(self.source, self.revision)
        speculative = self.speculative
        tokens = speculative.num_speculative_tokens if speculative is not None else 0
        if self.adapters and tokens > rules.MAX_SPECULATIVE_TOKENS_WITH_LORA:
            raise ValueError(rules.SPECULATIVE_WITH_LORA)
        seen = [a.name for a in self.adapters]
        dupes = sorted({n for n in seen if seen.count(n) > 1})
        if dupes:
            raise ValueError(f"{rules.UNIQUE_ADAPTER_NAMES} (duplicated: {', '.join(dupes)})")
        return self

    @model_validator(mode="after")
    def _autoscaling_on_one_node(self) -> ModelSpec:
        if self.autoscaling is not None and self.nodes > 1:
            raise ValueError(rules.AUTOSCALING_MULTINODE)
        return self


class VLLMDefaults(APIModel):
    """Defaults for every model of the stack."""

    image: Image | None = None
    """vLLM image (``vllm/vllm-openai``); the operator's default when empty."""
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    """Fraction of GPU memory vLLM may use."""
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "2", "memory": "16Gi"}, limits={"memory": "32Gi"}
        ),
    )
    """CPU and memory per model pod unless the model says otherwise."""
    shm_size: Quantity = "8Gi"
    """Size of the in-memory ``/dev/shm`` (NCCL and PyTorch need more than the 64Mi default)."""
    scratch_size: Quantity = "50Gi"
    """Node disk per model pod: the weights, when a model has no ``cache`` PVC, and ``/tmp``
    (compiled kernels). Requested as ``ephemeral-storage``, so the scheduler places the pod
    on a node with that much disk free, and the size limit of each of those emptyDirs (the
    kubelet evicts a pod that writes more). Raise it for models whose weights are larger,
    or give the model a ``cache`` PVC."""
    startup_timeout_seconds: Annotated[int, Field(ge=60, le=86400)] = 3600
    """How long a model may take to download and load its weights before it is restarted."""
    extra_args: ExtraArgs = Field(default_factory=list)
    """Arguments added to every model's ``vllm serve`` (before the model's own)."""
    autoscaling: AutoscalingSpec | None = None
    """Autoscaling for every vLLM model on one node that has none of its own (multi-node and
    Ollama models keep their fixed ``replicas``)."""


class OllamaDefaults(APIModel):
    """Defaults for every model on engine ollama (CPU)."""

    image: Image | None = None
    """Ollama image (``ollama/ollama``); the operator's default when empty."""
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "2", "memory": "4Gi"}, limits={"memory": "8Gi"}
        ),
    )
    """CPU and memory per Ollama pod unless the model says otherwise: enough for a small
    quantized model (about 1B parameters at 4 bits). Memory must hold the weights and the
    context (``maxModelLen``)."""
    scratch_size: Quantity = "20Gi"
    """Node disk per Ollama pod: its model store (a copy of the GGUF file) when the model has
    no ``cache`` PVC, and ``/tmp``. Requested as ``ephemeral-storage``."""
    startup_timeout_seconds: Annotated[int, Field(ge=60, le=86400)] = 1800
    """How long a model may take to be pulled or imported into Ollama's store (the pod's
    init container) before the import is stopped and started again."""


# ---------------------------------------------------------------- Ray


class RayHead(APIModel):
    """The Ray head: GCS (6379), dashboard (8265) and client server (10001)."""

    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "1", "memory": "4Gi"}, limits={"memory": "8Gi"}
        )
    )
    """CPU and memory of the head pod."""


class RayWorkerGroup(APIModel):
    """A group of identical Ray workers."""

    name: Annotated[str, StringConstraints(pattern=names.DNS_1035_PATTERN, max_length=40)]
    """Group name, unique in the stack; part of the Deployment name."""
    replicas: Annotated[int, Field(ge=0, le=1024)] = 1
    """Number of workers."""
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    """GPUs per worker (``nvidia.com/gpu``); 0 for CPU workers."""
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "1", "memory": "4Gi"}, limits={"memory": "8Gi"}
        )
    )
    """CPU and memory per worker."""
    node_selector: NodeSelector = Field(default_factory=dict)
    """Node labels the workers require."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(default_factory=list)
    """Extra tolerations; GPU groups always tolerate the ``nvidia.com/gpu`` taint."""


class RaySpec(APIModel):
    """A Ray cluster for the stack's own jobs (training, batch inference, data)."""

    enabled: bool = True
    """Create the Ray cluster."""
    image: Image | None = None
    """Ray image (``rayproject/ray``); the operator's default when empty."""
    head: RayHead = Field(default_factory=RayHead, json_schema_extra={"default": {}})
    """The head pod."""
    worker_groups: Annotated[
        list[RayWorkerGroup],
        Field(
            max_length=16,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ] = Field(default_factory=list)
    """Worker groups; none means the head runs the work alone."""

    @model_validator(mode="after")
    def _unique(self) -> RaySpec:
        seen = [g.name for g in self.worker_groups]
        dupes = sorted({n for n in seen if seen.count(n) > 1})
        if dupes:
            raise ValueError(f"{rules.UNIQUE_WORKER_GROUPS}: {', '.join(dupes)}")
        return self


# ---------------------------------------------------------------- MLflow


class MLflowStorage(APIModel):
    """The PVC that holds MLflow's SQLite database and artifacts by default."""

    size: Quantity = "10Gi"
    """Size of ``<stack>-mlflow-data``."""
    storage_class_name: str | None = None
    """StorageClass; the cluster default when empty."""
    delete_with_stack: bool = False
    """Delete the PVC (and every run and artifact on it) when the AIStack is deleted.
    By default it is kept."""


class MLflowBackendStore(APIModel):
    """An external database for MLflow's metadata (e.g. PostgreSQL)."""

    uri_secret_ref: SecretKeyRef
    """Secret key holding the database URI, e.g. ``postgresql://user:pw@host:5432/mlflow``."""


class MLflowArtifactStore(APIModel):
    """An external object store for MLflow's artifacts (e.g. S3 or MinIO)."""

    destination_secret_ref: SecretKeyRef
    """Secret key holding the destination URI, e.g. ``s3://bucket/mlflow``."""
    credentials_secret_ref: SecretRef | None = None
    """Secret whose keys become environment variables (``AWS_ACCESS_KEY_ID``, ...)."""


class MLflowSpec(APIModel):
    """The MLflow tracking server: experiments, runs, artifacts and traces."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            (
                "!has(self.replicas) || self.replicas <= 1 "
                "|| (has(self.backendStore) && has(self.artifactStore))",
                rules.MLFLOW_REPLICAS,
            )
        )
    )

    enabled: bool = True
    """Create the tracking server."""
    image: Image | None = None
    """MLflow image; the operator's default when empty. External stores need an image
    with their drivers (psycopg2, boto3)."""
    replicas: Annotated[int, Field(ge=0, le=16)] = 1
    """Server replicas; above 1 only with external backend and artifact stores."""
    storage: MLflowStorage = Field(default_factory=MLflowStorage, json_schema_extra={"default": {}})
    """Local storage, used for what no external store holds."""
    backend_store: MLflowBackendStore | None = None
    """External metadata database instead of SQLite on the PVC."""
    artifact_store: MLflowArtifactStore | None = None
    """External artifact store instead of the PVC."""
    allowed_hosts: Annotated[list[HostPattern], Field(max_length=32)] = Field(default_factory=list)
    """Extra Host headers the server accepts (e.g. an Ingress host); the in-cluster
    Service names are always allowed."""
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "250m", "memory": "512Mi"}, limits={"memory": "2Gi"}
        )
    )
    """CPU and memory of the server."""

    @property
    def needs_pvc(self) -> bool:
        return self.backend_store is None or self.artifact_store is None

    @model_validator(mode="after")
    def _check(self) -> MLflowSpec:
        if self.replicas > 1 and (self.backend_store is None or self.artifact_store is None):
            raise ValueError(rules.MLFLOW_REPLICAS)
        return self


# ---------------------------------------------------------------- gateway


#: Hosted providers the gateway can route to (``spec.gateway.providers[].provider``), the
#: ids a LicensePolicy's ``providers`` lists name.
PROVIDERS = ("openai", "anthropic", "gemini", "azure", "bedrock", "mistral", "openai-compatible")
#: Providers that send prompts where their ``apiBase`` says: a LicensePolicy permits them
#: per host (``providers.hosts``). The others always use their own endpoint.
ENDPOINT_PROVIDERS = ("azure", "openai-compatible")
#: The host each other provider sends prompts to (bedrock's depends on its region).
PROVIDER_HOSTS = {
    "openai": "api.openai.com",
    "anthropic": "api.anthropic.com",
    "gemini": "generativelanguage.googleapis.com",
    "mistral": "api.mistral.ai",
    "bedrock": "bedrock-runtime.{region}.amazonaws.com",
}
#: A provider id (one of ``PROVIDERS``).
ProviderIdField = Literal[PROVIDERS]  # type: ignore[valid-type]
RouteName = Annotated[str, StringConstraints(pattern=names.DNS_1035_PATTERN, max_length=63)]
URL_PATTERN = r"^https?://[A-Za-z0-9.\[\]:-]+(:[0-9]+)?(/[A-Za-z0-9._~%/+-]*)?$"


class ProviderSpec(APIModel):
    """A model of a hosted provider, served by the gateway under a route name of its own.
    Prompts sent to it leave the cluster: only a provider a LicensePolicy allows is routed."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            (
                "!(self.provider in ['openai-compatible', 'azure']) || has(self.apiBase)",
                rules.PROVIDER_API_BASE,
            ),
            ("self.provider != 'bedrock' || has(self.region)", rules.PROVIDER_REGION),
            (
                "self.provider in ['openai-compatible', 'azure'] || !has(self.apiBase)",
                rules.PROVIDER_FIXED_ENDPOINT,
            ),
        )
    )

    name: RouteName
    """Route name clients send as ``model``; unique across the stack's models, adapters
    and providers."""
    provider: ProviderIdField
    """Provider id: openai, anthropic, gemini, azure, bedrock, mistral, or
    openai-compatible (any OpenAI-compatible API at ``apiBase``)."""
    model: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"
        ),
    ]
    """The provider's model id, e.g. ``gpt-4o-mini``, ``claude-sonnet-4-5``; for azure the
    deployment name."""
    credentials_secret_ref: SecretKeyRef
    """Secret key holding the provider's API key (for bedrock, a Bedrock API key). It
    reaches the gateway only as an environment variable read from the Secret. The Secret
    must opt in to being a provider credential: the label
    ``aistack.dev/provider-credentials: "true"``, which the operator checks (so that a stack
    cannot send any Secret of its namespace to a provider)."""
    api_base: Annotated[str, StringConstraints(max_length=512, pattern=URL_PATTERN)] | None = None
    """Endpoint of the API, for openai-compatible and azure (required there, refused for the
    other providers, which always use their own). A LicensePolicy permits it by host
    (``providers.hosts``)."""
    region: Annotated[str, StringConstraints(max_length=32, pattern=r"^[a-z0-9-]+$")] | None = None
    """AWS region, for bedrock (required there)."""

    @model_validator(mode="after")
    def _check(self) -> ProviderSpec:
        if self.provider in ("openai-compatible", "azure") and self.api_base is None:
            raise ValueError(rules.PROVIDER_API_BASE)
        if self.provider == "bedrock" and self.region is None:
            raise ValueError(rules.PROVIDER_REGION)
        if self.provider not in ENDPOINT_PROVIDERS and self.api_base is not None:
            raise ValueError(rules.PROVIDER_FIXED_ENDPOINT)
        return self

    @property
    def host(self) -> str:
        """The host prompts sent to this route go to (lower case, no trailing dot): its
        ``apiBase``'s for the providers that take one, else the provider's own."""
        if self.api_base is not None:
            return normalize_host(urlsplit(self.api_base).hostname or "")
        return PROVIDER_HOSTS[self.provider].format(region=self.region)


def normalize_host(host: str) -> str:
    """A DNS name as resolvers read it: case folded, without the root's trailing dot."""
    return host.lower().rstrip(".")


class FallbackSpec(APIModel):
    """Where a route's requests go when it fails or is over its limits."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            ("!self.to.exists(t, t == self.model)", rules.FALLBACK_TO_ITSELF)
        )
    )

    model: RouteName
    """The route that falls back (a model, adapter or provider name)."""
    to: Annotated[list[RouteName], Field(min_length=1, max_length=8)]
    """Routes tried in this order."""

    @model_validator(mode="after")
    def _check(self) -> FallbackSpec:
        if self.model in self.to:
            raise ValueError(rules.FALLBACK_TO_ITSELF)
        return self


class RouteLimit(APIModel):
    """Request and token limits of one route, enforced by each gateway replica in memory
    (no database): with N replicas a route may get up to N times the limit."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(("has(self.rpm) || has(self.tpm)", "a limit needs rpm or tpm"))
    )

    route: RouteName
    """The route limited (a model, adapter or provider name)."""
    rpm: Annotated[int, Field(ge=1, le=10**9)] | None = None
    """Requests per minute; beyond it the route answers 429 (or falls back)."""
    tpm: Annotated[int, Field(ge=1, le=10**12)] | None = None
    """Tokens per minute."""

    @model_validator(mode="after")
    def _check(self) -> RouteLimit:
        if self.rpm is None and self.tpm is None:
            raise ValueError("a limit needs rpm or tpm")
        return self


def _map_list(key: str, max_length: int) -> Any:
    return Field(
        max_length=max_length,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]},
    )


class GatewaySpec(APIModel):
    """The OpenAI-compatible gateway (LiteLLM proxy) in front of every permitted model."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            (
                "!has(self.providers) || size(self.providers) == 0 || has(self.authSecretRef) "
                "|| (has(self.enabled) && !self.enabled)",
                rules.PROVIDERS_NEED_AUTH,
            )
        )
    )

    enabled: bool = True
    """Create the gateway."""
    image: Image | None = None
    """Gateway image (LiteLLM proxy); the operator's default when empty."""
    replicas: Annotated[int, Field(ge=0, le=64)] = 1
    """Gateway replicas."""
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Type of the gateway Service."""
    auth_secret_ref: SecretKeyRef | None = None
    """Master key clients must send as ``Authorization: Bearer <key>``; without it the
    gateway accepts any caller that can reach it."""
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "250m", "memory": "512Mi"}, limits={"memory": "1Gi"}
        )
    )
    """CPU and memory per gateway pod."""
    providers: Annotated[list[ProviderSpec], _map_list("name", 32)] = Field(default_factory=list)
    """Hosted models behind the same gateway, each under a route name. Egress: the
    NetworkPolicies of the stack are ingress-only, but a cluster's own egress policy must
    allow the gateway to reach the provider's host."""
    fallbacks: Annotated[list[FallbackSpec], _map_list("model", 64)] = Field(default_factory=list)
    """Per route, the routes its requests fall back to, in order, when it fails or is over
    its limits."""
    limits: Annotated[list[RouteLimit], _map_list("route", 128)] = Field(default_factory=list)
    """Per route, requests and tokens per minute."""
    retries: Annotated[int, Field(ge=0, le=10)] | None = None
    """How many times a route is tried again after a failed request (a model server's
    error or timeout, a provider's), before its fallbacks (LiteLLM's ``num_retries``). Unset:
    LiteLLM's default, 2. A rate limit of ``limits`` is never retried."""
    retry_after_seconds: Annotated[int, Field(ge=0, le=300)] | None = None
    """The least time between two tries of a route (LiteLLM's ``retry_after``); longer when
    the failed answer asks for more (``Retry-After``). Unset: LiteLLM's default, 0."""

    @model_validator(mode="after")
    def _check(self) -> GatewaySpec:
        if self.enabled and self.providers and self.auth_secret_ref is None:
            raise ValueError(rules.PROVIDERS_NEED_AUTH)
        return self


# ---------------------------------------------------------------- network isolation


class LabelSelectorRequirement(APIModel):
    """One expression of a label selector (meta/v1 LabelSelectorRequirement)."""

    key: Annotated[str, StringConstraints(min_length=1, max_length=317)]
    """Label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key's value is matched against ``values``."""
    values: Annotated[
        list[Annotated[str, StringConstraints(max_length=63)]], Field(max_length=64)
    ] = Field(default_factory=list)
    """Values for In and NotIn; empty for Exists and DoesNotExist."""


class LabelSelector(APIModel):
    """A label selector (meta/v1 LabelSelector); empty selects everything."""

    match_labels: dict[str, Annotated[str, StringConstraints(max_length=63)]] = Field(
        default_factory=dict
    )
    """Labels that must all be present with these values."""
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=16)] = Field(
        default_factory=list
    )
    """Expressions that must all hold."""


class IPBlock(APIModel):
    """A CIDR range (networking/v1 IPBlock)."""

    cidr: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    """Range admitted, e.g. ``10.0.0.0/8``."""
    except_: Annotated[
        list[Annotated[str, StringConstraints(max_length=64)]], Field(max_length=16)
    ] = Field(default_factory=list, alias="except")
    """Ranges within ``cidr`` that are not admitted."""


class NetworkPeer(APIModel):
    """Who may connect (networking/v1 NetworkPolicyPeer): pods chosen by labels, in this
    namespace or in namespaces chosen by labels, or an IP range."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            (
                "has(self.ipBlock) != (has(self.podSelector) || has(self.namespaceSelector))",
                rules.NETWORK_PEER,
            )
        )
    )

    pod_selector: LabelSelector | None = None
    """Pods with these labels (in ``namespaceSelector``'s namespaces, or in the stack's)."""
    namespace_selector: LabelSelector | None = None
    """Namespaces with these labels; ``{}`` means every namespace."""
    ip_block: IPBlock | None = None
    """An IP range, usually outside the cluster (load balancers, VPN)."""

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPeer:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if (self.ip_block is not None) == selectors:
            raise ValueError(rules.NETWORK_PEER)
        return self


NetworkPeers = Annotated[list[NetworkPeer], Field(max_length=16)]


class NetworkSpec(APIModel):
    """Network isolation of the stack's pods with NetworkPolicies (ingress only)."""

    policies: bool = True
    """Create NetworkPolicies: model servers, Ray and MLflow accept connections only from
    pods of this stack and from ``allowFrom``; the gateway from ``gatewayFrom``. They take
    effect only where the cluster's network plugin enforces NetworkPolicy."""
    allow_from: NetworkPeers = Field(default_factory=list)
    """Also admitted to every part of the stack on every port, e.g. notebooks that log runs
    to MLflow. A Prometheus that only scrapes belongs in ``monitoring.scrapeFrom``."""
    gateway_from: NetworkPeers = Field(default_factory=list)
    """Who may reach the gateway (on its port only), besides this stack's pods and
    ``allowFrom``. Empty: anyone, since the gateway is the stack's front door; protect it
    with ``gateway.authSecretRef``."""


class MonitoringSpec(APIModel):
    """Prometheus Operator monitors (PodMonitors) for the stack's parts: vLLM's and the
    gateway's request metrics and Ray's node metrics. docs/observability.md lists what
    each part exports."""

    enabled: bool | None = None
    """Render the monitors. Unset: when the cluster has the Prometheus Operator's CRDs
    (``monitoring.coreos.com``), which the operator detects, also when they are installed
    later. ``true`` without the CRDs renders none and says so in the ``Monitoring``
    condition; it never fails the stack. ``false``: never."""
    interval: Annotated[str, StringConstraints(pattern=r"^[0-9]+(ms|s|m|h)$", max_length=16)] = (
        "30s"
    )
    """How often Prometheus scrapes each pod (a Prometheus duration, e.g. ``30s``)."""
    labels: Annotated[
        dict[str, Annotated[str, StringConstraints(max_length=63)]], Field(max_length=16)
    ] = Field(default_factory=dict)
    """Extra labels on every monitor, e.g. the one your Prometheus' ``podMonitorSelector``
    picks (``{release: kube-prometheus-stack}``)."""
    scrape_from: NetworkPeers = Field(default_factory=list)
    """Who may scrape (usually your Prometheus' namespace): admitted by the stack's
    NetworkPolicies to the metrics ports only (vLLM's API port, Ray's metrics port, and
    the gateway's port when it has no key). Without it, a Prometheus outside the stack is
    refused where the network plugin enforces NetworkPolicy (``network.allowFrom`` admits
    to every port)."""
    prometheus_address: (
        Annotated[str, StringConstraints(max_length=512, pattern=URL_PATTERN)] | None
    ) = None
    """The Prometheus that scrapes these monitors, which autoscaling queries (its HTTP API
    base URL, e.g. ``http://prometheus-operated.monitoring.svc:9090``). Defaults to the
    operator's setting (the chart's ``autoscaling.prometheusAddress``)."""


# ---------------------------------------------------------------- AIStack


#: CEL: every adapter name of the stack (the quadratic comparisons of every pair cost more
#: than the API server's budget; flatten and distinct do not).
_ADAPTER_NAMES = "self.models.map(m, has(m.adapters) ? m.adapters.map(a, a.name) : []).flatten()"
#: CEL: every route name of the stack: its models, adapters and providers.
_ROUTES = (
    "((has(self.models) ? self.models.map(m, [m.name] + (has(m.adapters) ? "
    "m.adapters.map(a, a.name) : [])).flatten() : []) + (has(self.gateway.providers) ? "
    "self.gateway.providers.map(p, p.name) : []))"
)


#: CEL: model ``m`` of the stack runs on Ollama (its engine, else the stack's).
_ON_OLLAMA = (
    "(has(m.engine) ? m.engine == 'ollama' : (has(self.engine) && self.engine == 'ollama'))"
)


def _ollama_rule(allowed: str, message: str) -> tuple[str, str]:
    """CEL: every model on engine ollama holds ``allowed`` (a condition on ``m``)."""
    return (f"!has(self.models) || self.models.all(m, !{_ON_OLLAMA} || ({allowed}))", message)


_ENGINE_RULES = (
    _ollama_rule(
        "(!has(m.gpus) || m.gpus == 1) && (!has(m.nodes) || m.nodes == 1) && !has(m.multiNode) "
        "&& !has(m.tensorParallelSize) && !has(m.gpuMemoryUtilization)",
        rules.ENGINE_OLLAMA_GPUS,
    ),
    _ollama_rule(
        "(!has(m.adapters) || size(m.adapters) == 0) && !has(m.speculative)",
        rules.ENGINE_OLLAMA_LORA,
    ),
    _ollama_rule("!has(m.extraArgs) || size(m.extraArgs) == 0", rules.ENGINE_OLLAMA_ARGS),
    _ollama_rule("!has(m.autoscaling)", rules.ENGINE_OLLAMA_AUTOSCALING),
    _ollama_rule(
        "!m.source.startsWith('s3://') && !has(m.revision) && !has(m.hfTokenSecretRef)",
        rules.ENGINE_OLLAMA_SOURCE,
    ),
    (
        "!has(self.models) || self.models.all(m, !has(m.quantization) || "
        f"({_ON_OLLAMA} && !m.source.startsWith('pvc://') && !m.source.startsWith('s3://')))",
        rules.QUANTIZATION_FOR_OLLAMA_HUB,
    ),
)


class AIStackSpec(APIModel):
    """Desired state of an AI stack."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            (
                "!has(self.models) || self.models.all(m, !has(m.nodes) || m.nodes == 1 "
                "|| !has(m.multiNode) || !has(m.multiNode.backend) "
                "|| m.multiNode.backend != 'ray' "
                "|| has(m.image) || (has(self.vllm) && has(self.vllm.image)))",
                rules.MULTINODE_IMAGE,
            ),
            (
                "!has(self.monitoring) || !has(self.monitoring.enabled) || "
                "self.monitoring.enabled || ((!has(self.models) || "
                "self.models.all(m, !has(m.autoscaling))) && "
                "(!has(self.vllm) || !has(self.vllm.autoscaling) || !has(self.models) || "
                "self.models.all(m, has(m.nodes) && m.nodes > 1)))",
                rules.AUTOSCALING_METRICS,
            ),
            (
                "!has(self.models) || !(self.models.exists(m, has(m.autoscaling) && "
                "has(m.autoscaling.minReplicas) && m.autoscaling.minReplicas == 0) || "
                "(has(self.vllm) && has(self.vllm.autoscaling) && "
                "has(self.vllm.autoscaling.minReplicas) && self.vllm.autoscaling.minReplicas == 0 "
                "&& self.models.exists(m, !has(m.autoscaling) && (!has(m.nodes) || m.nodes == 1))))"
                " || !has(self.gateway) || ((!has(self.gateway.enabled) || self.gateway.enabled)"
                " && !has(self.gateway.authSecretRef))",
                rules.AUTOSCALING_WAKE,
            ),
            *_ENGINE_RULES,
            # Duplicates within a model are refused by the list's map key; an adapter named
            # like a model, or like an adapter of another model, here. Every rule the
            # validators hold is a CEL rule too: a stack the API server stores is one the
            # operator can read, with or without its webhook.
            (
                "!has(self.models) || self.models.all(m, !has(m.adapters) || "
                "m.adapters.all(a, !self.models.exists(n, n.name == a.name)))",
                rules.UNIQUE_ADAPTER_NAMES,
            ),
            (
                f"!has(self.models) || size({_ADAPTER_NAMES}) == size({_ADAPTER_NAMES}.distinct())",
                rules.UNIQUE_ADAPTER_NAMES,
            ),
            (
                "!has(self.gateway) || !has(self.gateway.fallbacks) || "
                f"self.gateway.fallbacks.map(f, [f.model] + f.to).flatten().all(r, r in {_ROUTES})",
                rules.UNKNOWN_ROUTE,
            ),
            (
                "!has(self.gateway) || !has(self.gateway.limits) || "
                f"self.gateway.limits.all(l, l.route in {_ROUTES})",
                rules.UNKNOWN_ROUTE,
            ),
            (
                "!has(self.gateway) || !has(self.gateway.providers) || !has(self.models) || "
                "self.gateway.providers.all(p, !self.models.exists(m, m.name == p.name || "
                "(has(m.adapters) && m.adapters.exists(a, a.name == p.name))))",
                rules.UNIQUE_ROUTES,
            ),
        )
    )

    models: Annotated[
        list[ModelSpec],
        Field(
            max_length=32,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ] = Field(default_factory=list)
    """Models to serve."""
    engine: Engine = "vllm"
    """The engine of every model that names none (``models[].engine``): ``vllm`` (GPUs) or
    ``ollama`` (CPUs)."""
    vllm: VLLMDefaults = Field(default_factory=VLLMDefaults, json_schema_extra={"default": {}})
    """Defaults for every vLLM model server."""
    ollama: OllamaDefaults = Field(
        default_factory=OllamaDefaults, json_schema_extra={"default": {}}
    )
    """Defaults for every Ollama model server."""
    ray: RaySpec = Field(default_factory=RaySpec, json_schema_extra={"default": {}})
    """The Ray cluster."""
    mlflow: MLflowSpec = Field(default_factory=MLflowSpec, json_schema_extra={"default": {}})
    """The MLflow tracking server."""
    gateway: GatewaySpec = Field(default_factory=GatewaySpec, json_schema_extra={"default": {}})
    """The OpenAI-compatible gateway."""
    network: NetworkSpec = Field(default_factory=NetworkSpec, json_schema_extra={"default": {}})
    """Who may connect to the stack's pods."""
    monitoring: MonitoringSpec = Field(
        default_factory=MonitoringSpec, json_schema_extra={"default": {}}
    )
    """Prometheus monitors for the stack's parts."""

    # The cross-field rules, checked in this order (the first broken one is reported).
    @model_validator(mode="after")
    def _unique_models(self) -> AIStackSpec:
        if dupes := _repeated([m.name for m in self.models]):
            raise ValueError(f"{rules.UNIQUE_MODELS}: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _unique_adapters(self) -> AIStackSpec:
        model_names = {m.name for m in self.models}
        adapters = [a.name for m in self.models for a in m.adapters]
        clashes = sorted({n for n in adapters if n in model_names} | set(_repeated(adapters)))
        if clashes:
            raise ValueError(f"{rules.UNIQUE_ADAPTER_NAMES} (got {', '.join(clashes)})")
        return self

    def _routes(self) -> list[str]:
        adapters = [a.name for m in self.models for a in m.adapters]
        return [
            *(m.name for m in self.models),
            *adapters,
            *(p.name for p in self.gateway.providers),
        ]

    @model_validator(mode="after")
    def _unique_routes(self) -> AIStackSpec:
        if dupes := _repeated(self._routes()):
            raise ValueError(f"{rules.UNIQUE_ROUTES} (got {', '.join(dupes)})")
        return self

    @model_validator(mode="after")
    def _known_routes(self) -> AIStackSpec:
        named = [f.model for f in self.gateway.fallbacks]
        named += [t for f in self.gateway.fallbacks for t in f.to]
        named += [limit.route for limit in self.gateway.limits]
        if unknown := sorted(set(named) - set(self._routes())):
            raise ValueError(f"{rules.UNKNOWN_ROUTE} (unknown: {', '.join(unknown)})")
        return self

    def engine_of(self, model: ModelSpec) -> str:
        """The program that serves the model: its own engine, else the stack's."""
        return model.engine or self.engine

    def engine_defaults(self, model: ModelSpec) -> VLLMDefaults | OllamaDefaults:
        """The defaults of the model's engine: ``spec.vllm`` or ``spec.ollama``."""
        return self.ollama if self.engine_of(model) == "ollama" else self.vllm

    def image_of(self, model: ModelSpec) -> str | None:
        """The image the stack names for the model's server (None: the operator's default
        for its engine): the model's own, else its engine's section's."""
        return model.image or self.engine_defaults(model).image

    def autoscaling_of(self, model: ModelSpec) -> AutoscalingSpec | None:
        """The model's autoscaling: its own, else the stack's default (for a vLLM model on
        one node; an Ollama model has none)."""
        if model.autoscaling is not None or model.spans_nodes:
            return model.autoscaling
        return self.vllm.autoscaling if self.engine_of(model) == "vllm" else None

    @model_validator(mode="after")
    def _engine_fields(self) -> AIStackSpec:
        """What a model's engine cannot do, refused with the model and the fields named."""
        for m in self.models:
            on_ollama = self.engine_of(m) == "ollama"
            if m.quantization is not None and (
                not on_ollama or m.source.startswith(("pvc://", "s3://"))
            ):
                raise ValueError(
                    f"models[{m.name}].quantization: {rules.QUANTIZATION_FOR_OLLAMA_HUB}"
                )
            if not on_ollama:
                continue
            checks = (
                (rules.ENGINE_OLLAMA_GPUS, {
                    "gpus": m.gpus != 1, "nodes": m.nodes != 1, "multiNode": m.multi_node,
                    "tensorParallelSize": m.tensor_parallel_size,
                    "gpuMemoryUtilization": m.gpu_memory_utilization,
                }),
                (rules.ENGINE_OLLAMA_LORA, {"adapters": m.adapters, "speculative": m.speculative}),
                (rules.ENGINE_OLLAMA_ARGS, {"extraArgs": m.extra_args}),
                (rules.ENGINE_OLLAMA_AUTOSCALING, {"autoscaling": m.autoscaling}),
                (rules.ENGINE_OLLAMA_SOURCE, {
                    "source": m.source.startswith("s3://"), "revision": m.revision,
                    "hfTokenSecretRef": m.hf_token_secret_ref,
                }),
            )  # fmt: skip
            for message, fields in checks:
                named = [f for f, value in fields.items() if value not in (None, False, [])]
                if named:
                    paths = ", ".join(f"models[{m.name}].{f}" for f in named)
                    raise ValueError(f"{paths}: {message}")
        return self

    @model_validator(mode="after")
    def _autoscaling_metrics(self) -> AIStackSpec:
        scaled = [m.name for m in self.models if self.autoscaling_of(m) is not None]
        if scaled and self.monitoring.enabled is False:
            raise ValueError(f"{rules.AUTOSCALING_METRICS} (models: {', '.join(scaled)})")
        return self

    @model_validator(mode="after")
    def _autoscaling_wake(self) -> AIStackSpec:
        sleeping = [m.name for m in self.models if (a := self.autoscaling_of(m)) and a.sleeps]
        gateway = self.gateway
        if sleeping and (not gateway.enabled or gateway.auth_secret_ref is not None):
            raise ValueError(f"{rules.AUTOSCALING_WAKE} (models: {', '.join(sleeping)})")
        return self

    @model_validator(mode="after")
    def _multinode_image(self) -> AIStackSpec:
        without = [
            m.name
            for m in self.models
            if m.spans_nodes and m.multinode_backend == "ray" and not m.image
        ]
        if without and not self.vllm.image:
            raise ValueError(f"{rules.MULTINODE_IMAGE} (models: {', '.join(without)})")
        return self


def _repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


class Condition(APIModel):
    """A Kubernetes-style condition."""

    type: str
    """Condition type, e.g. Ready."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """CamelCase reason for the last transition."""
    message: str = ""
    """Human-readable detail."""
    observed_generation: int | None = None
    """The .metadata.generation the condition was computed for."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""


class AdapterStatus(APIModel):
    """License verdict of one LoRA adapter of a model."""

    name: str
    """Name clients call the adapter by."""
    source: str | None = None
    """Where the adapter comes from."""
    revision: str | None = None
    """Revision the license was checked at."""
    license: str | None = None
    """The adapter's own resolved license (SPDX expression); it is served only when its
    model's license is permitted too."""
    license_source: str | None = None
    """Where the license came from: Catalog, Hub, Declared."""
    permitted: bool | None = None
    """Whether the adapter is served: its license and its model's are permitted. A
    denied adapter is neither loaded nor routed; its model keeps serving."""
    reason: str | None = None
    """The license verdict, e.g. LicenseAllowed, LicenseNotAllowed, BaseModelBlocked."""
    message: str | None = None
    """Detail for ``reason``."""


class DraftStatus(APIModel):
    """License verdict of a model's draft model (speculative decoding)."""

    source: str | None = None
    """Where the draft comes from."""
    revision: str | None = None
    """Revision the license was checked at."""
    license: str | None = None
    """The draft's own resolved license; it is used only when its model's is permitted too."""
    license_source: str | None = None
    """Where the license came from: Catalog, Hub, Declared."""
    permitted: bool | None = None
    """Whether speculative decoding uses it; when not, the model serves without it."""
    reason: str | None = None
    """The license verdict, e.g. LicenseAllowed, LicenseNotAllowed, BaseModelBlocked."""
    message: str | None = None
    """Detail for ``reason``."""


class ModelStatus(APIModel):
    """Observed state of one model."""

    name: str
    """Served model name."""
    source: str | None = None
    """Where the weights come from."""
    revision: str | None = None
    """Revision the license was checked at."""
    license: str | None = None
    """Resolved license (SPDX expression)."""
    license_source: str | None = None
    """Where the license came from: Catalog, Hub, Declared."""
    permitted: bool | None = None
    """Whether the LicensePolicy permits serving the model."""
    reason: str | None = None
    """Why the model is not ready or not permitted."""
    message: str | None = None
    """Detail for ``reason``."""
    replicas: int | None = None
    """Desired replicas."""
    ready_replicas: int | None = None
    """Replicas that serve."""
    endpoint: str | None = None
    """In-cluster OpenAI-compatible base URL of the model itself."""
    adapters: list[AdapterStatus] | None = None
    """The model's LoRA adapters: license, where it came from, whether it is served."""
    speculative: DraftStatus | None = None
    """The draft model of its speculative decoding: license, whether it is used."""


class RouteStatus(APIModel):
    """One route of the gateway: a name clients send as ``model``, and where it goes."""

    name: str
    """The route's name."""
    kind: Literal["Model", "Adapter", "Provider"]
    """What serves it: a model of the stack, a LoRA adapter on one, or a hosted provider."""
    target: str
    """Where it goes: the model server's URL, or ``<provider>/<model>`` (and its apiBase)."""
    permitted: bool
    """Whether the policies permit it; a route that is not is not in the gateway."""
    reason: str | None = None
    """Why it is not permitted (its license or provider verdict)."""
    message: str | None = None
    """Detail for ``reason``."""


class GatewayStatus(APIModel):
    """What the gateway routes."""

    routes: list[RouteStatus] = Field(default_factory=list)
    """Every route the spec asks for, permitted or not."""


class Endpoints(APIModel):
    """In-cluster URLs of the stack's services."""

    gateway: str | None = None
    """OpenAI-compatible base URL clients use."""
    mlflow: str | None = None
    """MLflow tracking URI."""
    ray_dashboard: str | None = None
    """Ray dashboard / job submission URL."""
    ray_client: str | None = None
    """Ray client address (``ray://``)."""


class AIStackStatus(APIModel):
    """Observed state of an AI stack."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    """The .metadata.generation this status describes."""
    phase: Literal["Pending", "Progressing", "Ready", "Degraded", "Blocked"] | None = None
    """Summary: Pending, Progressing, Ready, Degraded or Blocked."""
    models_ready: str | None = None
    """Ready models out of permitted models, e.g. ``2/3``."""
    conditions: Annotated[
        list[Condition],
        Field(
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            }
        ),
    ] = Field(default_factory=list)
    """Ready, LicenseCompliant, ModelsReady, RayReady, TrackingReady, GatewayReady."""
    models: list[ModelStatus] = Field(default_factory=list)
    """Per-model status."""
    endpoints: Endpoints | None = None
    """Where to reach the stack."""
    gateway: GatewayStatus | None = None
    """The gateway's routes: models, adapters and hosted providers."""


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; the rest is kept as it is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Annotated[str, StringConstraints(min_length=1)]
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("annotations")
    @classmethod
    def _annotations_size(cls, value: dict[str, str]) -> dict[str, str]:
        size = sum(len(k) + len(v) for k, v in value.items())
        if size > ANNOTATIONS_MAX_BYTES:
            raise ValueError(
                f"Too long: annotations may hold at most {ANNOTATIONS_MAX_BYTES} bytes in all "
                f"(the API server's limit), these hold {size}"
            )
        return value


class AIStack(APIModel):
    """An open AI stack: vLLM model servers, Ray, MLflow and a gateway, license-checked."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["aistack.dev/v1alpha1"] = API_VERSION
    kind: Literal["AIStack"] = "AIStack"
    metadata: ObjectMeta
    spec: AIStackSpec
    status: AIStackStatus | None = None

    @model_validator(mode="after")
    def _names(self) -> AIStack:
        errors = rules.stack_name_errors(
            self.metadata.name,
            [m.name for m in self.spec.models],
            [g.name for g in self.spec.ray.worker_groups],
        )
        if errors:
            raise ValueError("; ".join(errors))
        return self


# ---------------------------------------------------------------- LicensePolicy


class LicenseException(APIModel):
    """A model permitted whatever its license, with the reason on record."""

    model_config = ConfigDict(
        json_schema_extra=_crd_rules(
            (
                "!self.model.startsWith('pvc://') || has(self.namespace)",
                rules.PVC_EXCEPTION_NAMESPACE,
            )
        )
    )

    model: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    """Model source the exception is for (a model's, adapter's or draft model's): a Hugging
    Face repo id (e.g. ``facebook/opt-125m``; any spelling of the same repo, renamed
    repositories included, matches), or a ``pvc://`` or ``s3://`` source, which matches
    exactly (paths and object keys are case-sensitive)."""
    namespace: Annotated[str, StringConstraints(pattern=names.DNS_1123_LABEL_PATTERN)] | None = None
    """Only for stacks in this namespace. Required for a ``pvc://`` source: claims are
    named per namespace."""
    revision: str | None = None
    """Only at this revision; any revision when empty."""
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """Why it is permitted (who approved it, a ticket)."""

    @model_validator(mode="after")
    def _check(self) -> LicenseException:
        if self.model.startswith("pvc://") and self.namespace is None:
            raise ValueError(rules.PVC_EXCEPTION_NAMESPACE)
        return self


#: A host a policy lets prompts go to: a DNS name (``llm.example.com``), or ``*.`` and a
#: suffix (``*.openai.azure.com``: any name below it, not the suffix itself).
HostNamePattern = Annotated[
    str,
    StringConstraints(
        max_length=253,
        pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]


class ProviderPolicy(APIModel):
    """Which hosted providers prompts may be sent to (``spec.gateway.providers``)."""

    allow: Annotated[list[ProviderIdField], Field(max_length=16)] = Field(default_factory=list)
    """Providers permitted. The list is exhaustive: a provider not on it is not permitted,
    so a policy that names none permits none."""
    deny: Annotated[list[ProviderIdField], Field(max_length=16)] = Field(default_factory=list)
    """Providers never permitted; deny wins over allow. A denied provider's endpoint is
    denied also through another provider (openai-compatible at api.openai.com, when openai
    is denied)."""
    hosts: Annotated[list[HostNamePattern], Field(max_length=64)] = Field(default_factory=list)
    """Where the providers that take an endpoint (azure, openai-compatible; both must also
    be on ``allow``) may send prompts: the host of their ``apiBase``, an exact name or
    ``*.`` and a suffix (``*.openai.azure.com``). Exhaustive: a host not on it is not
    permitted. The other providers always use their own endpoint."""


UnverifiedAction = Literal["Deny", "Warn", "Trust"]


class UnverifiedLicenses(APIModel):
    """What a license only the stack declares counts for: one neither the catalog nor the
    Hub confirmed (``licenseSource: Declared``). ``Trust`` judges the declared license
    like any other; ``Warn`` too, and warns (an admission warning, reason
    ``LicenseUnverified`` in the status); ``Deny`` does not permit the model."""

    hugging_face: UnverifiedAction = "Deny"
    """Hugging Face repos the catalog does not know (or knows no license of), with the Hub
    lookup off or silent. By default not permitted: a stack author could declare any
    license for any repo."""
    storage: UnverifiedAction = "Trust"
    """``pvc://`` and ``s3://`` sources: nothing but the declaration can know their
    license; whoever may write to the claim or the bucket vouches for it."""


class ImagePolicy(APIModel):
    """Which container images stacks may name (``spec.models[].image``, ``spec.vllm.image``,
    ``spec.ray.image``, ``spec.mlflow.image``, ``spec.gateway.image``): an image is a
    program and may carry weights, so it is judged like them. The operator's own default
    images (its settings, which a stack does not choose) are always permitted, at any tag
    or digest of their repositories."""

    allow: Annotated[list[ImagePattern], Field(max_length=128)] = Field(default_factory=list)
    """Images stacks may name besides the defaults' repositories: a repository
    (``ghcr.io/acme/vllm-ray``: any tag or digest), an exact reference
    (``ghcr.io/acme/vllm-ray:0.34.0``, ``...@sha256:<digest>``), or a prefix ending in ``/*``
    (``registry.acme.example/ml/*``). Docker Hub names match in any spelling
    (``vllm/vllm-openai`` is ``docker.io/vllm/vllm-openai``). Exhaustive."""
    require_digest: bool = False
    """Images a stack names must be pinned by digest (``@sha256:...``), so that what runs
    cannot change under the same tag."""


class LicensePolicySpec(APIModel):
    """Which model licenses the cluster permits."""

    allow: Annotated[list[LicenseText], Field(max_length=256)] = Field(default_factory=list)
    """Permitted licenses (SPDX ids, ``LicenseRef-*``). The list is exhaustive: a license on
    neither list is not permitted."""
    deny: Annotated[list[LicenseText], Field(max_length=256)] = Field(default_factory=list)
    """Licenses never permitted; deny wins over allow."""
    unknown: Literal["Deny", "Warn"] = "Deny"
    """What to do with a model whose license cannot be resolved."""
    enforcement: Literal["Deny", "Warn", "DryRun"] = "Deny"
    """Deny blocks models; Warn deploys them and warns; DryRun only reports."""
    exceptions: Annotated[list[LicenseException], Field(max_length=256)] = Field(
        default_factory=list
    )
    """Models permitted whatever their license, each with a reason."""
    providers: ProviderPolicy = Field(
        default_factory=ProviderPolicy, json_schema_extra={"default": {}}
    )
    """Hosted providers the gateway may send prompts to. By default none: prompts leave
    the cluster only where an admin allowed it. Several policies all apply."""
    unverified: UnverifiedLicenses = Field(
        default_factory=UnverifiedLicenses, json_schema_extra={"default": {}}
    )
    """What a license that only the stack declares counts for, per kind of source."""
    images: ImagePolicy = Field(default_factory=ImagePolicy, json_schema_extra={"default": {}})
    """Which images stacks may name. By default only the operator's default images."""


class LicensePolicyStatus(APIModel):
    """Observed state of a license policy."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    """The .metadata.generation this status describes."""
    conditions: list[Condition] = Field(default_factory=list)
    """Valid: whether every listed license parses."""


class LicensePolicy(APIModel):
    """Cluster-wide policy: which model licenses stacks may serve."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["aistack.dev/v1alpha1"] = API_VERSION
    kind: Literal["LicensePolicy"] = "LicensePolicy"
    metadata: ObjectMeta
    spec: LicensePolicySpec = Field(default_factory=LicensePolicySpec)
    status: LicensePolicyStatus | None = None
