"""vLLM: the rendered ``vllm serve`` command lines judged by vLLM itself, and stand-ins.

No GPU here, so no model is served. What runs instead, in the vLLM environment (the vLLM
version of the default image with that image's packages, ``envs/vllm.txt``):

- :func:`vllm_check`: ``vllm_check.py`` (vLLM's own ``serve`` parser, serve-argument
  validation and engine-config construction) on the rendered args, with the rendered env.
- :func:`vllm_metrics`: ``vllm_metrics.py`` (vLLM's Prometheus stat logger and metrics
  router on the engine config of the rendered args): what the server serves on ``/metrics``.
- :func:`start_vllm_standin`: once the args passed, the stand-in (``standin.py``) serves the
  rendered ``--served-model-name`` on the rendered port, at its Service's address, from the
  vLLM environment's Python; with a rendered ``--otlp-traces-endpoint`` it emits one span per
  request through vLLM's own tracer setup (``vllm_check.tracing_hook``).

The check reads the model's Hugging Face config offline from the rendered ``HF_HOME`` (a
host directory here); :data:`MODEL_CONFIGS` holds, per model the examples and the tests'
stacks name (speculative decoding's drafts included), a config of the model's architecture
with its published head, layer, vocabulary and position counts (what vLLM's config
validation reads), seeded into that cache at the rendered revision.

A rendered ``--speculative-config`` is a JSON value: a draft on a claim is named there by
its path in the pod, which :func:`prepare_deployment` maps to the claim's host directory
(the harness's mount translation, inside the JSON); a Hugging Face draft is seeded into the
cache at its rendered revision only.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envs
import harness
import pytest
from harness import HostMap, Manifest, ProcessSpec, Running

HERE = Path(__file__).resolve().parent
CHECK = HERE / "vllm_check.py"
METRICS = HERE / "vllm_metrics.py"
STANDIN = HERE / "standin.py"
VLLM_ENV = "vllm"
#: the revision a cache entry gets when the render names none (any 40-hex commit id)
DEFAULT_COMMIT = "0" * 40
CHECK_TIMEOUT = 300
SPECULATIVE_FLAG = "--speculative-config"


def _llama_like(arch: str, model_type: str, **fields: Any) -> dict[str, Any]:
    return {"architectures": [arch], "model_type": model_type, "torch_dtype": "bfloat16", **fields}


_LLAMA3_ROPE: dict[str, Any] = {
    "rope_type": "llama3",
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

#: Hugging Face configs (config.json) of the models the examples serve: architecture and the
#: sizes vLLM's config validation reads, as published on each model's card. gpt-oss's
#: ``quantization_config`` (mxfp4) is left out: the CPU platform of the check has no mxfp4
#: kernels, and that is a property of this machine, not of the render.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "microsoft/Phi-3.5-mini-instruct": _llama_like(
        "Phi3ForCausalLM",
        "phi3",
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_theta=10000.0,
        rope_scaling={"type": "longrope", "long_factor": [1.0] * 48, "short_factor": [1.0] * 48},
        sliding_window=262144,
        bos_token_id=1,
        eos_token_id=32000,
        pad_token_id=32000,
    ),
    "mistralai/Mistral-7B-Instruct-v0.3": _llama_like(
        "MistralForCausalLM",
        "mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32768,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        sliding_window=None,
    ),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": _llama_like(
        "MixtralForCausalLM",
        "mixtral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_local_experts=8,
        num_experts_per_tok=2,
        vocab_size=32000,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        sliding_window=None,
    ),
    "Qwen/Qwen2.5-7B-Instruct": _llama_like(
        "Qwen2ForCausalLM",
        "qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        sliding_window=131072,
        max_window_layers=28,
        use_sliding_window=False,
    ),
    "meta-llama/Llama-3.1-8B-Instruct": _llama_like(
        "LlamaForCausalLM",
        "llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE | {"factor": 8.0},
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
    ),
    # Llama-3.1-8B's draft: the same tokenizer (vocabulary), a quarter of the layers.
    "meta-llama/Llama-3.2-1B-Instruct": _llama_like(
        "LlamaForCausalLM",
        "llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE | {"factor": 32.0},
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
    ),
    # Qwen2.5's smallest: the same tokenizer as Qwen2.5-7B, but its embedding matrix has
    # 151936 rows where the 7B's has 152064 (each padded differently).
    "Qwen/Qwen2.5-0.5B-Instruct": _llama_like(
        "Qwen2ForCausalLM",
        "qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        sliding_window=32768,
        max_window_layers=21,
        use_sliding_window=False,
        tie_word_embeddings=True,
    ),
    "openai/gpt-oss-120b": _llama_like(
        "GptOssForCausalLM",
        "gpt_oss",
        hidden_size=2880,
        intermediate_size=2880,
        num_hidden_layers=36,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=64,
        num_local_experts=128,
        num_experts_per_tok=4,
        experts_per_token=4,
        vocab_size=201088,
        max_position_embeddings=131072,
        rope_theta=150000.0,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": 4096,
            "truncate": False,
        },
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"] * 18,
        attention_bias=True,
        swiglu_limit=7.0,
        tie_word_embeddings=False,
    ),
}


# --------------------------------------------------------------------------- the check


def serve_args(spec: ProcessSpec) -> list[str]:
    """What follows ``vllm serve`` in a rendered container's command line."""
    if spec.argv[:2] != ["vllm", "serve"]:
        raise AssertionError(f"not a `vllm serve` container: {spec.argv}")
    return spec.argv[2:]


