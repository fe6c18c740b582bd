"""vLLM conformance: vLLM itself (the default image's version and packages) judges every
rendered ``vllm serve`` command line, and the rendered tracing settings carry a request
span from vLLM's tracer setup to the rendered MLflow.

- every single-node model server of every example: vLLM's ``serve`` parser, serve-argument
  validation and engine config accept the rendered args and env, and settle on the values
  the render meant (name, host, port, parallelism, context length, revision, endpoint), and
  ``vllm serve`` would start one API server (multi-node models: test_multinode_vllm.py);
- the check is live: an unknown flag fails in the parser, a tensor-parallel size the model's
  attention heads do not divide fails in the config; the image's OpenTelemetry imports, so
  the rendered ``--otlp-traces-endpoint`` gets a tracer;
- LoRA (examples/lora.yaml): vLLM's ``LoRAConfig`` holds the rendered ``--max-loras``,
  ``--max-lora-rank`` and ``--max-cpu-loras``, its parser reads every ``--lora-modules``
  entry as the adapter the example names at its rendered path, and each adapter directory
  there (PEFT files made here: what an init container or the PVC provides) passes vLLM's
  own adapter validation at that config; live: a malformed ``--lora-modules`` entry and a
  rank vLLM does not serve fail in the parser, fewer CPU slots than ``--max-loras`` in the
  config, an adapter above ``--max-lora-rank`` and a missing adapter directory in vLLM's
  adapter check; a model without adapters gets no LoRA;
- tracing: a stand-in on the rendered args, with vLLM's ``init_tracer`` on the rendered
  endpoint and ``OTEL_*`` env, exports one ``llm_request`` span per request, which
  ``mlflow.search_traces`` finds in the rendered experiment of the rendered MLflow;
- metrics: every ``vllm:`` series the chart's Grafana dashboard queries is one vLLM's own
  stat logger and metrics router serve for the rendered model server (vllm_metrics.py),
  under the served model's name, of the type the query treats it as (``rate()`` of
  counters and histogram buckets, gauges as they are), carrying what vLLM recorded.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import pytest
from fixtures_adapters import rendered_lora_modules, write_peft_adapter
from fixtures_mlflow import MLflowServer
from fixtures_vllm import (
    CheckJob,
    CheckResult,
    prepare_deployment,
    serve_args,
    single_node_model_servers,
    start_vllm_standin,
    vllm_check_batch,
    vllm_metrics,
)
from harness import HostMap, Manifest, ProcessSpec, Sample
from vllm_metrics import RECORDED

from aistack.api.v1alpha1 import AUTOSCALING_METRICS

EXAMPLES = ["quickstart.yaml", "multi-model.yaml", "external-stores.yaml", "lora.yaml"]
LORA_EXAMPLE = "lora.yaml"
LORA_DEPLOYMENT = "lora-vllm-qwen-7b"
#: The rank of each adapter's files made here (the example's maxLoraRank is 16: one below,
#: one at the limit).
ADAPTER_RANKS = {"support-bot": 8, "sql-writer": 16}
#: Where a variant points support-bot instead (inside the rendered /cache volume).
RANK_64_ADAPTER = "/cache/adapters/rank-64"
MISSING_ADAPTER = "/cache/adapters/not-fetched"


def _flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _gpus(manifests: list[Manifest], deployment: str) -> int:
    c = harness.container(manifests, deployment)
    return int(c["resources"]["limits"]["nvidia.com/gpu"])


@dataclass
class Checked:
    """Every rendered single-node model server of every example, and two broken variants of
    the quickstart's, judged by vllm_check in one vLLM process."""

    renders: dict[str, list[Manifest]]
    specs: dict[str, ProcessSpec]
    results: dict[str, CheckResult]


