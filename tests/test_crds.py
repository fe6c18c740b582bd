"""The CRDs: generated from the models, committed, structural, with the rules users hit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from aistack import names
from aistack.api import rules
from aistack.crd import SchemaError, aistack_crd, crd_files, license_policy_crd, structural
from helpers import ROOT

CRD_DIR = ROOT / "crds"


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crds_match_the_models() -> None:
    expected = crd_files()
    on_disk = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    assert set(on_disk) == set(expected), "crds/ has other files than `aistack crds` makes"
    for name, text in expected.items():
        assert on_disk[name] == text, f"crds/{name} is stale: run `make crds`"


@pytest.mark.parametrize("crd", [aistack_crd(), license_policy_crd()], ids=["aistack", "policy"])
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    for path, node in walk(schema_of(crd)):
        assert "$ref" not in node and "title" not in node, path
        assert node.get("default", "x") is not None, f"{path}: null default"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node, path
            assert "type" in node, f"{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, path
        assert isinstance(node.get("exclusiveMinimum", False), bool), path


def test_aistack_crd_shape() -> None:
    crd = aistack_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "aistacks.aistack.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["ais"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["storage"] and version["served"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:5] == ["Ready", "Phase", "Models", "Gateway", "Age"]


def test_license_policy_is_cluster_scoped() -> None:
    assert license_policy_crd()["spec"]["scope"] == "Cluster"


def test_defaults_and_list_maps_reach_the_crd() -> None:
    spec = schema_of(aistack_crd())["properties"]["spec"]
    models = spec["properties"]["models"]
    assert models["x-kubernetes-list-type"] == "map"
    assert models["x-kubernetes-list-map-keys"] == ["name"]
    model = models["items"]["properties"]
    assert model["replicas"]["default"] == 1
    assert model["gpus"]["default"] == 1
    assert model["name"]["maxLength"] == names.MODEL_NAME_BUDGET
    # Nested parts default to {} so their own defaults apply when they are omitted.
    assert spec["properties"]["mlflow"]["default"] == {}
    assert (
        spec["properties"]["mlflow"]["properties"]["storage"]["properties"]["size"]["default"]
        == "10Gi"
    )
    quantity = spec["properties"]["vllm"]["properties"]["shmSize"]
    assert quantity["x-kubernetes-int-or-string"] is True


def test_cel_rules_carry_the_shared_messages() -> None:
    schema = schema_of(aistack_crd())
    root = {v["message"] for v in schema["x-kubernetes-validations"]}
    assert root == {
        rules.STACK_NAME,
        rules.MODEL_NAME_LENGTH,
        rules.WORKER_GROUP_NAME_LENGTH,
        rules.MODEL_NAME_CLASH,
    }
    model = schema["properties"]["spec"]["properties"]["models"]["items"]
    assert rules.TP_DIVIDES_GPUS in {v["message"] for v in model["x-kubernetes-validations"]}
    mlflow = schema["properties"]["spec"]["properties"]["mlflow"]
    assert rules.MLFLOW_REPLICAS in {v["message"] for v in mlflow["x-kubernetes-validations"]}


def test_every_spec_field_is_described() -> None:
    spec = schema_of(aistack_crd())["properties"]["spec"]
    missing = [
        p
        for p, node in walk(spec)
        if p and not p.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert missing == []


def test_files_are_plain_yaml_without_anchors() -> None:
    for path in CRD_DIR.glob("*.yaml"):
        text = path.read_text()
        assert "&id" not in text and "*id" not in text
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"


def test_unions_that_kubernetes_cannot_express_are_refused() -> None:
    with pytest.raises(SchemaError):
        structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {})