def model_and_revision(args: Sequence[str]) -> tuple[str, str | None]:
    """The model positional and ``--revision`` of ``vllm serve`` args (for seeding only;
    vLLM's parser is what judges them)."""
    model = args[0]
    revision = None
    for i, arg in enumerate(args):
        if arg == "--revision" and i + 1 < len(args):
            revision = args[i + 1]
        elif arg.startswith("--revision="):
            revision = arg.split("=", 1)[1]
    return model, revision


def model_config(model: str) -> dict[str, Any]:
    config = MODEL_CONFIGS.get(model)
    if config is None:
        raise KeyError(f"no config for {model} in fixtures_vllm.MODEL_CONFIGS: add one")
    return config


def seed_hf_cache(
    hf_home: Path, model: str, revision: str | None, *, commit_only: bool = False
) -> None:
    """Put ``model``'s config into a Hugging Face hub cache at ``revision``, the layout
    ``huggingface_hub`` reads offline (``hub/models--org--name/snapshots/<commit>/``).
    ``commit_only`` (``revision`` a commit id): no ref points at it, so only that
    revision finds it (a read of ``main`` fails)."""
    config = model_config(model)
    commit = revision or DEFAULT_COMMIT
    repo = hf_home / "hub" / ("models--" + model.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text(json.dumps(config, indent=1))
    if commit_only:
        if revision is None or len(revision) != 40:
            raise ValueError(f"commit_only needs a full commit id, not {revision!r}")
        return
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / (revision if revision and len(revision) != 40 else "main")).write_text(commit)