@pytest.fixture(scope="module")
def checked(vllm_env: Path, suite_dir: Path) -> Checked:
    renders = {name: harness.render_example(harness.example(name)) for name in EXAMPLES}
    # One work directory: every container's /cache maps to the same host directory, so all
    # jobs share the rendered HF_HOME (one per batch; see vllm_check_batch).
    workdir = suite_dir / "vllm-check"
    specs: dict[str, ProcessSpec] = {}
    jobs: dict[str, CheckJob] = {}
    for manifests in renders.values():
        for deployment in single_node_model_servers(manifests):
            specs[deployment], jobs[deployment] = prepare_deployment(manifests, deployment, workdir)
    quickstart = jobs[single_node_model_servers(renders["quickstart.yaml"])[0]]
    # An unknown flag: vLLM's parser must refuse it.
    jobs["bogus-flag"] = CheckJob([*quickstart.args, "--no-such-flag", "1"], quickstart.env)
    # Phi-3.5-mini has 32 attention heads: a tensor-parallel size of 3 cannot split them.
    args = list(quickstart.args)
    args[args.index("--tensor-parallel-size") + 1] = "3"
    jobs["tp3"] = CheckJob(args, quickstart.env)
    jobs.update(lora_jobs(renders[LORA_EXAMPLE], specs[LORA_DEPLOYMENT], jobs[LORA_DEPLOYMENT]))
    results = vllm_check_batch(list(jobs.values()), home=workdir / "home")
    return Checked(renders, specs, dict(zip(jobs, results, strict=True)))


def _replaced(args: list[str], flag: str, *values: str) -> list[str]:
    """``args`` with the values that follow ``flag`` (up to the next flag) replaced."""
    i = args.index(flag) + 1
    j = i
    while j < len(args) and not args[j].startswith("--"):
        j += 1
    return [*args[:i], *values, *args[j:]]


def lora_jobs(manifests: list[Manifest], spec: ProcessSpec, job: CheckJob) -> dict[str, CheckJob]:
    """The LoRA example's job with its adapters judged, and its broken variants.

    The adapters' files are put where the rendered ``--lora-modules`` paths are in this
    check's filesystem (the pod's volumes as host directories): what the init container
    downloads (support-bot, under the ``/cache`` volume) and what the PVC holds (sql-writer,
    under the claim's mount)."""
    base = harness.container(manifests, LORA_DEPLOYMENT)["args"][0]
    modules = rendered_lora_modules(harness.container(manifests, LORA_DEPLOYMENT))
    for name, path in modules.items():
        write_peft_adapter(spec.host_path(path), r=ADAPTER_RANKS[name], base_model=base)
    write_peft_adapter(spec.host_path(RANK_64_ADAPTER), r=64, base_model=base)
    job.adapters = True
    host = {name: str(spec.host_path(path)) for name, path in modules.items()}

    def variant(args: list[str]) -> CheckJob:
        return CheckJob(args, job.env, adapters=True)

    return {
        # Not name=path and not JSON: vLLM's LoRAParserAction refuses it.
        "lora-malformed-module": variant(
            _replaced(job.args, "--lora-modules", "support-bot", f"sql-writer={host['sql-writer']}")
        ),
        # vLLM serves ranks 1, 8, 16, 32, 64, ... only.
        "lora-rank-9": variant(_replaced(job.args, "--max-lora-rank", "9")),
        # Fewer adapters kept in CPU memory than one batch may use.
        "lora-cpu-below-max": variant(_replaced(job.args, "--max-cpu-loras", "1")),
        # An adapter trained at rank 64 under --max-lora-rank 16.
        "lora-rank-64-adapter": variant(
            _replaced(
                job.args,
                "--lora-modules",
                f"support-bot={spec.host_path(RANK_64_ADAPTER)}",
                f"sql-writer={host['sql-writer']}",
            )
        ),
        # The directory an init container would have filled, empty.
        "lora-missing-adapter": variant(
            _replaced(
                job.args,
                "--lora-modules",
                f"support-bot={spec.host_path(MISSING_ADAPTER)}",
                f"sql-writer={host['sql-writer']}",
            )
        ),
    }


