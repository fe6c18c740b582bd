"""vLLM conformance of speculative decoding (``spec.models[].speculative``): vLLM itself
(the default image's version and packages) judges the rendered ``--speculative-config``
the way ``vllm serve`` does before it loads weights (vllm_check.py: parser, serve
validation, ``create_engine_config``, which builds vLLM's ``SpeculativeConfig`` and, for a
draft model, the draft's own ``ModelConfig`` from its config read offline).

One stack, rendered with ``aistack render``, with a model per case:

- a Hugging Face draft (Llama-3.2-1B for Llama-3.1-8B) pinned to a commit: vLLM settles on
  ``draft_model``, the draft's repo at that commit (seeded there and at no other revision,
  so a draft read at ``main`` fails), the tokens asked for, and runs the draft at the
  model's tensor-parallel size;
- a draft on a claim of its own: vLLM loads it from the rendered path under
  ``/mnt/claims/<claim>``, the claim's read-only mount (the harness maps that path to the
  claim's host directory, inside the JSON value);
- a draft on the model's own claim: under ``/mnt/models``, with no second volume;
- ``ngram``: no draft weights, the tokens asked for;
- live: a draft whose vocabulary is not the model's (Qwen2.5-0.5B's embedding has 151936
  rows, Qwen2.5-7B's 152064) is rendered as asked and refused by vLLM; so are, as variants
  of the rendered command lines, the pinned draft read at ``main``, a claim path that holds
  no model, and zero tokens (below the API's lower bound), while the API's upper bound is
  accepted.

Not proven here: that a draft speeds anything up or is loaded onto a GPU (no weights), and
the ``eagle``, ``eagle3`` and ``mtp`` methods (their heads need checkpoints of their own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import harness
import pytest
from fixtures_vllm import (
    SPECULATIVE_FLAG,
    CheckJob,
    CheckResult,
    model_config,
    prepare_deployment,
    serve_args,
    speculative_config,
    vllm_check_batch,
    write_model_config,
)
from harness import Manifest, ProcessSpec

from aistack import names
from aistack.api import rules
from aistack.api.v1alpha1 import SpeculativeSpec

STACK = "spec"
NAMESPACE = "speculative"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_DRAFT = "meta-llama/Llama-3.2-1B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"
QWEN_SMALL = "Qwen/Qwen2.5-0.5B-Instruct"
#: pinned commits (any 40-hex ids: the cache seeded here is all vLLM reads)
LLAMA_COMMIT = "0e9e39f249a16976918f6564b8830bc894c89659"
DRAFT_COMMIT = "9213176726f574b556790deb65791e0c5aa438b6"
QWEN_SMALL_COMMIT = "7ae557604adf67be50417f59c2c2f167def9a775"

HF_DRAFT = "llama-hf-draft"
PVC_DRAFT = "llama-pvc-draft"
OWN_CLAIM = "llama-own-claim"
NGRAM = "qwen-ngram"
WITH_LORA = "llama-lora-ngram"
MISMATCHED = "qwen-small-draft"

#: the claims and what the tests put on them (the models whose configs they hold)
DRAFT_CLAIM = "drafts"
MODEL_CLAIM = "models"
ON_CLAIMS = {
    f"pvc://{DRAFT_CLAIM}/llama-3.2-1b-instruct": LLAMA_DRAFT,
    f"pvc://{MODEL_CLAIM}/llama-3.1-8b-instruct": LLAMA,
    f"pvc://{MODEL_CLAIM}/llama-3.2-1b-instruct": LLAMA_DRAFT,
}


def _model(name: str, source: str, speculative: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": source,
        "gpus": 1,
        "maxModelLen": 8192,
        "speculative": speculative,
        **fields,
    }


MODELS = [
    _model(
        HF_DRAFT,
        LLAMA,
        {
            "method": "draft_model",
            "source": LLAMA_DRAFT,
            "revision": DRAFT_COMMIT,
            "numSpeculativeTokens": 3,
        },
        revision=LLAMA_COMMIT,
        gpus=2,
    ),
    _model(
        PVC_DRAFT,
        LLAMA,
        {
            "method": "draft_model",
            "source": f"pvc://{DRAFT_CLAIM}/llama-3.2-1b-instruct",
            "numSpeculativeTokens": 4,
        },
    ),
    _model(
        OWN_CLAIM,
        f"pvc://{MODEL_CLAIM}/llama-3.1-8b-instruct",
        {
            "method": "draft_model",
            "source": f"pvc://{MODEL_CLAIM}/llama-3.2-1b-instruct",
            "numSpeculativeTokens": 2,
        },
    ),
    _model(NGRAM, QWEN, {"method": "ngram", "numSpeculativeTokens": 5}),
    # The most tokens the API admits beside LoRA adapters (rules.SPECULATIVE_WITH_LORA).
    _model(
        WITH_LORA,
        LLAMA,
        {"method": "ngram", "numSpeculativeTokens": rules.MAX_SPECULATIVE_TOKENS_WITH_LORA},
        adapters=[{"name": "support", "source": "org/support-lora", "license": "MIT"}],
    ),
    _model(
        MISMATCHED,
        QWEN,
        {
            "method": "draft_model",
            "source": QWEN_SMALL,
            "revision": QWEN_SMALL_COMMIT,
            "numSpeculativeTokens": 3,
        },
    ),
]
ACCEPTED = [HF_DRAFT, PVC_DRAFT, OWN_CLAIM, NGRAM, WITH_LORA]
#: vLLM 0.34.0's default max-num-batched-tokens and max-num-seqs of its API server on GPUs
#: (``EngineArgs.get_batch_defaults``): under 70 GiB and A100; H100 and H200. The CPU
#: platform of the check has larger room (2048 / 128), so the GPUs' are passed explicitly.
GPU_BATCH_DEFAULTS = [(2048, 256), (8192, 1024)]


def _stack() -> dict[str, Any]:
    return {
        "apiVersion": "aistack.dev/v1alpha1",
        "kind": "AIStack",
        "metadata": {"name": STACK, "namespace": NAMESPACE},
        "spec": {"models": MODELS},
    }


def deployment(model: str) -> str:
    return names.model_base(STACK, model)


def _spec_of(model: str) -> dict[str, Any]:
    return next(m for m in MODELS if m["name"] == model)


def _token_bounds() -> tuple[int, int]:
    """The API's bounds on ``numSpeculativeTokens`` (the pydantic model the CRD is made
    from)."""
    metadata = SpeculativeSpec.model_fields["num_speculative_tokens"].metadata
    low = next(m.ge for m in metadata if isinstance(m, annotated_types.Ge))
    high = next(m.le for m in metadata if isinstance(m, annotated_types.Le))
    assert isinstance(low, int) and isinstance(high, int), (low, high)
    return low, high


def _with_speculative(job: CheckJob, **changes: Any) -> CheckJob:
    """``job`` with keys of its ``--speculative-config`` JSON changed (``None``: dropped)."""
    config = speculative_config(job.args)
    assert config is not None
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    i = job.args.index(SPECULATIVE_FLAG)
    args = [*job.args[: i + 1], json.dumps(config, separators=(",", ":")), *job.args[i + 2 :]]
    return CheckJob(args, job.env)


def _with_batch(job: CheckJob, tokens: int, seqs: int) -> CheckJob:
    """``job`` with a GPU's default batch sizes, as vLLM would settle on them there."""
    extra = ["--max-num-batched-tokens", str(tokens), "--max-num-seqs", str(seqs)]
    return CheckJob([*job.args, *extra], job.env)


