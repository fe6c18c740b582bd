"""The API models: defaults, and every rule that refuses a bad spec."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aistack import names
from aistack.api import AIStack, rules
from helpers import stack, stack_doc


def errors_of(doc: dict) -> str:
    with pytest.raises(ValidationError) as info:
        AIStack.model_validate(doc)
    return str(info.value)


def test_one_model_and_nothing_else_is_a_whole_stack() -> None:
    s = stack(models=[{"name": "m", "source": "org/model"}])
    model = s.spec.models[0]
    assert (model.replicas, model.gpus, model.nodes) == (1, 1, 1)
    assert model.effective_tp == 1
    assert model.pipeline_parallel_size == 1
    assert s.spec.ray.enabled and s.spec.mlflow.enabled and s.spec.gateway.enabled
    assert s.spec.mlflow.needs_pvc
    assert s.spec.mlflow.storage.delete_with_stack is False
    assert s.spec.vllm.gpu_memory_utilization == 0.9


def test_camel_case_on_the_wire_and_snake_case_in_python() -> None:
    s = stack(models=[{"name": "m", "source": "o/m", "tensorParallelSize": 1, "maxModelLen": 4096}])
    assert s.spec.models[0].max_model_len == 4096
    dumped = s.model_dump(exclude_none=True)
    assert dumped["spec"]["models"][0]["maxModelLen"] == 4096
    assert "max_model_len" not in dumped["spec"]["models"][0]


@pytest.mark.parametrize(
    ("gpus", "tp", "nodes", "pp"),
    [(1, None, 1, 1), (4, 4, 1, 1), (4, 2, 1, 2), (8, None, 2, 2), (8, 4, 2, 4)],
)
def test_parallelism_follows_gpus_nodes_and_tp(
    gpus: int, tp: int | None, nodes: int, pp: int
) -> None:
    model = {"name": "m", "source": "o/m", "gpus": gpus, "nodes": nodes, "image": "r/vllm-ray:1"}
    if tp is not None:
        model["tensorParallelSize"] = tp
    m = stack(models=[model]).spec.models[0]
    assert m.effective_tp == (tp or gpus)
    assert m.pipeline_parallel_size == pp
    assert m.spans_nodes == (nodes > 1)


def test_tensor_parallel_size_must_divide_gpus() -> None:
    doc = stack_doc(models=[{"name": "m", "source": "o/m", "gpus": 4, "tensorParallelSize": 3}])
    assert rules.TP_DIVIDES_GPUS in errors_of(doc)


def test_duplicate_model_names_are_named() -> None:
    doc = stack_doc(models=[{"name": "a", "source": "o/m"}, {"name": "a", "source": "o/n"}])
    msg = errors_of(doc)
    assert rules.UNIQUE_MODELS in msg and ": a" in msg


def test_duplicate_worker_groups_are_refused() -> None:
    doc = stack_doc(ray={"workerGroups": [{"name": "cpu"}, {"name": "cpu"}]})
    assert rules.UNIQUE_WORKER_GROUPS in errors_of(doc)


@pytest.mark.parametrize("name", ["Upper", "1digit", "under_score", "trailing-", "a" * 47])
def test_model_names_are_dns_labels_within_budget(name: str) -> None:
    errors_of(stack_doc(models=[{"name": name, "source": "o/m"}]))


def test_stack_and_model_name_together_stay_within_a_dns_label() -> None:
    stack_name = "s" * names.STACK_NAME_MAX
    fits = "m" * (names.MODEL_NAME_BUDGET - names.STACK_NAME_MAX)
    stack(name=stack_name, models=[{"name": fits, "source": "o/m"}])
    doc = stack_doc(name=stack_name, models=[{"name": fits + "x", "source": "o/m"}])
    msg = errors_of(doc)
    assert rules.MODEL_NAME_LENGTH in msg and fits + "x" in msg


@pytest.mark.parametrize("other", ["a-g0", "a-g12-leader", "a-g3-worker"])
def test_a_model_name_may_not_be_a_multi_node_models_object_name(other: str) -> None:
    doc = stack_doc(models=[{"name": "a", "source": "o/m", "nodes": 2, "image": "r/v:1"},
                            {"name": other, "source": "o/m"}])  # fmt: skip
    msg = errors_of(doc)
    assert rules.MODEL_NAME_CLASH in msg and other in msg


@pytest.mark.parametrize("other", ["a-guard", "a-g0x", "a-gpu", "ab-g0", "a-g-leader"])
def test_similar_model_names_are_fine(other: str) -> None:
    stack(models=[{"name": "a", "source": "o/m"}, {"name": other, "source": "o/m"}])


def test_stack_name_must_be_short_dns_1035() -> None:
    assert rules.STACK_NAME in errors_of(stack_doc(name="s" * (names.STACK_NAME_MAX + 1)))
    assert rules.STACK_NAME in errors_of(stack_doc(name="9lives"))


def test_worker_group_name_budget() -> None:
    stack_name = "s" * names.STACK_NAME_MAX
    group = "g" * (names.RAY_GROUP_BUDGET - names.STACK_NAME_MAX + 1)
    doc = stack_doc(name=stack_name, ray={"workerGroups": [{"name": group}]})
    assert rules.WORKER_GROUP_NAME_LENGTH in errors_of(doc)


@pytest.mark.parametrize(
    "source",
    [
        "mistralai/Mistral-7B-Instruct-v0.3",
        "gpt2",
        "pvc://weights/llama/8b",
        "pvc://weights",
        "s3://my-bucket/models/qwen",
    ],
)
def test_sources_that_are_accepted(source: str) -> None:
    stack(models=[{"name": "m", "source": source}])


@pytest.mark.parametrize(
    "source", ["", "http://example.com/model", "pvc://Bad_Claim/x", "s3://", "org/model/extra"]
)
def test_sources_that_are_refused(source: str) -> None:
    assert "source" in errors_of(stack_doc(models=[{"name": "m", "source": source}]))


def test_cache_needs_exactly_one_of_size_or_claim() -> None:
    for cache in ({}, {"size": "10Gi", "existingClaim": "c"}):
        doc = stack_doc(models=[{"name": "m", "source": "o/m", "cache": cache}])
        assert rules.CACHE_SIZE_OR_CLAIM in errors_of(doc)


def test_several_mlflow_servers_need_external_stores() -> None:
    assert rules.MLFLOW_REPLICAS in errors_of(stack_doc(mlflow={"replicas": 2}))
    external = {
        "replicas": 2,
        "backendStore": {"uriSecretRef": {"name": "db", "key": "uri"}},
        "artifactStore": {"destinationSecretRef": {"name": "s3", "key": "dest"}},
    }
    s = stack(mlflow=external)
    assert not s.spec.mlflow.needs_pvc


def test_unknown_fields_are_refused_not_dropped() -> None:
    doc = stack_doc(models=[{"name": "m", "source": "o/m", "gpu": 2}])
    assert "gpu" in errors_of(doc)


def test_quantities_accept_kubernetes_forms_only() -> None:
    stack(vllm={"shmSize": "16Gi"})
    stack(vllm={"shmSize": 1024})
    assert "shmSize" in errors_of(stack_doc(vllm={"shmSize": "16 GB"}))


def test_spec_is_required() -> None:
    doc = stack_doc()
    del doc["spec"]
    assert "spec" in errors_of(doc)


def test_a_multi_node_model_on_ray_needs_an_image_with_ray() -> None:
    # vllm/vllm-openai has no Ray: a group on the Ray backend without an image of its own
    # (or a stack-wide one) would crash-loop, so the API refuses it.
    ray = {"backend": "ray"}
    without = stack_doc(
        models=[{"name": "big", "source": "o/m", "gpus": 8, "nodes": 2, "multiNode": ray}]
    )
    msg = errors_of(without)
    assert rules.MULTINODE_IMAGE in msg and "big" in msg
    per_model = stack_doc(
        models=[
            {"name": "big", "source": "o/m", "gpus": 8, "nodes": 2, "multiNode": ray,
             "image": "r/v:1"}
        ]
    )  # fmt: skip
    assert AIStack.model_validate(per_model).spec.models[0].image == "r/v:1"
    stack_wide = stack_doc(
        models=[{"name": "big", "source": "o/m", "gpus": 8, "nodes": 2, "multiNode": ray}],
        vllm={"image": "r/v:1"},
    )
    assert AIStack.model_validate(stack_wide).spec.vllm.image == "r/v:1"


def test_a_multi_node_model_on_vllms_own_backend_needs_no_image() -> None:
    # The default backend is vLLM's own multi-node mode, which the stock image has.
    for multi_node in ({}, {"multiNode": {}}, {"multiNode": {"backend": "vllm"}}):
        doc = stack_doc(
            models=[{"name": "big", "source": "o/m", "gpus": 8, "nodes": 2, **multi_node}]
        )
        model = AIStack.model_validate(doc).spec.models[0]
        assert model.spans_nodes and model.multinode_backend == "vllm" and model.image is None


def test_multi_node_settings_need_a_model_that_spans_nodes() -> None:
    doc = stack_doc(models=[{"name": "one", "source": "o/m", "multiNode": {"backend": "vllm"}}])
    assert rules.MULTINODE_ONLY in errors_of(doc)


def test_a_multi_node_models_leaderworkerset_name_fits_what_is_named_after_it() -> None:
    # LWS names a group's worker StatefulSet <lws>-<group>, whose pods carry the label
    # controller-revision-hash: <StatefulSet>-<hash of up to 10>: 63 characters at most.
    # The longest stack and model names still fit: the name is then cut, and a hash of
    # the whole keeps it unique.
    stack_name = "s" * names.STACK_NAME_MAX
    short = names.model_lws("demo", "chat")
    assert short == "demo-vllm-chat-lws"
    longest = "m" * (names.MODEL_NAME_BUDGET - names.STACK_NAME_MAX)
    cut = names.model_lws(stack_name, longest)
    assert len(cut) == names.LWS_NAME_MAX
    assert len(f"{cut}-{names.MAX_REPLICAS - 1}-0123456789") == names.DNS_LABEL_MAX
    other = names.model_lws(stack_name, longest[:-1] + "n")
    assert other != cut and other[:-9] == cut[:-9], "same start, another hash"
    doc = stack_doc(name=stack_name, models=[{"name": longest, "source": "o/m", "nodes": 2}])
    assert AIStack.model_validate(doc).spec.models[0].spans_nodes
