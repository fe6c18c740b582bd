"""The GPU smoke check (gpu_smoke.py, ``make gpu-smoke``) needs a GPU to serve, but what it
feeds vLLM can be judged here: the model it builds and the argv it renders for it."""

from __future__ import annotations

import json
from pathlib import Path

import gpu_smoke
import harness
import yaml
from fixtures_vllm import serve_args, vllm_check


def test_the_smoke_model_and_its_rendered_argv_pass_vllms_check(
    vllm_env: Path, suite_dir: Path
) -> None:
    work = suite_dir / "gpu-smoke"
    manifests, model = gpu_smoke.prepare(work)
    claim = model.host_path("/mnt/models/tiny")
    config = json.loads((claim / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (claim / "model.safetensors").is_file()
    assert (claim / "tokenizer.json").is_file()

    result = vllm_check(serve_args(model), model.env, home=work / "home")
    assert result.ok, f"{result.stage}: {result.error}\n{result.output}"
    assert result.values["served_model_name"] in ("tiny", ["tiny"])
    assert result.values["max_model_len"] == 256

    # The gateway it starts routes the model by its name.
    config_map = harness.find(manifests, "ConfigMap", "smoke-gateway-config")
    routes = yaml.safe_load(config_map["data"]["config.yaml"])["model_list"]
    assert [r["model_name"] for r in routes] == ["tiny"]


def test_the_multi_node_smoke_pods_pass_vllms_check(vllm_env: Path, suite_dir: Path) -> None:
    # `make gpu-smoke GPU_SMOKE_ARGS=--multi-node` (2 GPUs or more): the leader and the
    # headless worker of one LeaderWorkerSet group, each on a GPU of its own, the leader's
    # address this machine's loopback.
    work = suite_dir / "gpu-smoke-multi-node"
    manifests, specs = gpu_smoke.prepare_multi_node(work)
    assert harness.workload(manifests, gpu_smoke.MODEL_LWS)["kind"] == "LeaderWorkerSet"
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0", "1"]
    # Both pods mount the one claim the model was built in.
    claims = [s.host_path("/mnt/models/tiny").resolve() for s in specs]
    assert claims[0] == claims[1] and (claims[0] / "config.json").is_file()
    for rank, spec in enumerate(specs):
        args = serve_args(spec)
        assert ("--headless" in args) == (rank > 0)
        # The GPU each pod is given is the smoke's own setting, not the render's: the check
        # runs on no GPU.
        env = {k: v for k, v in spec.env.items() if k != "CUDA_VISIBLE_DEVICES"}
        result = vllm_check(args, env, home=work / "home")
        assert result.ok, f"{result.stage}: {result.error}\n{result.output}"
        values = result.values
        assert (values["nnodes"], values["node_rank"]) == (2, rank)
        assert (values["master_addr"], values["pipeline_parallel_size"]) == ("127.0.0.1", 2)
        assert values["distributed_executor_backend"] == "mp"
