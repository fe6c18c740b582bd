"""Properties of the renderer over generated specs (hypothesis): for every spec the API
accepts, render does not raise, every name it produces is a valid DNS name of its kind,
and no two objects share a kind, namespace and name."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aistack import names
from aistack.api.v1alpha1 import AIStack
from aistack.components import RenderConfig
from aistack.render import render
from helpers import all_permitted

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def dns_label(max_size: int) -> st.SearchStrategy[str]:
    return st.from_regex(rf"\A[a-z](?:[-a-z0-9]{{0,{max_size - 2}}}[a-z0-9])?\Z")


quantity = st.sampled_from(["1", "500m", "2", "1Gi", "16Gi", "100Mi"])
resources = st.fixed_dictionaries(
    {},
    optional={
        "requests": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantity, max_size=2),
        "limits": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantity, max_size=2),
    },
)
sources = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}/[A-Za-z0-9][A-Za-z0-9_.-]{0,30}\Z"),
    st.builds(lambda c, p: f"pvc://{c}/{p}", dns_label(20), st.from_regex(r"\A[a-z0-9/]{1,20}\Z")),
    st.builds(lambda b, p: f"s3://{b}/{p}", dns_label(20), st.from_regex(r"\A[a-z0-9/]{0,20}\Z")),
)


@st.composite
def model(draw: st.DrawFn, name: str) -> dict[str, Any]:
    gpus = draw(st.sampled_from([1, 2, 4, 8]))
    doc: dict[str, Any] = {"name": name, "source": draw(sources), "gpus": gpus}
    if draw(st.booleans()):
        doc["nodes"] = draw(st.integers(1, 4))
        if doc["nodes"] > 1 and draw(st.booleans()):
            # On Ray a group needs an image with Ray (the default vLLM image has none).
            doc["multiNode"] = {"backend": "ray"}
            doc["image"] = "r/vllm-ray:1"
    if draw(st.booleans()):
        doc["replicas"] = draw(st.integers(0, names.MAX_REPLICAS))
    if draw(st.booleans()):
        doc["tensorParallelSize"] = draw(
            st.sampled_from([d for d in (1, 2, 4, 8) if gpus % d == 0])
        )
    if draw(st.booleans()):
        doc["maxModelLen"] = draw(st.integers(256, 131072))
    if draw(st.booleans()):
        doc["cache"] = draw(
            st.one_of(
                st.fixed_dictionaries({"size": quantity}),
                st.fixed_dictionaries({"existingClaim": dns_label(30)}),
            )
        )
    if draw(st.booleans()):
        doc["resources"] = draw(resources)
    if draw(st.booleans()):
        doc["license"] = draw(st.sampled_from(["MIT", "Apache-2.0", "CC-BY-NC-4.0"]))
    return doc


@st.composite
def stacks(draw: st.DrawFn) -> dict[str, Any]:
    stack_name = draw(dns_label(names.STACK_NAME_MAX))
    model_names = draw(st.lists(dns_label(names.MODEL_NAME_BUDGET), max_size=4, unique=True))
    group_names = draw(st.lists(dns_label(20), max_size=3, unique=True))
    spec: dict[str, Any] = {
        "models": [draw(model(n)) for n in model_names],
        "ray": {
            "enabled": draw(st.booleans()),
            "workerGroups": [
                {"name": g, "replicas": draw(st.integers(0, 8)), "gpus": draw(st.integers(0, 8))}
                for g in group_names
            ],
        },
        "mlflow": {
            "enabled": draw(st.booleans()),
            "replicas": draw(st.integers(0, 3)),
        },
        "gateway": {"enabled": draw(st.booleans()), "replicas": draw(st.integers(0, 4))},
    }
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": stack_name, "namespace": draw(dns_label(30))},
        "spec": spec,
    }


def _valid_stack(doc: dict[str, Any]) -> AIStack:
    try:
        return AIStack.model_validate(doc)
    except ValidationError:
        assume(False)  # not a spec the API accepts: says nothing about render
        raise


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=stacks(), permitted=st.booleans())
def test_render_never_raises_and_names_are_valid_and_unique(
    doc: dict[str, Any], permitted: bool
) -> None:
    stack = _valid_stack(doc)
    out = render(stack, {m.name: permitted for m in stack.spec.models}, RenderConfig())
    seen: set[tuple[str, str, str]] = set()
    for obj in out:
        meta = obj["metadata"]
        name = meta["name"]
        # Services need DNS-1035 labels; everything we render stays within the stricter rule.
        assert len(name) <= names.DNS_LABEL_MAX, name
        assert DNS_1035.match(name), name
        assert meta["namespace"] == stack.metadata.namespace
        key = (obj["kind"], meta["namespace"], name)
        assert key not in seen, f"two objects named {key}"
        seen.add(key)
        for value in meta.get("labels", {}).values():
            assert len(value) <= names.DNS_LABEL_MAX and LABEL_VALUE.match(value), value
        spec = obj.get("spec", {})
        for port in (
            spec.get("template", {}).get("spec", {}).get("containers", [{}])[0].get("ports", [])
        ):
            assert len(port.get("name", "")) <= 15, port
    # Every model has its server; one whose license is not permitted runs no pod.
    for m in stack.spec.models:
        prefix = f"{stack.metadata.name}-vllm-{m.name}"
        servers = [o for o in out if o["kind"] in ("Deployment", "LeaderWorkerSet")
                   and o["metadata"]["labels"].get(names.MODEL_LABEL) == m.name
                   and o["metadata"]["name"].startswith(prefix)]  # fmt: skip
        # One Deployment, or (nodes > 1) one LeaderWorkerSet of a group per replica.
        kind = "LeaderWorkerSet" if m.nodes > 1 else "Deployment"
        assert [o["kind"] for o in servers] == [kind], m.name
        if not permitted:
            assert {d["spec"]["replicas"] for d in servers} == {0}, m.name


@settings(max_examples=40, deadline=None)
@given(doc=stacks())
def test_render_is_deterministic(doc: dict[str, Any]) -> None:
    stack = _valid_stack(doc)
    permitted = all_permitted(stack)
    assert render(stack, permitted) == render(stack, permitted)
