"""Have vLLM itself judge a rendered ``vllm serve`` command line, without a GPU.

Run it with the Python of the vLLM environment (``envs.python("vllm")``)::

    python vllm_check.py '["org/model", "--served-model-name", "m", ...]'

The argument is the JSON list of what follows ``vllm serve`` in the render (the ``model``
positional included). The check does what ``vllm serve`` does before it starts serving, with
vLLM's own code at the pinned version:

1. **Parser.** The ``vllm`` CLI's top-level ``FlexibleArgumentParser`` with the ``serve``
   subcommand registered by ``ServeSubcommand.subparser_init`` (``make_arg_parser``), as
   ``vllm.entrypoints.cli.main.main`` builds them (its other subcommands, which take no
   part in parsing ``serve``, are not registered); an unknown flag or a bad value exits
   with argparse's status 2, as ``vllm serve`` would.
2. **Serve validation.** ``ServeSubcommand.validate`` (``validate_parsed_serve_args``).
3. **Engine arguments.** ``AsyncEngineArgs.from_cli_args`` on the parsed namespace (after
   ``ServeSubcommand.cmd``'s ``model_tag`` -> ``model`` step), then
   ``create_engine_config(UsageContext.OPENAI_API_SERVER)``: the model's Hugging Face config
   (read from ``HF_HOME``, offline), ``ModelConfig``/``ParallelConfig``/``CacheConfig``/
   ``LoadConfig``/``ObservabilityConfig`` validation (e.g. attention heads divisible by the
   tensor-parallel size, ``--max-model-len`` within the model's positions, the OpenTelemetry
   check of ``--otlp-traces-endpoint``, Ray's presence for ``--distributed-executor-backend
   ray``) and the platform's config hooks; with ``--enable-lora``, ``LoRAConfig`` (rank one
   of vLLM's ranks, ``--max-cpu-loras`` >= ``--max-loras``) and its check against the
   model (the architecture implements LoRA); with ``--speculative-config``,
   ``SpeculativeConfig`` (method, tokens and, for a draft model, the draft's own
   ``ModelConfig`` read offline like the model's, whose vocabulary must be the model's).
4. **Launch.** What ``vllm serve`` would start, decided by vLLM's own code
   (:func:`launch`): ``ServeSubcommand.cmd`` runs with its launchers replaced by recorders
   (its ``--headless`` rules: no ``--api-server-count`` above 0, which launcher it picks);
   when it picks ``run_headless`` (a ``--headless`` node of a multi-node group), that
   function runs for real up to the point where it would start processes: its own checks
   and its engine config, built with ``headless=True`` as only it builds it, and whether it
   runs the headless multiprocessing executor (a node of rank > 0 within its group) or
   data-parallel engines.
5. **Adapters** (when the caller asks): each ``--lora-modules`` directory as vLLM reads it
   when it loads the adapter at startup, up to the weights (:func:`check_adapters`).

What it cannot cover: everything after the config is built (device and memory probing,
weights, an adapter's tensors, tokenizer, kernels, the HTTP server). The platform is vLLM's
CPU platform, chosen with ``VLLM_TARGET_DEVICE=cpu`` (vLLM's switch for running an
accelerator wheel on a host without the accelerator) and ``CUDA_VISIBLE_DEVICES=""`` (no
GPU visible), so CUDA-only checks (GPU count per node, GPU memory, attention backend and
quantization kernel selection, the CUDA platform's config hook) are not exercised. The
model's config comes from the Hugging Face cache the caller prepared
(``HF_HUB_OFFLINE=1``): a small config of the model's architecture with its real head,
layer and position counts, not the model itself.

It prints one JSON object: ``{"ok": true, "values": {...}}`` with the values vLLM settled
on (``values["launch"]``: what it would start, and the parallel layout of the config it
would start it with), or ``{"ok": false, "stage": ..., "error": ...}`` (exit status 1; 2
for a parser error).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import traceback
from typing import Any


def _values(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    model = config.model_config
    parallel = config.parallel_config
    backend = parallel.distributed_executor_backend
    return {
        "model": args.model,
        "model_path": model.model,
        "served_model_name": model.served_model_name,
        "host": args.host,
        "port": args.port,
        "tensor_parallel_size": parallel.tensor_parallel_size,
        "pipeline_parallel_size": parallel.pipeline_parallel_size,
        "max_model_len": model.max_model_len,
        "load_format": str(config.load_config.load_format),
        "revision": model.revision,
        "otlp_traces_endpoint": config.observability_config.otlp_traces_endpoint,
        "distributed_executor_backend": backend if isinstance(backend, str) else repr(backend),
        "gpu_memory_utilization": config.cache_config.gpu_memory_utilization,
        "architectures": list(model.architectures or []),
        "otel_available": _otel_available(),
        "enable_lora": bool(args.enable_lora),
        "lora": _lora_values(config.lora_config),
        "lora_modules": [
            {"name": m.name, "path": m.path, "base_model_name": m.base_model_name}
            for m in (args.lora_modules or [])
        ],
        "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
        "max_num_seqs": config.scheduler_config.max_num_seqs,
        "speculative": _speculative_values(config.speculative_config),
        **_parallel_values(parallel),
    }


def _parallel_values(parallel: Any) -> dict[str, Any]:
    """Where this node stands in its group, as vLLM's ``ParallelConfig`` settled it."""
    return {
        "nnodes": parallel.nnodes,
        "node_rank": parallel.node_rank,
        "master_addr": parallel.master_addr,
        "master_port": parallel.master_port,
        "world_size": parallel.world_size,
        "local_world_size": parallel.local_world_size,
        "nnodes_within_dp": parallel.nnodes_within_dp,
        "node_rank_within_dp": parallel.node_rank_within_dp,
        "data_parallel_size": parallel.data_parallel_size,
        "data_parallel_size_local": parallel.data_parallel_size_local,
    }


