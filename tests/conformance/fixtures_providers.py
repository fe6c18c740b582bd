"""Hosted providers behind the real LiteLLM gateway, with loopback stand-ins of their APIs.

A stack with ``spec.gateway.providers`` is written here (not an example: each provider
route's ``apiBase`` must point at a stand-in started by the test) and rendered with
``aistack render``, as the examples are. Then:

- one stand-in per provider API (provider_standins.py, stdlib only), each on an address of
  its own from the :class:`HostMap`, accepting only the key the test puts in the Secret;
- the model servers' stand-ins and the gateway, by :func:`fixtures_gateway.start_gateway`,
  with the rendered Secret references (``AISTACK_PROVIDER_<ROUTE>_KEY``) filled with those
  keys, as the kubelet fills them from the Secret.

The stack is what a user may write: a gateway with providers has its own key
(``authSecretRef``, filled like the provider keys), and only ``openai-compatible`` and
``azure`` routes name an ``apiBase``; the others go to their provider's own endpoint.

Test-side only, so that no request leaves this machine:

- an ``openai-compatible`` route's ``apiBase`` is its stand-in's loopback address (what a
  user writes for their own endpoint);
- a provider with a fixed endpoint (``anthropic``) is rendered without one, and the gateway
  process gets the variable through which LiteLLM itself moves that provider's endpoint
  (``ANTHROPIC_API_BASE``), naming the stand-in: the endpoint translation, as
  ``HF_ENDPOINT`` is for the Hub. The render sets no such variable (``start_gateway``
  refuses a test variable that would replace a rendered one);
- MLflow is off (no trace callback; tracing through the gateway is covered by
  test_gateway.py).
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import yaml
from fixtures_gateway import Gateway, gateway_config, gateway_deployment, start_gateway
from harness import HostMap, Manifest, ProcessSpec, Running

HERE = Path(__file__).resolve().parent
PROVIDER_STANDINS = HERE / "provider_standins.py"
#: the HostMap namespace of the provider stand-ins (outside every stack)
PROVIDER_STANDIN_NAMESPACE = "hosted-providers"
PROVIDERS_NAMESPACE = "providers"
#: the Secret and key of the gateway's own key (``spec.gateway.authSecretRef``)
GATEWAY_KEY_SECRET = ("gateway-key", "key")
#: providers whose routes may name an ``apiBase`` (the others' is their provider's)
API_BASE_PROVIDERS = ("openai-compatible", "azure")
#: provider -> the variable LiteLLM reads that provider's endpoint from when the route
#: names none (litellm/main.py, llms/anthropic/common_utils.py at the pinned version)
ENDPOINT_VARIABLES = {"anthropic": "ANTHROPIC_API_BASE"}


# --------------------------------------------------------------------------- stand-ins


@dataclass
class ProviderStandIn:
    kind: str
    address: str
    port: int
    key: str
    running: Running

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        code, body = harness.http(f"{self.url}/standin/requests")
        assert code == 200, body
        seen: list[dict[str, Any]] = json.loads(body)
        return seen

    def posts(self) -> list[dict[str, Any]]:
        """The POSTs seen (the completions asked for), in order."""
        return [r for r in self.requests() if r["method"] == "POST"]

    def stop(self) -> None:
        self.running.stop()


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def start_provider_standin(
    kind: str, *, name: str, key: str, hosts: HostMap, workdir: Path, log_dir: Path
) -> ProviderStandIn:
    """A stand-in of ``kind``'s API (``openai`` or ``anthropic``) that accepts ``key``."""
    address = hosts.add(name, PROVIDER_STANDIN_NAMESPACE)
    # A free port on that address (a fixed one may be taken on all addresses, e.g. 8080).
    port = _free_port(address)
    argv = [
        sys.executable,
        str(PROVIDER_STANDINS),
        kind,
        "--host",
        address,
        "--port",
        str(port),
        "--key",
        key,
    ]
    spec = ProcessSpec(argv=argv, env={}, workdir=workdir / name)
    running = harness.start(spec, name=name, bin_dir=None, log_dir=log_dir)
    stand_in = ProviderStandIn(kind, address, port, key, running)
    try:
        health = json.loads(running.wait_http(f"{stand_in.url}/health", timeout=30))
        assert health == {"status": "ok", "standin": kind}, health  # not another server
    except BaseException:
        running.stop()
        raise
    return stand_in


# --------------------------------------------------------------------------- render


def render_stack(stack: Mapping[str, Any], path: Path) -> list[Manifest]:
    """``aistack render`` of ``stack`` (an AIStack as a dict), written to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(stack), sort_keys=False))
    return harness.render_example(path)


def hybrid_stack(
    name: str,
    *,
    model: str,
    providers: Sequence[Mapping[str, Any]],
    fallbacks: Sequence[Mapping[str, Any]] = (),
    limits: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An AIStack like examples/hybrid.yaml: one model of its own (``model``, served by a
    vLLM stand-in) and hosted ``providers`` behind the same gateway; MLflow off."""
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": name, "namespace": PROVIDERS_NAMESPACE},
        "spec": {
            "models": [
                {
                    "name": model,
                    "source": "Qwen/Qwen2.5-7B-Instruct",
                    "gpus": 1,
                    "maxModelLen": 8192,
                }
            ],
            "mlflow": {"enabled": False},
            "gateway": {
                "authSecretRef": {"name": GATEWAY_KEY_SECRET[0], "key": GATEWAY_KEY_SECRET[1]},
                "providers": [dict(p) for p in providers],
                "fallbacks": [dict(f) for f in fallbacks],
                "limits": [dict(lim) for lim in limits],
            },
        },
    }