@pytest.mark.parametrize("example", EXAMPLES)
def test_vllm_accepts_every_rendered_model_server(example: str, checked: Checked) -> None:
    manifests = checked.renders[example]
    deployments = single_node_model_servers(manifests)
    assert deployments, f"{example} renders no `vllm serve` model server"
    for deployment in deployments:
        result = checked.results[deployment]
        assert result.ok, f"{deployment}: vLLM rejects it at {result.stage}: {result.error}"
        args = serve_args(checked.specs[deployment])
        v = result.values
        c = harness.container(manifests, deployment)
        assert v["model"] == args[0]
        assert v["served_model_name"] == _flag(args, "--served-model-name")
        assert v["port"] == c["ports"][0]["containerPort"]
        assert v["host"] == "0.0.0.0"  # the pod's address is not known in advance
        assert v["tensor_parallel_size"] == _gpus(manifests, deployment)
        assert v["pipeline_parallel_size"] == 1
        # One node, one API server in the container's process (vllm_check.launch).
        assert (v["nnodes"], v["launch"]["kind"]) == (1, "api_server")
        rendered_len = _flag(args, "--max-model-len")
        if rendered_len is not None:
            assert v["max_model_len"] == int(rendered_len)
        assert v["revision"] == _flag(args, "--revision")
        assert v["load_format"] == (_flag(args, "--load-format") or "auto")
        # Tracing: the endpoint passed vLLM's check and the image's OpenTelemetry imports.
        assert v["otlp_traces_endpoint"] == _flag(args, "--otlp-traces-endpoint")
        assert v["otlp_traces_endpoint"], "the render sends no traces to MLflow"
        assert v["otel_available"] is True
        # Speculative decoding only where rendered (test_vllm_speculative.py checks it).
        assert (v["speculative"] is None) == (_flag(args, "--speculative-config") is None)


def test_vllm_settles_on_the_rendered_lora_settings(checked: Checked) -> None:
    manifests = checked.renders[LORA_EXAMPLE]
    model = harness.example_stack(harness.example_documents(LORA_EXAMPLE))["spec"]["models"][0]
    result = checked.results[LORA_DEPLOYMENT]
    assert result.ok, f"vLLM rejects it at {result.stage}: {result.error}"
    args = serve_args(checked.specs[LORA_DEPLOYMENT])
    v = result.values
    assert v["enable_lora"] is True
    assert v["lora"] is not None, "vLLM built no LoRAConfig"
    assert v["lora"]["max_loras"] == int(_flag(args, "--max-loras") or 0) == model["maxLoras"]
    assert v["lora"]["max_lora_rank"] == int(_flag(args, "--max-lora-rank") or 0)
    assert v["lora"]["max_lora_rank"] == model["maxLoraRank"]
    assert v["lora"]["max_cpu_loras"] == int(_flag(args, "--max-cpu-loras") or 0)
    assert v["lora"]["max_cpu_loras"] >= v["lora"]["max_loras"]
    # Every adapter of the example, under its own name, at the path the render gives it.
    spec = checked.specs[LORA_DEPLOYMENT]
    rendered = rendered_lora_modules(harness.container(manifests, LORA_DEPLOYMENT))
    assert [m["name"] for m in v["lora_modules"]] == [a["name"] for a in model["adapters"]]
    assert {m["name"]: m["path"] for m in v["lora_modules"]} == {
        name: str(spec.host_path(path)) for name, path in rendered.items()
    }
    # No base model named per adapter: vLLM lists each under the served model.
    assert all(m["base_model_name"] is None for m in v["lora_modules"])
    # Where the rendered paths live in the pod: a downloaded adapter on the /cache volume,
    # the PVC one under its read-only claim mount.
    assert rendered["support-bot"] == "/cache/adapters/support-bot"
    mounts = {
        m["mountPath"]: m for m in harness.container(manifests, LORA_DEPLOYMENT)["volumeMounts"]
    }
    claim_mount = next(p for p in mounts if rendered["sql-writer"].startswith(p + "/"))
    assert mounts[claim_mount].get("readOnly") is True


def test_vllm_accepts_the_adapter_files_at_the_rendered_paths(checked: Checked) -> None:
    result = checked.results[LORA_DEPLOYMENT]
    assert result.ok, f"vLLM rejects it at {result.stage}: {result.error}"
    adapters = {a["name"]: a for a in result.values["adapters"]}
    assert set(adapters) == set(ADAPTER_RANKS)
    for name, rank in ADAPTER_RANKS.items():
        assert adapters[name]["ok"], adapters[name]
        assert adapters[name]["r"] == rank
        assert adapters[name]["target_modules"] == ["q_proj", "v_proj"]


