"""What a vLLM server built from a rendered ``vllm serve`` command line serves on ``/metrics``,
without a GPU.

Run it with the Python of the vLLM environment (``envs.python("vllm")``)::

    python vllm_metrics.py '["org/model", "--served-model-name", "m", ...]'

The argument is what follows ``vllm serve`` in the render. The engine config is built as
``vllm_check.py`` builds it (vLLM's parser, serve validation, ``create_engine_config`` on
vLLM's CPU platform, the model's config from ``HF_HOME`` offline). From that config:

1. vLLM's own Prometheus stat logger (``vllm.v1.metrics.loggers.PrometheusStatLogger``,
   what ``StatLoggerManager`` makes for the API server) registers vLLM's metrics, labelled
   with the served model name and engine index as in a server;
2. it records one scheduler step and one iteration (:data:`RECORDED`), through its own
   ``record``, so that counters, gauges and histograms hold known values;
3. ``/metrics`` is read from a FastAPI app to which vLLM's own metrics router
   (``vllm.entrypoints.serve.instrumentator.metrics.attach_router``, what ``vllm serve``
   mounts on its API port) is attached. With one API server (the render sets no
   ``--api-server-count``) that router serves prometheus_client's default registry, as
   here; only several API servers switch vLLM to a multiprocess registry.

No engine runs (no model, no GPU): what this shows is which series vLLM exposes, under
which names and labels, not values a real engine would produce. It prints one line
``VLLM_METRICS <json>``: ``{"ok": true, "status": ..., "content_type": ..., "body": ...}``
or ``{"ok": false, "stage": ..., "error": ...}``.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

import vllm_check

#: What the script records through the stat logger (the test compares the exposed values).
RECORDED: dict[str, Any] = {
    "num_running_reqs": 3,
    "num_waiting_reqs": 2,
    "kv_cache_usage": 0.25,
    "prompt_tokens": 11,
    "generation_tokens": 7,
    "time_to_first_token": 0.05,
}


def engine_config(argv: list[str]) -> Any:
    """The ``VllmConfig`` of a ``vllm serve`` command line, built as vllm_check builds it."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.common.startup import cli_env_setup
    from vllm.usage.usage_lib import UsageContext
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve = ServeSubcommand()
    serve.subparser_init(subparsers).set_defaults(dispatch_function=serve.cmd)
    args = parser.parse_args(["serve", *argv])
    serve.validate(args)
    if getattr(args, "model_tag", None) is not None:
        args.model = args.model_tag
    engine_args = AsyncEngineArgs.from_cli_args(args)
    return engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)


def metrics_text(config: Any) -> tuple[int, str, str]:
    """``(status, content type, body)`` of ``GET /metrics`` after one recorded step."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from vllm.entrypoints.serve.instrumentator.metrics import attach_router
    from vllm.v1.metrics.loggers import PrometheusStatLogger
    from vllm.v1.metrics.stats import IterationStats, SchedulerStats

    stat_logger = PrometheusStatLogger(config, engine_indexes=[0])
    scheduler = SchedulerStats(
        num_running_reqs=RECORDED["num_running_reqs"],
        num_waiting_reqs=RECORDED["num_waiting_reqs"],
        kv_cache_usage=RECORDED["kv_cache_usage"],
    )
    iteration = IterationStats()
    iteration.prompt_token_stats.total = RECORDED["prompt_tokens"]
    iteration.prompt_token_stats.computed = RECORDED["prompt_tokens"]
    iteration.num_generation_tokens = RECORDED["generation_tokens"]
    iteration.time_to_first_tokens_iter = [RECORDED["time_to_first_token"]]
    stat_logger.record(scheduler, iteration, engine_idx=0)

    app = FastAPI()
    attach_router(app)
    response = TestClient(app).get("/metrics")
    return response.status_code, response.headers.get("content-type", ""), response.text


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: vllm_metrics.py JSON_ARGV", file=sys.stderr)
        return 64
    vllm_check._defaults()
    stage = "engine_config"
    try:
        config = engine_config(json.loads(sys.argv[1]))
        stage = "metrics"
        status, content_type, body = metrics_text(config)
    except BaseException as exc:  # SystemExit from the parser too
        result: dict[str, Any] = {
            "ok": False,
            "stage": stage,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8),
        }
    else:
        result = {
            "ok": True,
            "status": status,
            "content_type": content_type,
            "body": body,
            "served_model_name": config.model_config.served_model_name,
        }
    print("VLLM_METRICS " + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