@dataclass
class Checked:
    manifests: list[Manifest]
    specs: dict[str, ProcessSpec]
    results: dict[str, CheckResult]


@pytest.fixture(scope="module")
def checked(vllm_env: Path, suite_dir: Path) -> Checked:
    workdir = suite_dir / "vllm-speculative"
    path = harness.write_documents(workdir / "speculative.yaml", [_stack()])
    manifests = harness.render_example(path)
    specs: dict[str, ProcessSpec] = {}
    jobs: dict[str, CheckJob] = {}
    # One work directory for all, so that every /cache is one host directory (one HF_HOME
    # per batch). Volumes are host directories by volume name: that is sound only while no
    # volume name stands for two claims.
    claims: dict[str, set[str]] = {}
    for model in [m["name"] for m in MODELS]:
        for volume in harness.pod_spec(manifests, deployment(model))["volumes"]:
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                claims.setdefault(volume["name"], set()).add(claim)
        spec, job = prepare_deployment(manifests, deployment(model), workdir)
        specs[model], jobs[model] = spec, job
    assert all(len(c) == 1 for c in claims.values()), claims
    # The files a claim holds, where the pod reads them (there is no cache to seed).
    for model, spec in specs.items():
        container = harness.container(manifests, deployment(model))
        for source in [_spec_of(model)["source"], _spec_of(model)["speculative"].get("source")]:
            if source in ON_CLAIMS:
                write_model_config(spec.host_path(_pod_path(container, source)), ON_CLAIMS[source])
    low, high = _token_bounds()
    empty = specs[PVC_DRAFT].host_path(f"/mnt/claims/{DRAFT_CLAIM}/not-a-model")
    empty.mkdir(parents=True, exist_ok=True)
    jobs.update(
        {
            # Without the rendered revision vLLM reads main, where the draft is not: the
            # revision in the JSON is what picks it.
            "draft-at-main": _with_speculative(jobs[HF_DRAFT], revision=None),
            # The rendered path is what vLLM reads: a directory of the claim without a
            # model is refused.
            "draft-not-on-claim": _with_speculative(jobs[PVC_DRAFT], model=str(empty)),
            "tokens-below-api": _with_speculative(jobs[HF_DRAFT], num_speculative_tokens=low - 1),
            "tokens-api-max": _with_speculative(jobs[HF_DRAFT], num_speculative_tokens=high),
        }
    )
    lora_max = rules.MAX_SPECULATIVE_TOKENS_WITH_LORA
    for tokens, seqs in GPU_BATCH_DEFAULTS:
        on_gpu = _with_batch(jobs[WITH_LORA], tokens, seqs)
        jobs[f"lora-{tokens}-{seqs}"] = on_gpu
        jobs[f"lora-{tokens}-{seqs}-over"] = _with_speculative(
            on_gpu, num_speculative_tokens=lora_max + 1
        )
    workdir.mkdir(parents=True, exist_ok=True)
    results = vllm_check_batch(list(jobs.values()), home=workdir / "home")
    return Checked(manifests, specs, dict(zip(jobs, results, strict=True)))