def test_models_without_adapters_get_no_lora(checked: Checked) -> None:
    for example in EXAMPLES:
        if example == LORA_EXAMPLE:
            continue
        for deployment in single_node_model_servers(checked.renders[example]):
            v = checked.results[deployment].values
            assert v["enable_lora"] is False and v["lora"] is None, deployment
            assert v["lora_modules"] == []


@pytest.mark.parametrize(
    ("job", "stage", "message"),
    [
        ("lora-malformed-module", "parse", "Invalid JSON format for --lora-modules: support-bot"),
        ("lora-rank-9", "parse", "argument --max-lora-rank: invalid choice: 9"),
        ("lora-cpu-below-max", "engine_config", "max_cpu_loras (1) must be >= max_loras (2)"),
        ("lora-rank-64-adapter", "adapters", "LoRA rank 64 is greater than max_lora_rank 16"),
        ("lora-missing-adapter", "adapters", "FileNotFoundError"),
    ],
)
def test_vllm_lora_checks_are_live(checked: Checked, job: str, stage: str, message: str) -> None:
    result = checked.results[job]
    assert not result.ok, f"{job} passed vLLM's check"
    assert result.stage == stage, (result.stage, result.error)
    assert message in result.error, result.error
    if stage == "adapters":
        # Only support-bot was replaced; the PVC adapter beside it still passes.
        verdicts = {a["name"]: a["ok"] for a in result.values["adapters"]}
        assert verdicts == {"support-bot": False, "sql-writer": True}


def test_vllm_rejects_an_unknown_flag(checked: Checked) -> None:
    result = checked.results["bogus-flag"]
    assert not result.ok
    assert result.stage == "parse"
    assert "--no-such-flag" in result.error


def test_vllm_config_validation_is_live(checked: Checked) -> None:
    result = checked.results["tp3"]
    assert not result.ok
    assert result.stage == "engine_config", result.output
    assert "divisible" in result.error, result.error


_SEARCH = textwrap.dedent(
    """
    import json, os, time
    import mlflow
    want = os.environ["REQUEST_ID"]
    found = []
    for _ in range(60):
        traces = mlflow.search_traces(locations=[os.environ["EXPERIMENT"]], return_type="list")
        found = []
        for t in traces:
            for s in t.data.spans:
                found.append({"name": s.name, "attributes": s.attributes or {}})
        if any(f["attributes"].get("gen_ai.request.id") == want for f in found):
            break
        time.sleep(0.5)
    print(json.dumps(found, default=str))
    """
)


