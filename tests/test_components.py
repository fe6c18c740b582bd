"""The components registry: each part of the stack described once, and the description
true to what the part renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack import names
from aistack.api.v1alpha1 import Endpoints
from aistack.components import COMPONENTS, IMAGED, MODELS, RenderConfig, endpoints
from aistack.render import RENDERERS, render
from aistack.status import CONDITION_TYPES
from helpers import EXAMPLES, all_permitted, example, stack


def test_names_conditions_and_images_are_unique_and_real() -> None:
    assert len({c.name for c in COMPONENTS}) == len(COMPONENTS)
    assert len({c.condition for c in COMPONENTS}) == len(COMPONENTS)
    assert len({c.image for c in COMPONENTS}) == len(COMPONENTS)
    assert len({c.program for c in COMPONENTS}) == len(COMPONENTS)
    assert RenderConfig().images == {c.image: c.default_image for c in IMAGED}
    assert len({c.image for c in IMAGED}) == len(IMAGED)
    assert CONDITION_TYPES[2:-2] == tuple(c.condition for c in COMPONENTS)
    assert CONDITION_TYPES[-2:] == ("Monitoring", "Autoscaling")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).stem)
def test_each_part_renders_the_workloads_it_reports_on(path: Path) -> None:
    s = example(path)
    permitted = all_permitted(s)
    served = list(s.spec.models)
    for c in COMPONENTS:
        if not c.enabled(s.spec):
            continue
        objs = RENDERERS[c.name](s, served, RenderConfig())
        deployments = {o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"}
        assert set(c.workloads(s)) == deployments, c.name
        for o in objs:
            if o["kind"] == "Deployment":
                labels = o["spec"]["template"]["metadata"]["labels"]
                selector = c.pod_selector(s.metadata.name)
                assert selector.items() <= labels.items(), (c.name, o["metadata"]["name"])
    assert render(s, permitted)  # the whole stack still renders


def test_a_disabled_part_renders_nothing_and_has_no_endpoint() -> None:
    s = stack(models=[], ray={"enabled": False}, mlflow={"enabled": False})
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render(s, {})}
    assert kinds == {
        ("NetworkPolicy", "demo-gateway"),
        ("ConfigMap", "demo-gateway-config"),
        ("Deployment", "demo-gateway"),
        ("Service", "demo-gateway"),
    }, "only the gateway and its policy"
    assert set(endpoints(s)) == {"gateway"}


def test_endpoints_are_fields_of_the_status() -> None:
    s = stack()
    for key in endpoints(s):
        assert any(f.alias == key or name == key for name, f in Endpoints.model_fields.items()), key


def test_operator_images_override_the_built_in_defaults_and_unknown_keys_are_refused() -> None:
    config = RenderConfig(images={"ray": "registry.local/ray:1", "vllm": ""})
    assert config.images["ray"] == "registry.local/ray:1"
    assert config.images["vllm"] == next(c for c in COMPONENTS if c.image == "vllm").default_image
    with pytest.raises(ValueError, match="qdrant is not a component's image key"):
        RenderConfig(images={"qdrant": "qdrant/qdrant:1"})


def test_a_part_name_fits_beside_the_longest_stack_name() -> None:
    from aistack import names

    longest = "s" * names.STACK_NAME_MAX
    assert len(names.part(longest, "p" * names.PART_MAX)) == names.DNS_LABEL_MAX
    with pytest.raises(ValueError, match="not 1 to 22 characters"):
        names.part(longest, "p" * (names.PART_MAX + 1))


def test_the_images_the_policies_judge_are_the_ones_each_part_names() -> None:
    # The license decision cannot read the registry (licensing imports no render code): it
    # reads the same spec fields, and this holds the two to one list of parts.
    from aistack.licenses import decide_stack

    s = stack(
        ray={"image": "ghcr.io/acme/ray:1"},
        mlflow={"image": "ghcr.io/acme/mlflow:1"},
        gateway={"image": "ghcr.io/acme/litellm:1"},
    )
    named = {
        names.image_key(c.image): c.named_image(s.spec)
        for c in COMPONENTS
        if c.named_image is not None
    }
    judged = {k for k in decide_stack(s, []) if k.startswith(names.image_key(""))}
    assert judged == set(named) and None not in named.values()
    assert [c for c in COMPONENTS if c.named_image is None] == [MODELS]
