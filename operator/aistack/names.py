"""Names and labels of everything the operator creates, derived from one place.

Every child object is named ``<stack>-<part>``; the limits below keep every derived
name a valid DNS-1035 label (63 characters), which Services require. The CRD's CEL rules
and the pydantic validators use the same numbers, and a test renders the longest
allowed names to prove they hold.
"""

from __future__ import annotations

import hashlib

DNS_LABEL_MAX = 63
DNS_1035_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: A namespace name.
DNS_1123_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

GROUP = "aistack.dev"
PART_OF = "aistack"
MANAGED_BY = "aistack-operator"

STACK_LABEL = f"{GROUP}/stack"
MODEL_LABEL = f"{GROUP}/model"
ROLE_LABEL = f"{GROUP}/role"
RAY_GROUP_LABEL = f"{GROUP}/ray-group"
COMPONENT_LABEL = "app.kubernetes.io/component"
#: The labels LeaderWorkerSet puts on the pods of its groups.
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
LWS_GROUP_KEY_LABEL = "leaderworkerset.sigs.k8s.io/group-key"
#: On a LeaderWorkerSet: each group in a topology domain of its own (a node label key).
LWS_EXCLUSIVE_TOPOLOGY_ANNOTATION = "leaderworkerset.sigs.k8s.io/exclusive-topology"
RETAIN_ANNOTATION = f"{GROUP}/retain-on-delete"
CONFIG_CHECKSUM_ANNOTATION = f"{GROUP}/config-checksum"
LICENSE_BLOCKED_ANNOTATION = f"{GROUP}/license-blocked"
#: On a Deployment: what its pods run that the license decision judged (JSON), so that what
#: runs can be judged again while the stack's spec cannot be read.
LICENSED_ANNOTATION = f"{GROUP}/licensed"
#: On a model's Deployment whose replicas KEDA drives (``autoscaling``): the starting size.
#: The operator's server-side apply then leaves ``spec.replicas`` out (the scaler owns it),
#: and a field manager of its own sets it once (``AUTOSCALED_FIELD_MANAGER``).
STARTING_REPLICAS_ANNOTATION = f"{GROUP}/starting-replicas"
#: The label with which a Secret opts in to being a hosted provider's credentials.
PROVIDER_CREDENTIALS_LABEL = f"{GROUP}/provider-credentials"


def speculative_key(model: str) -> str:
    """The key of a model's draft among the license verdicts, whose other keys are route
    names (which cannot hold a colon)."""
    return f"speculative:{model}"


def image_key(part: str) -> str:
    """The key of an image a stack names for a part (``ray``, ``mlflow``, ``gateway``: the
    components' image keys) among the license verdicts. A model's image is part of the
    model's own verdict."""
    return f"image:{part}"


#: A stack name is at most this long, so that ``<stack>-gateway-config`` and friends fit.
STACK_NAME_MAX = 40
#: Most replica groups a multi-node model may have (group index goes into names).
MAX_REPLICAS = 64
_MODEL_PREFIX = "-vllm-"
_LONGEST_MODEL_SUFFIX = f"-g{MAX_REPLICAS - 1}-leader"
#: len(stack name) + len(model name) may not exceed this.
MODEL_NAME_BUDGET = DNS_LABEL_MAX - len(_MODEL_PREFIX) - len(_LONGEST_MODEL_SUFFIX)
#: A multi-node model's LeaderWorkerSet is ``<stack>-vllm-<model>-lws``, at most this long:
#: LWS names a group's worker StatefulSet ``<lws>-<group>``, and the StatefulSet controller
#: labels its pods ``controller-revision-hash: <StatefulSet>-<hash of up to 10
#: characters>``, a label value of at most 63 characters.
LWS_NAME_MAX = DNS_LABEL_MAX - len(f"-{MAX_REPLICAS - 1}") - len("-0123456789")
_RAY_WORKER_PREFIX = "-ray-worker-"
#: len(stack name) + len(Ray worker group name) may not exceed this.
RAY_GROUP_BUDGET = DNS_LABEL_MAX - len(_RAY_WORKER_PREFIX)


#: Longest ``<part>`` of a ``<stack>-<part>`` name, so that it fits with the longest stack.
PART_MAX = DNS_LABEL_MAX - STACK_NAME_MAX - 1


def part(stack: str, suffix: str) -> str:
    """The name of a stack's object that is one per stack: ``<stack>-<suffix>``. A new
    component names its objects with it (no edit here): a suffix too long to fit beside
    the longest stack name fails the first time the component renders."""
    if not 0 < len(suffix) <= PART_MAX:
        raise ValueError(f"name part {suffix!r} is not 1 to {PART_MAX} characters")
    return f"{stack}-{suffix}"


def model_base(stack: str, model: str) -> str:
    """Deployment and Service of a model served on one node per replica."""
    return f"{stack}{_MODEL_PREFIX}{model}"


def model_cache(stack: str, model: str) -> str:
    return f"{model_base(stack, model)}-cache"


def model_lws(stack: str, model: str) -> str:
    """The LeaderWorkerSet of a multi-node model (and the headless Service LWS makes):
    ``<stack>-vllm-<model>-lws``; where that is longer than ``LWS_NAME_MAX``, its start
    and a hash of the whole."""
    full = f"{model_base(stack, model)}-lws"
    if len(full) <= LWS_NAME_MAX:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: LWS_NAME_MAX - len(digest) - 1].rstrip('-')}-{digest}"


def lws_group(stack: str, model: str, group: int) -> str:
    """One group of a multi-node model's LeaderWorkerSet: the name LWS gives its leader pod
    and its workers' StatefulSet; also the group's NetworkPolicy."""
    return f"{model_lws(stack, model)}-{group}"


def model_group(stack: str, model: str, group: int) -> str:
    """Before LeaderWorkerSet: the headless Service in front of the Ray head of one
    multi-node replica group (and its NetworkPolicy). Kept to find what to migrate."""
    return f"{model_base(stack, model)}-g{group}"


def model_group_leader(stack: str, model: str, group: int) -> str:
    return f"{model_group(stack, model, group)}-leader"


def model_group_workers(stack: str, model: str, group: int) -> str:
    return f"{model_group(stack, model, group)}-worker"


def ray_head(stack: str) -> str:
    return part(stack, "ray-head")


def ray_worker(stack: str, group: str) -> str:
    return f"{stack}{_RAY_WORKER_PREFIX}{group}"


def mlflow(stack: str) -> str:
    return part(stack, "mlflow")


def mlflow_data(stack: str) -> str:
    return part(stack, "mlflow-data")


def gateway(stack: str) -> str:
    return part(stack, "gateway")


def gateway_config(stack: str) -> str:
    return part(stack, "gateway-config")


def selector_labels(stack: str, component: str, **extra: str) -> dict[str, str]:
    """Labels that select a part's pods. Deployment selectors are immutable: keep stable."""
    labels = {STACK_LABEL: stack, COMPONENT_LABEL: component}
    labels.update({f"{GROUP}/{key.replace('_', '-')}": value for key, value in extra.items()})
    return labels


def common_labels(stack: str, component: str, app: str, **extra: str) -> dict[str, str]:
    """The label set every child carries."""
    labels = {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/instance": stack,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    labels.update(selector_labels(stack, component, **extra))
    return labels