def provider_routes(manifests: Sequence[Manifest]) -> dict[str, dict[str, Any]]:
    """Route name -> its ``litellm_params`` in the rendered gateway config."""
    return {r["model_name"]: r["litellm_params"] for r in gateway_config(manifests)["model_list"]}


def gateway_config_text(manifests: Sequence[Manifest]) -> str:
    """The rendered gateway ConfigMap's ``config.yaml``, as written."""
    volumes = gateway_deployment(manifests)["spec"]["template"]["spec"]["volumes"]
    name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
    text: str = harness.find(manifests, "ConfigMap", name)["data"]["config.yaml"]
    return text


def gateway_secret_env(manifests: Sequence[Manifest]) -> dict[str, tuple[str, str]]:
    """The gateway container's env read from Secrets: name -> ``(secret, key)``."""
    deployment = gateway_deployment(manifests)["metadata"]["name"]
    out: dict[str, tuple[str, str]] = {}
    for var in harness.container(manifests, deployment, "gateway").get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            out[var["name"]] = (ref["name"], ref["key"])
    return out


# --------------------------------------------------------------------------- the gateway


@dataclass
class HybridGateway:
    """A rendered hybrid stack's gateway, running, with its provider stand-ins."""

    gateway: Gateway
    #: route name -> the stand-in of its provider's API
    providers: dict[str, ProviderStandIn]
    #: the test-side variables that point fixed-endpoint providers at their stand-ins
    endpoint_env: dict[str, str]

    @property
    def manifests(self) -> list[Manifest]:
        return self.gateway.manifests

    def stop(self) -> None:
        try:
            # A request LiteLLM still holds (over a limit) would keep it from stopping on
            # SIGTERM for the whole grace period: a few seconds, then SIGKILL.
            self.gateway.running.stop(timeout=3)
            self.gateway.stop()
        finally:
            for stand_in in self.providers.values():
                stand_in.stop()


def start_hybrid_gateway(
    name: str,
    *,
    model: str,
    providers: Sequence[Mapping[str, Any]],
    keys: Mapping[str, str],
    gateway_key: str,
    hosts: HostMap,
    workdir: Path,
    log_dir: Path,
    fallbacks: Sequence[Mapping[str, Any]] = (),
    limits: Sequence[Mapping[str, Any]] = (),
) -> HybridGateway:
    """Start a stand-in for each of ``providers`` (each a ProviderSpec without ``apiBase``
    plus ``standin``: ``openai`` or ``anthropic``), render the stack, and start its gateway
    with the Secret values ``keys`` (route -> key), which are also the keys the stand-ins
    accept, and ``gateway_key`` as its own key. An ``openai-compatible`` or ``azure``
    route's ``apiBase`` is set to its stand-in; another provider's endpoint is moved there
    by its variable in :data:`ENDPOINT_VARIABLES`, on the gateway process only."""
    stand_ins: dict[str, ProviderStandIn] = {}
    specs: list[dict[str, Any]] = []
    endpoint_env: dict[str, str] = {}
    try:
        for provider in providers:
            route = provider["name"]
            kind = provider["standin"]
            stand_in = start_provider_standin(
                kind,
                name=f"{name}-{route}-{kind}",
                key=keys[route],
                hosts=hosts,
                workdir=workdir,
                log_dir=log_dir,
            )
            stand_ins[route] = stand_in
            spec = {k: v for k, v in provider.items() if k != "standin"}
            # OpenAI's client appends /chat/completions to a base that ends in /v1; for
            # Anthropic, LiteLLM appends /v1/messages to the base (ensure_api_route).
            base = stand_in.url + ("/v1" if kind == "openai" else "")
            if spec["provider"] in API_BASE_PROVIDERS:
                spec["apiBase"] = base
            else:
                variable = ENDPOINT_VARIABLES[spec["provider"]]
                if endpoint_env.setdefault(variable, base) != base:
                    raise AssertionError(f"two {spec['provider']} routes: one {variable}")
            specs.append(spec)
        stack = hybrid_stack(name, model=model, providers=specs, fallbacks=fallbacks, limits=limits)
        manifests = render_stack(stack, workdir / f"{name}.yaml")
        secrets = {
            (p["credentialsSecretRef"]["name"], p["credentialsSecretRef"]["key"]): keys[p["name"]]
            for p in specs
        }
        secrets[GATEWAY_KEY_SECRET] = gateway_key
        gateway = start_gateway(
            manifests,
            hosts=hosts,
            workdir=workdir,
            log_dir=log_dir,
            secrets=secrets,
            key=gateway_key,
            extra_env=endpoint_env,
        )
    except BaseException:
        for stand_in in stand_ins.values():
            stand_in.stop()
        raise
    return HybridGateway(gateway, stand_ins, endpoint_env)
