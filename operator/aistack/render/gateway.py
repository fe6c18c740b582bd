"""The gateway: LiteLLM's Deployment, its config (the routes to the models and the hosted
providers) and its Service."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

from aistack import names
from aistack.api.v1alpha1 import AIStack, ModelSpec, ProviderSpec
from aistack.components import (
    GATEWAY_PORT,
    RenderConfig,
    autoscaling,
    gateway_exports_metrics,
    mlflow_uri,
    model_url,
    namespace_of,
)
from aistack.render.common import (
    Manifest,
    checksum,
    container_resources,
    container_security,
    fill_template,
    pod_security,
    secret_env,
)

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


def _routes(stack: AIStack, served: list[ModelSpec], config: RenderConfig) -> list[dict[str, Any]]:
    """One route per permitted, deployed model and per permitted adapter of it (to the same
    server: vLLM serves an adapter under its name), one per permitted hosted provider; with
    their limits."""
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
    for limit in gateway.limits:
        for route in (r for r in model_list if r["model_name"] == limit.route):
            if limit.rpm is not None:
                # LiteLLM 1.110.2 admits a route only while its count in the minute
                # + 1 < rpm (BerriAI/litellm#33032): rendered one higher, the route
                # gets exactly the requests the spec allows (conformance-tested).
                route["litellm_params"]["rpm"] = limit.rpm + LITELLM_RPM_OFFSET
            if limit.tpm is not None:
                route["litellm_params"]["tpm"] = limit.tpm
    return model_list


def _router(stack: AIStack, routed: set[str]) -> dict[str, Any]:
    gateway = stack.spec.gateway
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
    # Tries of a failed route before its fallbacks, and the wait between them (unset:
    # LiteLLM's defaults, 2 and 0; conformance-tested, with their order).
    if gateway.retries is not None:
        router["num_retries"] = gateway.retries
    if gateway.retry_after_seconds is not None:
        router["retry_after"] = gateway.retry_after_seconds
    return router


#: The gateway's hold (aistack/data/gateway_hold.py), as its config directory holds it: a
#: callback module beside config.yaml, and the routes it holds.
HOLD_MODULE = "aistack_hold"
HOLD_ROUTES = "hold.json"


def hold_routes(
    stack: AIStack, served: list[ModelSpec], config: RenderConfig
) -> dict[str, dict[str, Any]]:
    """The routes whose requests the gateway holds while their model sleeps (the served
    models with ``autoscaling.minReplicas: 0``, while KEDA scales them, and their adapters):
    route -> the model whose server answers it, and how long to wait for it."""
    if not autoscaling(stack, config).scaled:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for m in served:
        scaling = stack.spec.autoscaling_of(m)
        if scaling is not None and scaling.sleeps:
            for route in [m.name, *(a.name for a in m.adapters)]:
                out[route] = {"model": m.name, "wait": scaling.wake_timeout_seconds}
    return out


def hold_files(holds: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The gateway ConfigMap's keys beside config.yaml that make its hold (none without)."""
    if not holds:
        return {}
    source = resources.files("aistack").joinpath("data/gateway_hold.py").read_text()
    return {
        f"{HOLD_MODULE}.py": source,
        HOLD_ROUTES: json.dumps(holds, indent=2, sort_keys=True) + "\n",
    }


def _callbacks(stack: AIStack, holds: bool) -> list[str]:
    callbacks: list[str] = []
    if holds:
        # Before the others: a held request is not yet an attempt (no span, no failure).
        callbacks.append(f"{HOLD_MODULE}.proxy_handler_instance")
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
    return callbacks


def gateway_config(
    stack: AIStack,
    served: list[ModelSpec],
    config: RenderConfig,
    holds: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """LiteLLM proxy configuration: one route per permitted, deployed model, and one per
    permitted adapter of it, to the same server (vLLM serves an adapter under its name),
    and one per permitted hosted provider; then fallbacks and limits between them.
    ``holds``: ``hold_routes`` when the caller has it already (computed here otherwise)."""
    model_list = _routes(stack, served, config)
    cfg: dict[str, Any] = {"model_list": model_list}
    if router := _router(stack, {r["model_name"] for r in model_list}):
        cfg["router_settings"] = router
    if holds is None:
        holds = hold_routes(stack, served, config)
    if callbacks := _callbacks(stack, bool(holds)):
        cfg["litellm_settings"] = {"callbacks": callbacks}
    if stack.spec.mlflow.enabled:
        # A client's W3C trace context (its `traceparent`) goes on to the model servers, so
        # that the gateway's span and vLLM's join the client's trace in MLflow. Only the
        # client's: LiteLLM 1.110.2 writes its own span after the answer (in its logging
        # callback), so no span of the gateway is there to be the parent while the model
        # server is called (README, Tracing).
        cfg["litellm_settings"]["forward_traceparent_to_llm_provider"] = True
    if stack.spec.gateway.auth_secret_ref is not None:
        cfg["general_settings"] = {"master_key": "os.environ/LITELLM_MASTER_KEY"}
    else:
        # No key asked for: an open gateway, reachable only as the NetworkPolicies allow.
        # LiteLLM (from 1.110) refuses to start without a master key unless told so.
        cfg["general_settings"] = {"dangerously_permit_weak_or_unset_master_key": True}
    return cfg


#: The registry's part this module writes (``aistack.components``).
PART = "gateway"


def render_part(stack: AIStack, served: list[ModelSpec], config: RenderConfig) -> list[Manifest]:
    """The part's objects (``render.stack`` finds this function by ``PART``)."""
    return render_gateway(stack, served, config)


def render_gateway(stack: AIStack, served: list[ModelSpec], config: RenderConfig) -> list[Manifest]:
    stack_name = stack.metadata.name
    gateway = stack.spec.gateway
    holds = hold_routes(stack, served, config)
    config_text = yaml.safe_dump(gateway_config(stack, served, config, holds), sort_keys=False)
    files = hold_files(holds)
    env: list[dict[str, Any]] = []
    if gateway.auth_secret_ref is not None:
        env.append(secret_env("LITELLM_MASTER_KEY", gateway.auth_secret_ref))
    env += [secret_env(provider_key_env(p), p.credentials_secret_ref) for p in gateway.providers]
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
    return fill_template(
        "gateway.yaml.j2",
        namespace=namespace_of(stack),
        name=names.gateway(stack_name),
        config_name=names.gateway_config(stack_name),
        gateway=gateway,
        image=gateway.image or config.images["gateway"],
        labels=names.common_labels(stack_name, "gateway", "litellm"),
        selector=names.selector_labels(stack_name, "gateway"),
        config_text=config_text,
        files=files,
        checksum_annotation=names.CONFIG_CHECKSUM_ANNOTATION,
        checksum=checksum(config_text + "".join(files[k] for k in sorted(files))),
        env=env,
        resources=container_resources(gateway.resources),
        port=GATEWAY_PORT,
        pod_security=pod_security(),
        container_security=container_security(),
    )
