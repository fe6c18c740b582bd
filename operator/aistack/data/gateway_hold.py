"""The stack's gateway (LiteLLM proxy) loads this file as a callback, from its config
directory, where the operator puts it with ``hold.json`` (aistack.render.gateway).

A request for a model that may sleep (``autoscaling.minReplicas: 0``) is held while the
model's Service accepts no connection (no ready replica: Kubernetes refuses them), checked
every POLL_SECONDS, for up to the model's ``wakeTimeoutSeconds``; then it goes on to the
router, which answers it (or, after that wait, fails as it would have). While it is held,
``aistack_gateway_held_requests{model}`` counts it: the stack's PodMonitor scrapes that
gauge from the gateway's /metrics, and the model's ScaledObject wakes the model on it.

LiteLLM's own retries cannot do this: its wait between tries grows to 8 seconds, so a
model that wakes is found up to 8 seconds late (docs/autoscaling.md has the measurements).

``hold.json``: route name -> {"model": the model whose server answers it, "wait": seconds}.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from litellm.integrations.custom_logger import CustomLogger
from prometheus_client import Gauge

POLL_SECONDS = 0.1
#: How long one connection attempt may take (a network plugin may drop, not refuse).
CONNECT_SECONDS = 0.5
ROUTES: dict[str, dict[str, Any]] = json.loads(Path(__file__).with_name("hold.json").read_text())
HELD = Gauge(
    "aistack_gateway_held_requests",
    "Requests the gateway holds until the model they are for has a ready replica.",
    ["model"],
)
for _route in ROUTES.values():
    HELD.labels(model=_route["model"])  # at 0 from the start: the query always has a series


def _backends(route: str) -> list[tuple[str, int]]:
    """Host and port of each server the router sends ``route`` to."""
    from litellm.proxy.proxy_server import llm_router

    if llm_router is None:
        return []
    out = []
    for deployment in llm_router.get_model_list(model_name=route) or []:
        base = (deployment.get("litellm_params") or {}).get("api_base")
        if base:
            url = urlsplit(base)
            if url.hostname:
                out.append((url.hostname, url.port or (443 if url.scheme == "https" else 80)))
    return out


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_SECONDS)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


class HoldWhileAsleep(CustomLogger):  # type: ignore[misc]
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        route = data.get("model")
        hold = ROUTES.get(route) if isinstance(route, str) else None
        backends = _backends(route) if hold is not None and isinstance(route, str) else []
        if hold is None or not backends:
            return data
        deadline = time.monotonic() + float(hold["wait"])
        gauge = None
        try:
            while True:
                for host, port in backends:
                    if await _accepts(host, port):
                        return data
                if time.monotonic() > deadline:
                    return data  # the router answers, as it would have without the hold
                if gauge is None:
                    gauge = HELD.labels(model=hold["model"])
                    gauge.inc()
                await asyncio.sleep(POLL_SECONDS)
        finally:
            if gauge is not None:
                gauge.dec()


proxy_handler_instance = HoldWhileAsleep()
