"""The components registry: each part of the stack described once, and the description
true to what the part renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistack.api.v1alpha1 import Endpoints
from aistack.render import COMPONENTS, RenderConfig, endpoints, render
from aistack.status import CONDITION_TYPES
from helpers import EXAMPLES, example, stack


def test_names_conditions_and_images_are_unique_and_real() -> None:
    assert len({c.name for c in COMPONENTS}) == len(COMPONENTS)
    assert len({c.condition for c in COMPONENTS}) == len(COMPONENTS)
    assert len({c.image for c in COMPONENTS}) == len(COMPONENTS)
    settings = RenderConfig.model_fields
    for c in COMPONENTS:
        assert c.image_setting in settings, f"{c.name}: RenderConfig has no {c.image_setting}"
    assert CONDITION_TYPES[2:] == tuple(c.condition for c in COMPONENTS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).stem)
def test_each_part_renders_the_workloads_it_reports_on(path: Path) -> None:
    s = example(path)
    permitted = {m.name: True for m in s.spec.models}
    served = list(s.spec.models)
    for c in COMPONENTS:
        if not c.enabled(s.spec):
            continue
        objs = c.render(s, served, RenderConfig())
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
    }, "only the gateway: no <stack>-internal policy when no part admits the stack's pods"
    assert set(endpoints(s)) == {"gateway"}


def test_endpoints_are_fields_of_the_status() -> None:
    s = stack()
    for key in endpoints(s):
        assert any(f.alias == key or name == key for name, f in Endpoints.model_fields.items()), key