def write_model_config(directory: Path, model: str) -> Path:
    """``model``'s config where a claim holds it (a directory vLLM loads by path)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model_config(model), indent=1))
    return directory


def speculative_config(args: Sequence[str]) -> dict[str, Any] | None:
    """The JSON of ``--speculative-config`` in ``vllm serve`` args, parsed (None: none)."""
    for i, arg in enumerate(args):
        if arg == SPECULATIVE_FLAG:
            value = args[i + 1]
        elif arg.startswith(SPECULATIVE_FLAG + "="):
            value = arg.split("=", 1)[1]
        else:
            continue
        config: dict[str, Any] = json.loads(value)
        return config
    return None


def _speculative_on_host(args: list[str], spec: ProcessSpec) -> list[str]:
    """``args`` with a draft path in ``--speculative-config`` mapped to the host directory
    of its mount (only the ``model`` value changes; the JSON is written back as rendered,
    compact)."""
    config = speculative_config(args)
    if config is None or not os.path.isabs(config.get("model", "")):
        return args
    config["model"] = str(spec.host_path(config["model"]))
    i = args.index(SPECULATIVE_FLAG)
    return [*args[: i + 1], json.dumps(config, separators=(",", ":")), *args[i + 2 :]]


@dataclass
class CheckResult:
    ok: bool
    stage: str
    error: str
    values: dict[str, Any]
    output: str


@dataclass
class CheckJob:
    """One command line for vllm_check: the args after ``vllm serve`` and the container env
    (paths already mapped to this host)."""

    args: list[str]
    env: dict[str, str]
    #: also judge each ``--lora-modules`` adapter directory (vllm_check.check_adapters)
    adapters: bool = False


def vllm_check_batch(
    jobs: Sequence[CheckJob],
    *,
    home: Path,
    timeout: float = CHECK_TIMEOUT,
    environment: str = VLLM_ENV,
) -> list[CheckResult]:
    """Run ``vllm_check.py`` on every job in one process of the vLLM environment (vLLM is
    imported once). All jobs must share ``HF_HOME``; the first job's env is the process's
    base env, each job's env is set around its own check. ``environment`` names another
    environment with vLLM (``vllm-ray``: an image for multi-node models)."""
    home.mkdir(parents=True, exist_ok=True)
    batch = home / "vllm-check-batch.json"
    batch.write_text(
        json.dumps([{"args": j.args, "env": j.env, "adapters": j.adapters} for j in jobs])
    )
    run_env = harness.base_env(envs.bin_dir(environment), home)
    run_env.update(jobs[0].env)
    proc = subprocess.run(
        [str(envs.python(environment)), str(CHECK), "--batch", str(batch)],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = (proc.stdout + proc.stderr)[-8000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VLLM_CHECK ")]
    if len(lines) != len(jobs):
        raise AssertionError(
            f"vllm_check gave {len(lines)} results for {len(jobs)} jobs "
            f"(exit {proc.returncode}):\n{output}"
        )
    results = []
    for line in lines:
        r = json.loads(line[len("VLLM_CHECK ") :])
        results.append(
            CheckResult(
                ok=r["ok"],
                stage=r.get("stage", ""),
                error=r.get("error", ""),
                values=r.get("values", {}),
                output=output,
            )
        )
    if all(r.ok for r in results) != (proc.returncode == 0):
        raise AssertionError(f"vllm_check: results and exit {proc.returncode} disagree:\n{output}")
    return results


def vllm_check(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    home: Path,
    timeout: float = CHECK_TIMEOUT,
    environment: str = VLLM_ENV,
) -> CheckResult:
    """``vllm_check.py`` on one command line (see :func:`vllm_check_batch`)."""
    jobs = [CheckJob(list(args), dict(env))]
    return vllm_check_batch(jobs, home=home, timeout=timeout, environment=environment)[0]


def vllm_metrics(job: CheckJob, *, home: Path, timeout: float = CHECK_TIMEOUT) -> dict[str, Any]:
    """``vllm_metrics.py`` on one command line: what vLLM's own stat logger and metrics
    router serve on ``/metrics`` for the engine config of those args (no engine runs)."""
    home.mkdir(parents=True, exist_ok=True)
    run_env = harness.base_env(envs.bin_dir(VLLM_ENV), home)
    run_env.update(job.env)
    proc = subprocess.run(
        [str(envs.python(VLLM_ENV)), str(METRICS), json.dumps(job.args)],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VLLM_METRICS ")]
    if len(lines) != 1:
        raise AssertionError(
            f"vllm_metrics gave no result (exit {proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr)[-8000:]}"
        )
    result: dict[str, Any] = json.loads(lines[0][len("VLLM_METRICS ") :])
    if not result["ok"]:
        raise AssertionError(
            f"vllm_metrics failed at {result['stage']}: {result['error']}\n{result['traceback']}"
        )
    return result


def prepare_deployment(
    manifests: Sequence[Manifest], deployment: str, workdir: Path
) -> tuple[ProcessSpec, CheckJob]:
    """The rendered ``vllm serve`` container of ``deployment`` as a host process spec and a
    check job, with its model's config seeded into the rendered ``HF_HOME``, and so is a
    Hugging Face draft's (at its rendered revision only). A model or draft on a claim (its
    path in the args is a host directory by now) is the caller's to put there
    (:func:`write_model_config`)."""
    spec = harness.container_process(
        manifests, deployment, workdir=workdir, field_refs={"status.podIP": "127.0.0.1"}
    )
    args = _speculative_on_host(serve_args(spec), spec)
    hf_home = Path(spec.env["HF_HOME"])
    model, revision = model_and_revision(args)
    if not os.path.isabs(model):
        seed_hf_cache(hf_home, model, revision)
    draft = speculative_config(args) or {}
    if "model" in draft and not os.path.isabs(draft["model"]):
        # Pinned to a commit: found there and nowhere else, so a draft read at another
        # revision (main) fails the check.
        pinned = draft.get("revision")
        commit_only = pinned is not None and len(pinned) == 40
        seed_hf_cache(hf_home, draft["model"], pinned, commit_only=commit_only)
    return spec, CheckJob(args, dict(spec.env))


def check_deployment(
    manifests: Sequence[Manifest], deployment: str, workdir: Path
) -> tuple[ProcessSpec, CheckResult]:
    """The rendered ``vllm serve`` container of ``deployment`` judged by vLLM."""
    spec, job = prepare_deployment(manifests, deployment, workdir)
    return spec, vllm_check(job.args, job.env, home=workdir / "home")


def single_node_model_servers(manifests: Sequence[Manifest]) -> list[str]:
    """Deployments whose container runs ``vllm serve`` directly (a multi-node model is a
    LeaderWorkerSet: test_multinode_vllm.py and test_multinode.py cover those)."""
    out = []
    for m in harness.of_kind(manifests, "Deployment"):
        c = m["spec"]["template"]["spec"]["containers"][0]
        if c.get("command", [])[:2] == ["vllm", "serve"]:
            out.append(m["metadata"]["name"])
    return out


# --------------------------------------------------------------------------- the stand-in


@dataclass
class VllmStandin:
    deployment: str
    address: str
    port: int
    check: CheckResult
    running: Running

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def stop(self) -> None:
        self.running.stop()


def start_vllm_standin(
    manifests: Sequence[Manifest],
    deployment: str,
    *,
    hosts: HostMap,
    workdir: Path,
    log_dir: Path,
    service: str | None = None,
) -> VllmStandin:
    """Check the rendered args of ``deployment`` with vLLM, then run the stand-in with them
    in the vLLM environment on the Service's address; wait for the rendered probes.

    With a rendered ``--otlp-traces-endpoint`` the stand-in emits one ``llm_request`` span per
    request through vLLM's tracer setup (rendered ``OTEL_*`` env in effect)."""
    spec, result = check_deployment(manifests, deployment, workdir)
    if not result.ok:
        raise AssertionError(
            f"vLLM rejects the args of {deployment} at {result.stage}: {result.error}\n"
            f"{result.output}"
        )
    namespace = harness.workload(manifests, deployment)["metadata"].get("namespace", "default")
    address = hosts.add(service or deployment, namespace)
    extra = {
        "STANDIN_BIND": address,
        "PYTHONPATH": f"{hosts.directory}:{HERE}",
        "VLLM_TARGET_DEVICE": "cpu",
    }
    if result.values.get("otlp_traces_endpoint"):
        extra["STANDIN_HOOK"] = "vllm_check:tracing_hook"
    running = harness.start(
        spec,
        name=f"standin-{deployment}",
        bin_dir=envs.bin_dir(VLLM_ENV),
        log_dir=log_dir,
        hosts=hosts,
        extra_env=extra,
        argv=[str(envs.python(VLLM_ENV)), str(STANDIN), *spec.argv[1:]],
    )
    try:
        for _kind, url in harness.probe_urls(manifests, deployment, address):
            running.wait_http(url, timeout=120)
    except BaseException:
        running.stop()
        raise
    return VllmStandin(
        deployment=deployment,
        address=address,
        port=int(result.values["port"]),
        check=result,
        running=running,
    )


@pytest.fixture(scope="session")
def vllm_env() -> Path:
    """The vLLM environment (built once, cached)."""
    return envs.ensure_env(VLLM_ENV)
