"""A whole stack's manifests: each enabled part's objects, written by its renderer
(``RENDERERS``: the ``render_part`` of the module of this package whose ``PART`` is the
part's name in the registry ``aistack.components``), and what the
registry says of all of them together: the NetworkPolicies (who reaches whom), the
PodMonitors and the PodDisruptionBudgets."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping

import aistack.render as render_package
from aistack import names
from aistack.api.v1alpha1 import AIStack, ModelSpec
from aistack.components import (
    BY_NAME,
    COMPONENTS,
    MODELS,
    Component,
    RenderConfig,
    Scrape,
    autoscaling,
    enabled,
    monitoring,
    scrape_of,
)
from aistack.render.autoscaling import (
    hand_replicas_to_the_scaler,
    render_scaled_objects,
    scaled_models,
)
from aistack.render.common import Manifest, annotate_licensed, block, part_record
from aistack.render.disruption import render_disruption_budgets
from aistack.render.gateway import with_permitted_providers
from aistack.render.models import served_models
from aistack.render.monitoring import render_monitors
from aistack.render.network import Ingress, render_network

#: How a part's objects are written: the stack, the models that are served (permitted),
#: the settings.
Renderer = Callable[[AIStack, list[ModelSpec], RenderConfig], list[Manifest]]


#: Modules of this package that write no part: this one, and the script pods run.
_NOT_PARTS = {"stack", "fetch_s3"}


def _renderers() -> dict[str, Renderer]:
    """Each part's renderer, by its name in the registry: the ``render_part`` of every
    module of this package that names a ``PART``. A new part's module is found without
    an edit here."""
    out: dict[str, Renderer] = {}
    for info in pkgutil.iter_modules(render_package.__path__):
        if info.name in _NOT_PARTS:
            continue
        module = importlib.import_module(f"{render_package.__name__}.{info.name}")
        part = getattr(module, "PART", None)
        if isinstance(part, str):
            out[part] = module.render_part
    return out


RENDERERS: dict[str, Renderer] = _renderers()
assert set(RENDERERS) == {c.name for c in COMPONENTS}, "a part without a renderer, or one too many"


def render(
    stack: AIStack,
    permitted: Mapping[str, bool],
    config: RenderConfig | None = None,
) -> list[Manifest]:
    """Every manifest the stack needs: its NetworkPolicies, then each enabled component's
    objects, in the order of ``COMPONENTS``, then a PodDisruptionBudget for each
    Deployment with more than one replica.

    ``permitted`` maps model, adapter and provider route names to whether the policies
    permit them; a model that is not permitted (or missing from the map) runs no pod and
    gets no gateway route, an adapter that is not is neither loaded nor routed, a draft
    model that is not (``names.speculative_key``) is not used, and a hosted provider that
    is not gets no route (nor its key). A part whose image the stack names
    (``names.image_key``) runs no pod when that image is mapped to False.

    Every Deployment carries a record of what it runs that was judged
    (``names.LICENSED_ANNOTATION``), so that it can be judged again when the stack's spec
    cannot be read.
    """
    config = config or RenderConfig()
    stack = with_permitted_providers(stack, permitted)
    served = served_models(stack, permitted)
    on = enabled(stack)
    manifests: list[Manifest] = []
    if stack.spec.network.policies:
        manifests += render_network(stack, network(stack, on))
    for component in on:
        rendered = RENDERERS[component.name](stack, served, config)
        if component.named_image is not None:
            providers = component.providers(stack) if component.providers else []
            record = part_record(component.named_image(stack.spec), providers)
            annotate_licensed(rendered, record)
        if permitted.get(names.image_key(component.image)) is False:
            block(rendered)
        manifests += rendered
    if monitoring(stack, config).monitors:
        manifests += render_monitors(stack, monitors(stack, on))
    most: dict[str, int] = {}
    scaling = autoscaling(stack, config)
    # Not while the models' image is blocked: they run no pod, and nothing may wake them.
    models_run = MODELS in on and permitted.get(names.image_key(MODELS.image)) is not False
    if scaling.scaled and scaling.address and models_run:
        scaled = scaled_models(stack, served)
        hand_replicas_to_the_scaler(manifests, stack, scaled)
        manifests += render_scaled_objects(stack, scaled, scaling.address)
        most = {
            names.model_base(stack.metadata.name, m.name): a.max_replicas
            for m in scaled
            if (a := stack.spec.autoscaling_of(m)) is not None
        }
    return manifests + render_disruption_budgets(stack, manifests, most)


def monitors(stack: AIStack, on: list[Component]) -> list[tuple[str, dict[str, str], Scrape]]:
    """A monitor per enabled part that serves metrics: its name, its pods, its scrape."""
    name = stack.metadata.name
    out = []
    for c in on:
        scrape = scrape_of(c, stack)
        if scrape is not None:
            out.append((c.name, {**c.pod_selector(name), **(scrape.only or {})}, scrape))
    return out


def network(stack: AIStack, on: list[Component]) -> list[Ingress]:
    """The NetworkPolicies of the enabled parts: each admits the enabled parts it is
    reached by (and ``spec.network.allowFrom``), then one per group of pods that reach
    each other."""
    name = stack.metadata.name
    enabled_names = {c.name for c in on}
    out = [
        Ingress(
            name=names.part(name, c.name),
            selector=c.pod_selector(name),
            sources=[BY_NAME[s].pod_selector(name) for s in c.reached_by if s in enabled_names],
            port=c.port,
            public=c.public,
            # Never a public part's port: the gateway's metrics are on its API port, and a
            # scraper must not get the whole API (and the providers' keys behind it).
            metrics_port=scrape.port if (scrape := scrape_of(c, stack)) and not c.public else None,
        )
        for c in on
    ]
    for c in on:
        for group, selector in c.groups(stack) if c.groups else []:
            out.append(Ingress(name=group, selector=selector, sources=[selector]))
    return out
