"""vLLM conformance: vLLM itself (the default image's version and packages) judges every
rendered ``vllm serve`` command line, and the rendered tracing settings carry a request
span from vLLM's tracer setup to the rendered MLflow.

- every single-node model server of every example: vLLM's ``serve`` parser, serve-argument
  validation and engine config accept the rendered args and env, and settle on the values
  the render meant (name, host, port, parallelism, context length, revision, endpoint);
- the check is live: an unknown flag fails in the parser, a tensor-parallel size the model's
  attention heads do not divide fails in the config; the image's OpenTelemetry imports, so
  the rendered ``--otlp-traces-endpoint`` gets a tracer;
- tracing: a stand-in on the rendered args, with vLLM's ``init_tracer`` on the rendered
  endpoint and ``OTEL_*`` env, exports one ``llm_request`` span per request, which
  ``mlflow.search_traces`` finds in the rendered experiment of the rendered MLflow.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import pytest
from fixtures_mlflow import MLflowServer
from fixtures_vllm import (
    CheckJob,
    CheckResult,
    prepare_deployment,
    serve_args,
    single_node_model_servers,
    start_vllm_standin,
    vllm_check_batch,
)
from harness import HostMap, Manifest, ProcessSpec

EXAMPLES = ["quickstart.yaml", "multi-model.yaml", "external-stores.yaml"]


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
    results = vllm_check_batch(list(jobs.values()), home=workdir / "home")
    return Checked(renders, specs, dict(zip(jobs, results, strict=True)))


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
        rendered_len = _flag(args, "--max-model-len")
        if rendered_len is not None:
            assert v["max_model_len"] == int(rendered_len)
        assert v["revision"] == _flag(args, "--revision")
        assert v["load_format"] == (_flag(args, "--load-format") or "auto")
        # Tracing: the endpoint passed vLLM's check and the image's OpenTelemetry imports.
        assert v["otlp_traces_endpoint"] == _flag(args, "--otlp-traces-endpoint")
        assert v["otlp_traces_endpoint"], "the render sends no traces to MLflow"
        assert v["otel_available"] is True


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