def _pod_path(container: dict[str, Any], source: str) -> str:
    """Where the pod reads ``source`` (a pvc:// source of the model or its draft): the
    rendered model positional or the rendered draft path."""
    args: list[str] = [*container.get("command", []), *container.get("args", [])]
    model = args[2]
    draft: str = (speculative_config(args) or {}).get("model", "")
    tail = "/" + source.removeprefix("pvc://").partition("/")[2]
    found = [p for p in (model, draft) if p.endswith(tail)]
    assert len(found) == 1, (source, model, draft)
    return found[0]


def _rendered(checked: Checked, model: str) -> dict[str, Any]:
    """The rendered ``--speculative-config`` of ``model``'s container, as rendered."""
    container = harness.container(checked.manifests, deployment(model))
    config = speculative_config([*container.get("command", []), *container.get("args", [])])
    assert config is not None, f"{model}: no {SPECULATIVE_FLAG} rendered"
    return config


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize("model", ACCEPTED)
def test_vllm_accepts_the_rendered_speculative_config(checked: Checked, model: str) -> None:
    result = checked.results[model]
    assert result.ok, f"{model}: vLLM rejects it at {result.stage}: {result.error}"
    wanted = _spec_of(model)["speculative"]
    v = result.values
    s = v["speculative"]
    assert s is not None, f"{model}: vLLM built no SpeculativeConfig"
    assert s["method"] == wanted["method"]
    assert s["num_speculative_tokens"] == wanted["numSpeculativeTokens"]
    args = serve_args(checked.specs[model])
    assert v["model"] == args[0]
    assert v["served_model_name"] == _flag(args, "--served-model-name") == model


def test_a_hugging_face_draft_runs_at_its_pinned_revision(checked: Checked) -> None:
    s = checked.results[HF_DRAFT].values["speculative"]
    assert _rendered(checked, HF_DRAFT) == {
        "method": "draft_model",
        "num_speculative_tokens": 3,
        "model": LLAMA_DRAFT,
        "revision": DRAFT_COMMIT,
    }
    assert (s["model"], s["revision"]) == (LLAMA_DRAFT, DRAFT_COMMIT)
    # The draft's own ModelConfig: the repo at the pinned commit, read from the cache.
    assert (s["draft_model"], s["draft_revision"]) == (LLAMA_DRAFT, DRAFT_COMMIT)
    assert s["draft_architectures"] == model_config(LLAMA_DRAFT)["architectures"]
    assert s["draft_vocab_size"] == model_config(LLAMA)["vocab_size"]
    # The model's own revision is untouched by the draft's.
    v = checked.results[HF_DRAFT].values
    assert v["revision"] == LLAMA_COMMIT
    # The operator sets no draft parallelism: vLLM runs the draft at the model's.
    assert v["tensor_parallel_size"] == 2
    assert s["draft_tensor_parallel_size"] == v["tensor_parallel_size"]
    assert s["draft_max_model_len"] <= v["max_model_len"] == 8192


