"""The parts of a stack, each described once: the registry every layer reads.

A ``Component`` says what the operator needs to know about one part, besides how its
objects are written (``render/``): whether the stack enables it (its spec section), how it
reports readiness (its Deployments, its pods, its condition), its ports and endpoints, the
operator setting of its default image (``aistack run --<image>-image``, the chart's
``images.<image>``), where it serves metrics, and who may reach it (the NetworkPolicies).
``RenderConfig``, the operator installation's settings for the parts (their default
images, the cluster domain), lives beside it.

Render, status, the license decision, the CLI flags and the chart all read ``COMPONENTS``;
this module reads only the API, the names and the kinds (docs/architecture.md has the layers, and
tests/test_layers.py holds them). docs/adding-a-component.md lists the files a new part
touches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aistack import names
from aistack.api.v1alpha1 import ENGINE_NAMES, AIStack, AIStackSpec, ModelSpec, ProviderSpec
from aistack.kinds import BY_KIND

# ---------------------------------------------------------------- ports

VLLM_PORT = 8000
GATEWAY_PORT = 4000
#: Where the gateway (LiteLLM) answers its metrics with 200 (``/metrics`` redirects here).
GATEWAY_METRICS_PATH = "/metrics/"
MLFLOW_PORT = 5000
RAY_GCS_PORT = 6379
RAY_DASHBOARD_PORT = 8265
RAY_CLIENT_PORT = 10001
RAY_METRICS_PORT = 8080
RAY_AGENT_PORT = 52365
#: Where the leader of a multi-node model's group (vLLM's own backend) listens for the
#: workers' distributed setup (``--master-port``; vLLM's default).
VLLM_MASTER_PORT = 29501


# ---------------------------------------------------------------- the installation


class RenderConfig(BaseModel):
    """Settings of the operator installation that shape every stack's manifests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The default image of each component, by its image key (``Component.image``): the
    #: ones given here, and the component's built-in default for the others. A key that
    #: names no component is refused.
    images: Mapping[str, str] = Field(default_factory=dict)
    cluster_domain: str = "cluster.local"
    #: MLflow experiment that the gateway's and the model servers' OTLP traces go to, by id
    #: (MLflow's OTLP endpoint takes an id, not a name). "0" is the Default experiment,
    #: which every MLflow server has; each stack has its own MLflow, so it is the stack's.
    mlflow_trace_experiment_id: str = "0"
    #: Whether the cluster has the Prometheus Operator's PodMonitor CRD: the operator
    #: watches for it (True/False); None where nobody looked (``aistack render`` without
    #: ``--monitoring-crds``): then only ``spec.monitoring.enabled: true`` renders monitors.
    monitoring_crds: bool | None = None
    #: Whether this installation renders stacks' monitors at all (``aistack run
    #: --no-stack-monitoring``: its RBAC does not cover PodMonitors).
    stack_monitoring: bool = True
    #: Whether the cluster serves the LeaderWorkerSet API (``LWS_CRD``), which multi-node
    #: models are made of: the operator watches for it (True/False); None where nobody
    #: looked (``aistack render``): LeaderWorkerSets are rendered.
    leaderworkersets: bool | None = None
    #: Whether this installation makes LeaderWorkerSets at all (``aistack run
    #: --no-leaderworkersets``: its RBAC does not cover them).
    manage_leaderworkersets: bool = True
    #: Whether the cluster serves KEDA's ScaledObject API (``KEDA_CRD``), which autoscaled
    #: models are scaled by: the operator watches for it (True/False); None where nobody
    #: looked (``aistack render``): ScaledObjects are rendered.
    keda: bool | None = None
    #: Whether this installation makes ScaledObjects at all (``aistack run --no-keda``: its
    #: RBAC does not cover them).
    manage_keda: bool = True
    #: The Prometheus that autoscaling queries, for stacks that name none
    #: (``spec.monitoring.prometheusAddress``; ``aistack run --prometheus-address``).
    prometheus_address: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_images(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        given = dict(data.get("images") or {})
        unknown = sorted(set(given) - set(DEFAULT_IMAGES))
        if unknown:
            raise ValueError(
                f"images: {', '.join(unknown)} is not a component's image key "
                f"(known: {', '.join(DEFAULT_IMAGES)})"
            )
        return {**data, "images": {**DEFAULT_IMAGES, **{k: v for k, v in given.items() if v}}}


# ---------------------------------------------------------------- where parts are found


def svc_host(name: str, namespace: str, config: RenderConfig) -> str:
    return f"{name}.{namespace}.svc.{config.cluster_domain}"


def namespace_of(stack: AIStack) -> str:
    return stack.metadata.namespace or "default"


def model_url(stack: AIStack, model: ModelSpec, config: RenderConfig) -> str:
    """A model's own OpenAI-compatible base URL in the cluster (its Service): the
    gateway's route to it, and ``status.models[].endpoint``."""
    host = svc_host(names.model_base(stack.metadata.name, model.name), namespace_of(stack), config)
    return f"http://{host}:{VLLM_PORT}/v1"


def mlflow_uri(stack: AIStack, config: RenderConfig) -> str:
    host = svc_host(names.mlflow(stack.metadata.name), namespace_of(stack), config)
    return f"http://{host}:{MLFLOW_PORT}"


def gateway_endpoints(stack: AIStack, config: RenderConfig) -> dict[str, str]:
    host = svc_host(names.gateway(stack.metadata.name), namespace_of(stack), config)
    return {"gateway": f"http://{host}:{GATEWAY_PORT}/v1"}


def ray_endpoints(stack: AIStack, config: RenderConfig) -> dict[str, str]:
    host = svc_host(names.ray_head(stack.metadata.name), namespace_of(stack), config)
    return {
        "rayDashboard": f"http://{host}:{RAY_DASHBOARD_PORT}",
        "rayClient": f"ray://{host}:{RAY_CLIENT_PORT}",
    }


# ---------------------------------------------------------------- workloads and groups


def model_workloads(stack_name: str, model: ModelSpec) -> list[str]:
    """A model's Deployments: its server; none for a multi-node model, whose groups are a
    LeaderWorkerSet (``names.model_lws``)."""
    return [] if model.spans_nodes else [names.model_base(stack_name, model.name)]


def lws_group_selector(stack_name: str, model: ModelSpec, group: int) -> dict[str, str]:
    """The labels LeaderWorkerSet puts on the pods (leader and workers) of one group of a
    multi-node model."""
    return {
        names.LWS_NAME_LABEL: names.model_lws(stack_name, model.name),
        names.LWS_GROUP_INDEX_LABEL: str(group),
    }


def model_groups(stack: AIStack) -> list[tuple[str, dict[str, str]]]:
    """The groups of the stack's multi-node models: a name and the labels of the group's
    pods (its leader and workers join one engine, or one Ray cluster, and reach each
    other on every port)."""
    stack_name = stack.metadata.name
    return [
        (names.lws_group(stack_name, model.name, i), lws_group_selector(stack_name, model, i))
        for model in stack.spec.models
        if model.spans_nodes
        for i in range(model.replicas)
    ]


#: The CRD of the LeaderWorkerSet API (``sigs.k8s.io/lws``).
LWS_CRD = BY_KIND["LeaderWorkerSet"].crd
#: What to install where it is missing (the release the e2e suite runs).
LWS_INSTALL = (
    "kubectl apply --server-side -f "
    "https://github.com/kubernetes-sigs/lws/releases/download/v0.8.0/manifests.yaml"
)


def lws_missing(config: RenderConfig) -> str | None:
    """Why the multi-node models cannot be made (None: they can): the cluster has no
    LeaderWorkerSet API, or this installation does not make LeaderWorkerSets."""
    if not config.manage_leaderworkersets:
        return (
            "the operator's installation makes no LeaderWorkerSets (aistack run "
            "--no-leaderworkersets; the chart's leaderWorkerSet.enabled: false), which a "
            "model with nodes > 1 is made of"
        )
    if config.leaderworkersets is False:
        return (
            f"a model with nodes > 1 is served by a LeaderWorkerSet, and the cluster has no "
            f"LeaderWorkerSet API ({LWS_CRD}): install LeaderWorkerSet v0.8.0 or later "
            f"({LWS_INSTALL}); the model is made once it is there"
        )
    return None


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Scrape:
    """Where Prometheus finds a part's metrics: a named container port and a path, on the
    part's pods that also carry ``only`` (labels; none: all of them)."""

    port_name: str
    port: int
    path: str = "/metrics"
    only: Mapping[str, str] | None = None


# ---------------------------------------------------------------- engines


@dataclass(frozen=True)
class Engine:
    """A program that serves models (``models[].engine``). Each listens for the
    OpenAI-compatible API on ``VLLM_PORT``, so that a model's Service, its route in the
    gateway and its NetworkPolicy are the same whatever its engine; its pods are labelled
    ``app.kubernetes.io/name: <name>``."""

    #: ``models[].engine``, and its pods' ``app.kubernetes.io/name``.
    name: str
    #: What people call it.
    title: str
    #: Key of its default image (as ``Component.image``).
    image: str
    #: The real program, its pinned version and its default image (as a component's).
    program: str
    version: str
    image_template: str
    #: Where its servers serve Prometheus metrics (a path on the API port), or None and why.
    metrics_path: str | None
    unscraped: str | None = None
    #: Whether its servers need GPUs (their toleration and ``nvidia.com/gpu``).
    gpus: bool = True

    @property
    def default_image(self) -> str:
        return self.image_template.format(version=self.version)


ENGINES: tuple[Engine, ...] = (
    Engine(
        name="vllm",
        title="vLLM",
        image="vllm",
        program="vllm",
        version="0.34.0",
        image_template="vllm/vllm-openai:v{version}",
        # vLLM serves /metrics on its API port (its engine metrics unless
        # --disable-log-stats, which we never set).
        metrics_path="/metrics",
    ),
    Engine(
        name="ollama",
        title="Ollama",
        image="ollama",
        program="ollama",
        version="0.17.4",
        image_template="ollama/ollama:{version}",
        metrics_path=None,
        unscraped="Ollama serves no Prometheus metrics",
        gpus=False,
    ),
)
ENGINE: dict[str, Engine] = {e.name: e for e in ENGINES}
assert tuple(ENGINE) == ENGINE_NAMES, "the API's engines and the registry's differ"


def engine_of(stack: AIStack, model: ModelSpec) -> Engine:
    return ENGINE[stack.spec.engine_of(model)]


def _models_scrape(stack: AIStack) -> Scrape | None:
    """The model servers whose engine serves metrics (vLLM's), on their API port; None when
    no model of the stack runs on such an engine."""
    engines = {engine_of(stack, m) for m in stack.spec.models}
    scraped = [e for e in ENGINES if e in engines and e.metrics_path is not None]
    if not scraped:
        return None
    assert len(scraped) == 1, "one PodMonitor per part: a second scraped engine needs its own"
    (engine,) = scraped
    assert engine.metrics_path is not None
    only = {"app.kubernetes.io/name": engine.name} if len(engines) > 1 else None
    return Scrape("http", VLLM_PORT, engine.metrics_path, only)


def _models_unscraped(stack: AIStack) -> str | None:
    engines = {engine_of(stack, m) for m in stack.spec.models}
    why = [f"{e.title} models are not scraped: {e.unscraped}" for e in ENGINES
           if e in engines and e.unscraped]  # fmt: skip
    return "; ".join(why) or None


def gateway_exports_metrics(stack: AIStack) -> bool:
    """The gateway exports Prometheus metrics unless ``spec.monitoring.enabled`` is false
    (whether or not monitors are rendered: any scraper may use them)."""
    return stack.spec.monitoring.enabled is not False


def gateway_scrapable(stack: AIStack) -> bool:
    """Whether a scraper can read the gateway's metrics without a secret: its /metrics
    asks for the master key when the stack has one (``gateway.authSecretRef``), and a
    key that opens every route is not one to hand to Prometheus."""
    return gateway_exports_metrics(stack) and stack.spec.gateway.auth_secret_ref is None


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Component:
    #: Short name (the ``app.kubernetes.io/component`` of most of its objects).
    name: str
    #: What people call it, in condition messages ("Ray: 1/1 replicas ready").
    title: str
    #: Its status condition (True when ready or disabled).
    condition: str
    #: Whether the stack has this part.
    enabled: Callable[[AIStackSpec], bool]
    #: The Deployments whose readiness is the part's (they act as one).
    workloads: Callable[[AIStack], list[str]]
    #: The labels of its pods (their problems explain a part that is not ready).
    pod_selector: Callable[[str], dict[str, str]]
    #: Its in-cluster URLs (``status.endpoints``).
    endpoints: Callable[[AIStack, RenderConfig], dict[str, str]]
    #: Key of its default image: ``RenderConfig.images[<image>]``, ``aistack run
    #: --<image>-image``, the chart's ``images.<image>`` (regenerated by ``make chart-images``).
    image: str
    #: The real program it runs: its package, whose ``tests/conformance/envs/<program>.txt``
    #: pins the same version (tests/test_conformance_pins.py).
    program: str
    #: The program's version: the default image's, and the conformance suite's. It moves
    #: only when the suite passes at the new version.
    version: str
    #: Its default image, ``{version}`` standing for the version.
    image_template: str
    #: Who may reach it (its NetworkPolicy ``<stack>-<name>``; docs/security.md has the
    #: table): the pods of these parts of the stack, on ``port``, and
    #: ``spec.network.allowFrom`` on every port; nobody else.
    reached_by: tuple[str, ...] = ()
    #: The port the parts in ``reached_by`` use; None: every port (Ray's nodes talk on many).
    port: int | None = None
    #: Whether anyone may reach ``port`` (unless ``spec.network.gatewayFrom`` narrows it).
    public: bool = False
    #: Sets of its pods that reach each other on every port (a NetworkPolicy each), e.g.
    #: the leader and workers of a multi-node replica group: a name and the pods' labels.
    groups: Callable[[AIStack], list[tuple[str, dict[str, str]]]] | None = None
    #: Something its condition adds to its message, when there is (e.g. what happens to
    #: MLflow's data when the stack is deleted).
    note: Callable[[AIStack], str | None] | None = None
    #: Where its pods serve Prometheus metrics (a PodMonitor when monitoring is on); None:
    #: it is not scraped. ``unscraped`` says what of it is not, and why (None: nothing).
    scrape: Callable[[AIStack], Scrape | None] | None = None
    unscraped: Callable[[AIStack], str | None] | None = None
    #: The image the stack names for it (None: the operator's default), which the
    #: policies judge (``names.image_key(image)``; ``licenses`` reads the same fields, and
    #: ``tests/test_components.py`` holds the two equal). None for the models, whose image
    #: is part of each model's own verdict.
    named_image: Callable[[AIStackSpec], str | None] | None = None
    #: What its Deployments run that the license decision judged, beside the image: the
    #: providers it sends prompts to. Put on them as ``names.LICENSED_ANNOTATION``.
    providers: Callable[[AIStack], list[ProviderSpec]] | None = None

    @property
    def default_image(self) -> str:
        return self.image_template.format(version=self.version)


VLLM = ENGINE["vllm"]


def _model_workloads(stack: AIStack) -> list[str]:
    out: list[str] = []
    for model in stack.spec.models:
        out += model_workloads(stack.metadata.name, model)
    return out


def _ray_workloads(stack: AIStack) -> list[str]:
    name = stack.metadata.name
    return [names.ray_head(name)] + [
        names.ray_worker(name, g.name) for g in stack.spec.ray.worker_groups
    ]


def _mlflow_note(stack: AIStack) -> str | None:
    mlflow = stack.spec.mlflow
    if not mlflow.needs_pvc:
        return None
    kept = (
        "deleted with the stack"
        if mlflow.storage.delete_with_stack
        else "kept when the stack is deleted"
    )
    return f"data PVC {names.mlflow_data(stack.metadata.name)} is {kept}"


COMPONENTS: tuple[Component, ...] = (
    Component(
        name="model-server",
        title="vLLM",
        condition="ModelsReady",
        enabled=lambda spec: bool(spec.models),
        workloads=_model_workloads,
        pod_selector=lambda stack: names.selector_labels(stack, "model-server"),
        endpoints=lambda stack, config: {},
        # Only the API port: the leader of a multi-node group also listens for its
        # workers (vLLM's distributed setup, or a Ray head).
        reached_by=("gateway",),
        port=VLLM_PORT,
        groups=model_groups,
        # The servers of the engines that export metrics (``Engine.metrics_path``).
        scrape=_models_scrape,
        unscraped=_models_unscraped,
        # The default engine's image; the other engines' images are ``ENGINES``'.
        image=VLLM.image,
        program=VLLM.program,
        version=VLLM.version,
        image_template=VLLM.image_template,
    ),
    Component(
        name="ray",
        title="Ray",
        condition="RayReady",
        enabled=lambda spec: spec.ray.enabled,
        workloads=_ray_workloads,
        pod_selector=lambda stack: {names.STACK_LABEL: stack, "app.kubernetes.io/name": "ray"},
        endpoints=ray_endpoints,
        # Not the gateway: Ray's GCS and job API have no authentication, so a part that
        # faces the internet must not reach them.
        reached_by=("ray",),
        # Every node's dashboard agent (`ray start --metrics-export-port`).
        scrape=lambda stack: Scrape("metrics", RAY_METRICS_PORT),
        image="ray",
        named_image=lambda spec: spec.ray.image,
        program="ray",
        version="2.60.0",
        image_template="rayproject/ray:{version}-py311",
    ),
    Component(
        name="tracking",
        title="MLflow",
        condition="TrackingReady",
        enabled=lambda spec: spec.mlflow.enabled,
        workloads=lambda stack: [names.mlflow(stack.metadata.name)],
        pod_selector=lambda stack: names.selector_labels(stack, "tracking"),
        endpoints=lambda stack, config: {"mlflow": mlflow_uri(stack, config)},
        # The parts that send it runs (Ray jobs) or traces (the gateway, the model servers).
        reached_by=("gateway", "model-server", "ray"),
        port=MLFLOW_PORT,
        image="mlflow",
        named_image=lambda spec: spec.mlflow.image,
        program="mlflow",
        version="3.17.2",
        image_template="ghcr.io/mlflow/mlflow:v{version}",
        note=_mlflow_note,
        # `mlflow server --expose-prometheus` imports prometheus_flask_exporter, which the
        # default image does not have (it is in MLflow's `extras`): the server would not
        # start. Its request metrics are not worth a custom image.
        unscraped=lambda stack: (
            "MLflow is not scraped: its default image lacks prometheus_flask_exporter, which "
            "--expose-prometheus needs"
        ),
    ),
    Component(
        name="gateway",
        title="Gateway",
        condition="GatewayReady",
        enabled=lambda spec: spec.gateway.enabled,
        workloads=lambda stack: [names.gateway(stack.metadata.name)],
        pod_selector=lambda stack: names.selector_labels(stack, "gateway"),
        endpoints=gateway_endpoints,
        image="gateway",
        named_image=lambda spec: spec.gateway.image,
        providers=lambda stack: list(stack.spec.gateway.providers),
        program="litellm",
        version="1.110.2",
        image_template="ghcr.io/berriai/litellm:v{version}",
        port=GATEWAY_PORT,
        public=True,
        # LiteLLM mounts its metrics app at /metrics, and answers /metrics itself with a
        # redirect (307) there: a scraper that does not follow redirects gets nothing.
        scrape=lambda stack: (
            Scrape("http", GATEWAY_PORT, GATEWAY_METRICS_PATH) if gateway_scrapable(stack) else None
        ),
        unscraped=lambda stack: (
            None
            if gateway_scrapable(stack)
            else "Gateway is not scraped: its /metrics asks for the gateway's master key "
            "(gateway.authSecretRef), which a scraper should not hold"
        ),
    ),
)
#: The component that serves the models (its readiness is per model; see status).
MODELS = COMPONENTS[0]
BY_NAME: dict[str, Component] = {c.name: c for c in COMPONENTS}
#: Everything with a default image the installation can change: the parts, then the
#: engines other than the models' default (whose image is the model servers' part's).
IMAGED: tuple[Component | Engine, ...] = (
    *COMPONENTS,
    *(e for e in ENGINES if e.image not in {c.image for c in COMPONENTS}),
)
#: Image key -> the operator's built-in default image (RenderConfig fills ``images`` from it).
DEFAULT_IMAGES: dict[str, str] = {c.image: c.default_image for c in IMAGED}
#: Program -> the version pinned for it (the default images' and the conformance suite's).
VERSIONS: dict[str, str] = {c.program: c.version for c in IMAGED}


def enabled(stack: AIStack) -> list[Component]:
    return [c for c in COMPONENTS if c.enabled(stack.spec)]


def scrape_of(component: Component, stack: AIStack) -> Scrape | None:
    return component.scrape(stack) if component.scrape else None


@dataclass(frozen=True)
class Monitoring:
    """Whether the stack's monitors are rendered, and why (the ``Monitoring`` condition)."""

    monitors: bool
    reason: str
    message: str


#: The CRD whose presence turns monitoring on (``spec.monitoring.enabled`` unset).
MONITORING_CRD = BY_KIND["PodMonitor"].crd


def monitoring(stack: AIStack, config: RenderConfig | None = None) -> Monitoring:
    """Monitors are rendered when ``spec.monitoring.enabled`` is true, or unset and the
    cluster has the PodMonitor CRD; never when the CRD is known to be missing (the API
    server would refuse them), nor when the operator's installation turns them off."""
    config = config or RenderConfig()
    wanted = stack.spec.monitoring.enabled
    if wanted is False:
        return Monitoring(False, "Disabled", "spec.monitoring.enabled is false: no monitors")
    if not config.stack_monitoring:
        return Monitoring(
            False,
            "TurnedOff",
            "the operator's installation renders no monitors (aistack run "
            "--no-stack-monitoring; the chart's stackMonitoring.enabled: false)",
        )
    missing = (
        f"the cluster has no Prometheus Operator CRDs ({MONITORING_CRD}): no monitors; "
        "they are rendered once the CRDs are installed"
    )
    if config.monitoring_crds is False:
        reason = "CRDsMissing" if wanted else "CRDsAbsent"
        return Monitoring(False, reason, missing)
    if wanted is None and config.monitoring_crds is None:
        return Monitoring(
            False,
            "NotDetected",
            "monitors are rendered when the cluster has the Prometheus Operator CRDs "
            f"({MONITORING_CRD}) or spec.monitoring.enabled is true",
        )
    on = enabled(stack)
    scraped = [c.title for c in on if scrape_of(c, stack) is not None]
    message = f"PodMonitors for {', '.join(scraped)}" if scraped else "no part serves metrics"
    unscraped = [why for c in on if c.unscraped and (why := c.unscraped(stack))]
    if wanted is None:
        message += " (the Prometheus Operator CRDs are installed)"
    return Monitoring(True, "Rendered", "; ".join([message, *unscraped]))


# ---------------------------------------------------------------- autoscaling


@dataclass(frozen=True)
class Autoscaling:
    """Whether the stack's autoscaled models get their ScaledObjects, and why (the
    ``Autoscaling`` condition, present when some model asks for autoscaling)."""

    scaled: bool
    reason: str
    message: str
    #: The models that ask for autoscaling (``AIStackSpec.autoscaling_of``).
    models: tuple[str, ...]
    #: The Prometheus the ScaledObjects query.
    address: str | None = None


#: The CRD whose presence lets autoscaled models scale.
KEDA_CRD = BY_KIND["ScaledObject"].crd
#: What to install where it is missing (the release the e2e suite runs).
KEDA_INSTALL = (
    "kubectl apply --server-side -f "
    "https://github.com/kedacore/keda/releases/download/v2.21.1/keda-2.21.1.yaml"
)


def autoscaling(stack: AIStack, config: RenderConfig | None = None) -> Autoscaling:
    """ScaledObjects are rendered for the autoscaled models when KEDA's API is there (or
    nobody looked), this installation makes them, a Prometheus is known and the stack's
    monitors, whose series they query, are rendered. Otherwise every model runs at its
    ``replicas``, and the reason says what is missing; it never fails the stack."""
    config = config or RenderConfig()
    spec = stack.spec
    models = tuple(m.name for m in spec.models if spec.autoscaling_of(m) is not None)
    address = spec.monitoring.prometheus_address or config.prometheus_address
    fixed = "the models run at their replicas"

    def off(reason: str, why: str) -> Autoscaling:
        return Autoscaling(False, reason, f"{why}: {fixed}", models, address)

    if not models:
        return Autoscaling(False, "NotRequested", "no model has autoscaling", models, address)
    if not config.manage_keda:
        return off(
            "TurnedOff",
            "the operator's installation makes no ScaledObjects (aistack run --no-keda; the "
            "chart's autoscaling.enabled: false)",
        )
    if config.keda is False:
        return Autoscaling(
            False,
            "KEDAMissing",
            f"the cluster has no KEDA ({KEDA_CRD}): the models run at their replicas until "
            f"it is installed ({KEDA_INSTALL})",
            models,
            address,
        )
    if address is None:
        return off(
            "NoPrometheus",
            "no Prometheus to read the models' load from: set spec.monitoring."
            "prometheusAddress, or the operator's (the chart's autoscaling.prometheusAddress)",
        )
    watched = monitoring(stack, config)
    if not watched.monitors:
        return off("NoMetrics", f"the models' metrics are not scraped ({watched.message})")
    scaled = ", ".join(
        f"{m.name} {a.min_replicas}..{a.max_replicas} on {a.metric} (target {a.per_replica})"
        for m in spec.models
        if (a := spec.autoscaling_of(m)) is not None
    )
    return Autoscaling(True, "Scaling", f"KEDA scales {scaled}, from {address}", models, address)


def endpoints(stack: AIStack, config: RenderConfig | None = None) -> dict[str, str]:
    """In-cluster URLs of the enabled parts (status.endpoints)."""
    config = config or RenderConfig()
    out: dict[str, str] = {}
    for component in enabled(stack):
        out |= component.endpoints(stack, config)
    return out
