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