class _Launched(Exception):
    """Raised by a recorder in place of starting a server, an engine or an executor."""

    def __init__(self, kind: str, config: Any = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.config = config


def launch(args: argparse.Namespace) -> dict[str, Any]:
    """What ``vllm serve`` starts for the parsed (and validated) ``args``, decided by vLLM's
    own ``ServeSubcommand.cmd``. Every launcher it may call is replaced by a recorder
    (``uvloop.run`` of ``run_server``: one API server in this process; the multi-API-server
    and data-parallel-supervisor launchers) but ``run_headless``, which runs for real: its
    own checks and its engine config (``create_engine_config(..., headless=True)``), up to
    the processes it would start, which are recorders too: the headless multiprocessing
    executor (``MultiprocExecutor``, a node of rank > 0 within its data-parallel group) or
    the data-parallel engines (``CoreEngineProcManager``). Returns ``{"kind": ...,
    "api_server_count": ..., "parallel": {...}}`` (``parallel``: the layout of the config
    ``run_headless`` built, for a headless launch; else ``None``)."""
    from unittest import mock

    import vllm.entrypoints.cli.serve as serve_module

    def recorder(kind: str) -> Any:
        def record(*_args: Any, **kwargs: Any) -> Any:
            config = kwargs.get("vllm_config", _args[0] if _args else None)
            raise _Launched(kind, config if hasattr(config, "parallel_config") else None)

        return record

    def run(coroutine: Any) -> Any:
        name = getattr(coroutine, "__name__", str(coroutine))
        coroutine.close()  # never started
        raise _Launched("api_server" if name == "run_server" else name)

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with (
            mock.patch.object(serve_module, "uvloop", mock.Mock(run=run)),
            mock.patch.object(serve_module, "run_multi_api_server", recorder("multi_api_server")),
            mock.patch.object(serve_module, "run_dp_supervisor", recorder("dp_supervisor")),
            mock.patch.object(
                serve_module, "MultiprocExecutor", recorder("headless_multiproc_executor")
            ),
            mock.patch.object(serve_module, "CoreEngineProcManager", recorder("headless_engines")),
        ):
            serve_module.ServeSubcommand.cmd(args)
    except _Launched as launched:
        out: dict[str, Any] = {
            "kind": launched.kind,
            "api_server_count": args.api_server_count,
            "parallel": None,
        }
        if launched.config is not None:
            out["parallel"] = _parallel_values(launched.config.parallel_config)
        return out
    finally:
        for sig, handler in saved.items():  # run_headless installs its own
            signal.signal(sig, handler)
    raise RuntimeError("ServeSubcommand.cmd returned without launching anything")


def _speculative_values(spec: Any) -> dict[str, Any] | None:
    """What vLLM's ``SpeculativeConfig`` settled on (``None``: no speculative decoding).
    The ``draft_*`` values are those of the draft's own ``ModelConfig``, ``None`` where the
    method loads no model of its own (vLLM then points the draft config at the target's)."""
    if spec is None:
        return None
    draft = spec.draft_model_config
    own = draft is not None and draft is not spec.target_model_config
    return {
        "method": spec.method,
        "model": spec.model,
        "revision": spec.revision,
        "num_speculative_tokens": spec.num_speculative_tokens,
        "draft_tensor_parallel_size": spec.draft_tensor_parallel_size,
        "draft_model": draft.model if own else None,
        "draft_revision": draft.revision if own else None,
        "draft_architectures": list(draft.architectures or []) if own else [],
        "draft_vocab_size": draft.get_vocab_size() if own else None,
        "draft_max_model_len": draft.max_model_len if own else None,
    }


def _lora_values(lora: Any) -> dict[str, Any] | None:
    """What vLLM's ``LoRAConfig`` settled on (``None``: LoRA is off)."""
    if lora is None:
        return None
    return {
        "max_loras": lora.max_loras,
        "max_lora_rank": lora.max_lora_rank,
        "max_cpu_loras": lora.max_cpu_loras,
        "lora_dtype": str(lora.lora_dtype),
        "fully_sharded_loras": lora.fully_sharded_loras,
    }


def check_adapters(args: argparse.Namespace, config: Any) -> list[dict[str, Any]]:
    """Each ``--lora-modules`` adapter judged as vLLM judges it when it loads it at startup
    (``OpenAIServingModels.init_static_loras`` -> ``WorkerLoRAManager._load_adapter``),
    up to the weights: the path resolved by ``get_adapter_absolute_path``, its
    ``adapter_config.json`` read by ``PEFTHelper.from_local_dir`` (with the base model's
    ``max_position_embeddings``, as the worker passes it) and checked against the engine's
    ``LoRAConfig`` by ``validate_legal`` (rank within ``--max-lora-rank``, no PEFT feature
    vLLM does not implement). A missing directory or config is the ``FileNotFoundError``
    vLLM turns into ``LoRAAdapterNotFoundError``."""
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.lora.utils import get_adapter_absolute_path

    text_config = config.model_config.hf_config.get_text_config()
    max_position_embeddings = getattr(text_config, "max_position_embeddings", None)
    out = []
    for module in args.lora_modules or []:
        entry: dict[str, Any] = {"name": module.name, "path": module.path}
        try:
            path = get_adapter_absolute_path(module.path)
            helper = PEFTHelper.from_local_dir(path, max_position_embeddings)
            entry["r"] = helper.r
            entry["target_modules"] = helper.target_modules
            helper.validate_legal(config.lora_config)
        except Exception as exc:
            entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        else:
            entry.update(ok=True, error="")
        out.append(entry)
    return out


def _otel_available() -> bool:
    # vllm.tracing.is_tracing_available() cannot say: at 0.34.0 it returns
    # any([<function objects>]), True whether or not OpenTelemetry imports.
    from vllm.tracing.otel import is_otel_available

    return bool(is_otel_available())


def _defaults() -> None:
    """The check's own settings (see the module docstring); set before vLLM is imported."""
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    # No GPU is visible (the form Ray workers see before their devices are assigned): vLLM's
    # Triton import check then accepts the image's (CUDA) Triton instead of asking for
    # triton-cpu, which the CPU platform's config hook would otherwise require.
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


def serve_parsers() -> tuple[Any, Any, Any]:
    """``(parser, serve_parser, serve)``: the ``vllm`` CLI's top-level
    ``FlexibleArgumentParser`` with the ``serve`` subcommand registered by
    ``ServeSubcommand.subparser_init``, as ``vllm.entrypoints.cli.main.main`` builds them
    (see the module docstring), the ``serve`` subparser itself and the ``ServeSubcommand``.
    ``vllm serve ARGS`` is ``parser.parse_args(["serve", *ARGS])``: the top-level parser's
    ``parse_args`` rewrites the arguments (underscores, dotted JSON keys, ``-O``, ``--config``)
    before argparse hands them to the subparser. Call :func:`_defaults` first."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve = ServeSubcommand()
    serve_parser = serve.subparser_init(subparsers)
    serve_parser.set_defaults(dispatch_function=serve.cmd)
    return parser, serve_parser, serve


def check(argv: list[str], *, adapters: bool = False) -> dict[str, Any]:
    """Judge one command line; with ``adapters``, also each ``--lora-modules`` adapter
    (:func:`check_adapters`; stage ``adapters``)."""
    _defaults()

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.common.startup import cli_env_setup
    from vllm.usage.usage_lib import UsageContext

    cli_env_setup()
    parser, _serve_parser, serve = serve_parsers()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(["serve", *argv])
    except SystemExit as exc:
        return {"ok": False, "stage": "parse", "error": stderr.getvalue().strip(), "code": exc.code}

    stage = "validate"
    try:
        serve.validate(args)
        if getattr(args, "model_tag", None) is not None:
            args.model = args.model_tag
        stage = "engine_args"
        engine_args = AsyncEngineArgs.from_cli_args(args)
        stage = "engine_config"
        config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    except Exception as exc:
        return {
            "ok": False,
            "stage": stage,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=6),
        }
    values = _values(args, config)
    try:
        values["launch"] = launch(args)
    except Exception as exc:
        return {
            "ok": False,
            "stage": "launch",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=6),
            "values": values,
        }
    if adapters and config.lora_config is not None:
        values["adapters"] = check_adapters(args, config)
        refused = [a for a in values["adapters"] if not a["ok"]]
        if refused:
            error = "; ".join(f"{a['name']}: {a['error']}" for a in refused)
            return {"ok": False, "stage": "adapters", "error": error, "values": values}
    return {"ok": True, "values": values}


def tracing_hook(_args: argparse.Namespace) -> Any:
    """``STANDIN_HOOK=vllm_check:tracing_hook``: the stand-in's per-request callback that
    emits, through vLLM's own tracer setup, the span vLLM emits for each request.

    The tracer is set up as ``AsyncLLM.__init__`` does it (``vllm.tracing.init_tracer(
    "vllm.llm_engine", otlp_traces_endpoint)``) from the ``--otlp-traces-endpoint`` that
    vLLM's parser read from the rendered command line, with the rendered ``OTEL_*``
    environment (protocol, headers, service name) in effect; each request then gets the
    ``llm_request`` span through ``vllm.tracing.instrument_manual``, as
    ``OutputProcessor.do_tracing`` makes it. Returns ``None`` when no endpoint is rendered.
    """
    import time

    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.tracing import SpanAttributes, SpanKind, init_tracer, instrument_manual
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    ServeSubcommand().subparser_init(subparsers)
    argv = sys.argv[1:]
    if argv[:1] != ["serve"]:
        argv = ["serve", *argv]
    parsed = parser.parse_args(argv)
    endpoint = parsed.otlp_traces_endpoint
    if endpoint is None:
        return None
    init_tracer("vllm.llm_engine", endpoint)

    from opentelemetry import trace

    def callback(path: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        now = time.time_ns()
        usage = response.get("usage", {})
        attributes: dict[str, Any] = {
            SpanAttributes.GEN_AI_REQUEST_ID: response["id"],
            SpanAttributes.GEN_AI_USAGE_PROMPT_TOKENS: usage.get("prompt_tokens", 0),
            SpanAttributes.GEN_AI_USAGE_COMPLETION_TOKENS: usage.get("completion_tokens", 0),
            SpanAttributes.GEN_AI_LATENCY_E2E: 0.0,
        }
        if request.get("max_tokens"):
            attributes[SpanAttributes.GEN_AI_REQUEST_MAX_TOKENS] = request["max_tokens"]
        instrument_manual(
            span_name="llm_request", start_time=now, attributes=attributes, kind=SpanKind.SERVER
        )
        # Test-side: export now rather than on the batch processor's timer.
        trace.get_tracer_provider().force_flush()

    return callback


def main() -> int:
    """``vllm_check.py JSON_ARGV`` checks one command line; ``vllm_check.py --batch FILE``
    checks each ``{"args": [...], "env": {...}, "adapters": bool}`` of a JSON list (one vLLM
    import for all; each job's env is set around its check, and ``HF_HOME`` must be the same
    for all, as huggingface_hub reads it once; ``adapters``: also judge each
    ``--lora-modules`` adapter, see :func:`check_adapters`). Prints one
    ``VLLM_CHECK <json>`` line per check."""
    if len(sys.argv) == 3 and sys.argv[1] == "--batch":
        with open(sys.argv[2]) as f:
            jobs = json.load(f)
    elif len(sys.argv) == 2:
        jobs = [{"args": json.loads(sys.argv[1]), "env": {}}]
    else:
        print("usage: vllm_check.py JSON_ARGV | --batch FILE", file=sys.stderr)
        return 64
    homes = {job["env"].get("HF_HOME", os.environ.get("HF_HOME")) for job in jobs}
    if len(homes) > 1:
        print(f"one HF_HOME per batch, not {sorted(map(str, homes))}", file=sys.stderr)
        return 64
    _defaults()
    status = 0
    for job in jobs:
        argv = job["args"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            print("args must be a list of strings", file=sys.stderr)
            return 64
        saved = dict(os.environ)
        os.environ.update(job["env"])
        try:
            result = check(argv, adapters=bool(job.get("adapters")))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        print("VLLM_CHECK " + json.dumps(result, default=str), flush=True)
        if not result["ok"]:
            status = max(status, 2 if result["stage"] == "parse" else 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