def test_vllm_request_spans_reach_mlflow(
    mlflow_server: MLflowServer, hosts: HostMap, suite_dir: Path, log_dir: Path, vllm_env: Path
) -> None:
    manifests = mlflow_server.manifests
    deployment = single_node_model_servers(manifests)[0]
    standin = start_vllm_standin(
        manifests, deployment, hosts=hosts, workdir=suite_dir / "vllm-tracing", log_dir=log_dir
    )
    try:
        name = standin.check.values["served_model_name"]
        code, body = harness.http(
            f"{standin.base_url}/v1/chat/completions",
            method="POST",
            body={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        assert code == 200, body
        request_id = json.loads(body)["id"]
        spans: list[dict[str, Any]] = mlflow_server.run_client(
            _SEARCH,
            env=mlflow_server.client_env(
                {"REQUEST_ID": request_id, "EXPERIMENT": mlflow_server.experiment_id}
            ),
        )
    finally:
        standin.stop()
    mine = [s for s in spans if s["attributes"].get("gen_ai.request.id") == request_id]
    assert mine, (
        f"no span of request {request_id} in experiment {mlflow_server.experiment_id}: "
        f"{spans}\n{standin.running.log_tail()}"
    )
    assert mine[0]["name"] == "llm_request"


# --------------------------------------------------------------------------- metrics

DASHBOARD = harness.REPO_ROOT / "charts" / "aistack-operator" / "files" / "dashboard.json"
_VLLM_SERIES = re.compile(r"vllm:[A-Za-z0-9_:]+")
_RATE_OF = re.compile(r"\b(?:rate|irate|increase)\(\s*(vllm:[A-Za-z0-9_:]+)")


def dashboard_queries() -> list[str]:
    """Every PromQL query of the chart's Grafana dashboard (panels and variables)."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    out.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return out


@pytest.fixture(scope="module")
def vllm_exposition(vllm_env: Path, suite_dir: Path) -> tuple[str, list[Sample]]:
    """The served model name and what vLLM serves on ``/metrics`` for the quickstart's
    rendered model server (vllm_metrics.py: vLLM's stat logger after one recorded step)."""
    manifests = harness.render_example(harness.example("quickstart.yaml"))
    deployment = single_node_model_servers(manifests)[0]
    workdir = suite_dir / "vllm-metrics"
    spec, job = prepare_deployment(manifests, deployment, workdir)
    result = vllm_metrics(job, home=workdir / "home")
    assert result["status"] == 200, result
    served = _flag(serve_args(spec), "--served-model-name")
    assert served and result["served_model_name"] == served
    return served, harness.prometheus_samples(result["body"])


def test_dashboard_queries_only_series_vllm_exports(
    vllm_exposition: tuple[str, list[Sample]],
) -> None:
    served, samples = vllm_exposition
    queries = dashboard_queries()
    wanted = sorted({name for q in queries for name in _VLLM_SERIES.findall(q)})
    assert wanted, "the dashboard queries no vllm: series"
    # A series of the rendered model (the dashboard filters on model_name, the served name).
    exposed = {s.name: s.type for s in samples if s.labels.get("model_name") == served}
    missing = [name for name in wanted if name not in exposed]
    assert not missing, (
        f"the dashboard queries series vLLM does not export: {missing}; "
        f"vLLM exports {sorted(exposed)}"
    )
    # rate() of a counter or a histogram's buckets; a gauge is read as it is.
    rated = {name for q in queries for name in _RATE_OF.findall(q)}
    for name in wanted:
        if name in rated:
            assert exposed[name] in ("counter", "histogram"), (name, exposed[name])
        else:
            assert exposed[name] == "gauge", (name, exposed[name])
    # Live: the series vLLM's v0 engine exported as the KV-cache gauge is not there.
    assert "vllm:gpu_cache_usage_perc" not in exposed


def test_dashboard_series_carry_what_vllm_records(
    vllm_exposition: tuple[str, list[Sample]],
) -> None:
    served, samples = vllm_exposition

    def value(name: str, **labels: str) -> float:
        found = [
            s.value
            for s in samples
            if s.name == name
            and s.labels.get("model_name") == served
            and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    assert value("vllm:num_requests_running") == RECORDED["num_running_reqs"]
    assert value("vllm:num_requests_waiting") == RECORDED["num_waiting_reqs"]
    assert value("vllm:kv_cache_usage_perc") == RECORDED["kv_cache_usage"]
    assert value("vllm:prompt_tokens_total") == RECORDED["prompt_tokens"]
    assert value("vllm:generation_tokens_total") == RECORDED["generation_tokens"]
    assert value("vllm:time_to_first_token_seconds_bucket", le="+Inf") == 1
    assert value("vllm:time_to_first_token_seconds_bucket", le="0.01") == 0
    assert value("vllm:time_to_first_token_seconds_sum") == RECORDED["time_to_first_token"]


def test_autoscaling_reads_gauges_vllm_exports_under_the_served_name(
    vllm_exposition: tuple[str, list[Sample]],
) -> None:
    """Each autoscaling signal's series (``AUTOSCALING_METRICS``), as the autoscaling
    example's ScaledObjects query them, is a gauge vLLM exports for the served model,
    holding the requests vLLM recorded as waiting or running."""
    served, samples = vllm_exposition
    exposed = {s.name: (s.type, s.value) for s in samples if s.labels.get("model_name") == served}
    recorded = {
        "RequestsWaiting": RECORDED["num_waiting_reqs"],
        "RequestsRunning": RECORDED["num_running_reqs"],
    }
    assert set(recorded) == set(AUTOSCALING_METRICS)
    for signal, (series, _) in AUTOSCALING_METRICS.items():
        assert exposed.get(series) == ("gauge", recorded[signal]), (signal, series)
    queries = [
        m["spec"]["triggers"][0]["metadata"]["query"]
        for m in harness.render_example(harness.example("autoscaling.yaml"))
        if m["kind"] == "ScaledObject"
    ]
    assert {q.split("{")[0] for q in queries} == {
        f"sum({series}" for series, _ in AUTOSCALING_METRICS.values()
    }