def test_a_draft_on_a_claim_is_read_from_the_claims_read_only_mount(checked: Checked) -> None:
    rendered = _rendered(checked, PVC_DRAFT)
    path = f"/mnt/claims/{DRAFT_CLAIM}/llama-3.2-1b-instruct"
    assert rendered == {"method": "draft_model", "num_speculative_tokens": 4, "model": path}
    s = checked.results[PVC_DRAFT].values["speculative"]
    host = str(checked.specs[PVC_DRAFT].host_path(path))
    assert s["model"] == s["draft_model"] == host
    assert s["revision"] is None and s["draft_revision"] is None
    assert s["draft_architectures"] == model_config(LLAMA_DRAFT)["architectures"]
    # The claim's volume, read-only, mounted at that path's claim directory.
    name = deployment(PVC_DRAFT)
    pod = harness.pod_spec(checked.manifests, name)
    mounts = {m["mountPath"]: m for m in harness.container(checked.manifests, name)["volumeMounts"]}
    mount = mounts[f"/mnt/claims/{DRAFT_CLAIM}"]
    assert mount.get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"] == {"claimName": DRAFT_CLAIM, "readOnly": True}


def test_a_draft_on_the_models_own_claim_is_read_beside_the_model(checked: Checked) -> None:
    rendered = _rendered(checked, OWN_CLAIM)
    path = "/mnt/models/llama-3.2-1b-instruct"
    assert rendered == {"method": "draft_model", "num_speculative_tokens": 2, "model": path}
    spec = checked.specs[OWN_CLAIM]
    v = checked.results[OWN_CLAIM].values
    assert v["model_path"] == str(spec.host_path("/mnt/models/llama-3.1-8b-instruct"))
    assert v["speculative"]["draft_model"] == str(spec.host_path(path))
    # One claim, one volume: the model's.
    pod = harness.pod_spec(checked.manifests, deployment(OWN_CLAIM))
    claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": MODEL_CLAIM, "readOnly": True}]


def test_ngram_loads_no_draft(checked: Checked) -> None:
    assert _rendered(checked, NGRAM) == {"method": "ngram", "num_speculative_tokens": 5}
    s = checked.results[NGRAM].values["speculative"]
    assert s["draft_model"] is None and s["draft_architectures"] == []
    assert s["revision"] is None
    # Nothing beyond the model's own cache and scratch volumes.
    pod = harness.pod_spec(checked.manifests, deployment(NGRAM))
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]


def test_a_draft_with_another_vocabulary_is_refused(checked: Checked) -> None:
    """The render passes on what the stack asks for; vLLM refuses a draft whose token ids
    do not match the model's, before it loads anything."""
    assert _rendered(checked, MISMATCHED)["model"] == QWEN_SMALL
    result = checked.results[MISMATCHED]
    assert not result.ok, "vLLM accepted a draft with another vocabulary"
    assert result.stage == "engine_config", (result.stage, result.error)
    assert "Target and draft model should have the same vocabulary size" in result.error
    assert f"Target model vocab_size={model_config(QWEN)['vocab_size']}" in result.error
    assert f"Draft model vocab_size={model_config(QWEN_SMALL)['vocab_size']}" in result.error


_NOT_A_MODEL = "Invalid repository ID or local directory specified"


@pytest.mark.parametrize(
    ("job", "messages"),
    [
        ("draft-at-main", [f"{_NOT_A_MODEL}: '{LLAMA_DRAFT}'"]),
        ("draft-not-on-claim", [_NOT_A_MODEL, "/not-a-model'"]),
        ("tokens-below-api", ["num_speculative_tokens", "greater than 0"]),
    ],
)
def test_vllm_speculative_checks_are_live(checked: Checked, job: str, messages: list[str]) -> None:
    result = checked.results[job]
    assert not result.ok, f"{job} passed vLLM's check"
    assert result.stage == "engine_config", (result.stage, result.error)
    for message in messages:
        assert message in result.error, result.error


def test_the_apis_most_speculative_tokens_are_accepted(checked: Checked) -> None:
    _low, high = _token_bounds()
    result = checked.results["tokens-api-max"]
    assert result.ok, f"vLLM rejects {high} tokens at {result.stage}: {result.error}"
    assert result.values["speculative"]["num_speculative_tokens"] == high


@pytest.mark.parametrize(("tokens", "seqs"), GPU_BATCH_DEFAULTS)
def test_speculation_beside_lora_stays_within_what_vllm_starts_on_gpus(
    checked: Checked, tokens: int, seqs: int
) -> None:
    # With LoRA, vLLM refuses max-num-batched-tokens below max-num-seqs * (n + 1): the API's
    # bound beside adapters is the most every GPU's defaults start with, and one more is not.
    most = rules.MAX_SPECULATIVE_TOKENS_WITH_LORA
    result = checked.results[f"lora-{tokens}-{seqs}"]
    assert result.ok, f"{most} tokens beside LoRA refused at {result.stage}: {result.error}"
    assert result.values["speculative"]["num_speculative_tokens"] == most
    assert result.values["enable_lora"]
    over = checked.results[f"lora-{tokens}-{seqs}-over"]
    assert not over.ok, f"{most + 1} tokens beside LoRA passed on {tokens}/{seqs}"
    assert "max_num_batched_tokens" in over.error, over.error
