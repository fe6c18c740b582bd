"""The rendered LiteLLM gateway, run for real (see fixtures_gateway.py).

Each class starts one gateway (they all listen on the rendered port 4000) and stops it
when its tests are done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest
from fixtures_gateway import Gateway, gateway_config, routed_models, start_gateway, stopping
from fixtures_mlflow import MLflowServer
from harness import HostMap

KEY = "sk-conformance-gateway-key"


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


# --------------------------------------------------------------------------- quickstart


@pytest.fixture(scope="class")
def quickstart_gateway(
    mlflow_server: MLflowServer, hosts: HostMap, suite_dir: Path, log_dir: Path
) -> Iterator[Gateway]:
    """The quickstart's gateway (no key; MLflow on), next to the quickstart's real MLflow."""
    manifests = mlflow_server.manifests
    gateway = start_gateway(
        manifests, hosts=hosts, workdir=suite_dir / "gateway-quickstart", log_dir=log_dir
    )
    yield from stopping(gateway)


class TestQuickstartGateway:
    def test_probes_pass_without_credentials(self, quickstart_gateway: Gateway) -> None:
        # The kubelet's probes send no Authorization header.
        urls = harness.probe_urls(
            quickstart_gateway.manifests, quickstart_gateway.deployment, "127.0.0.1"
        )
        assert {kind for kind, _ in urls} == {"readinessProbe", "livenessProbe"}
        for _kind, url in urls:
            code, body = harness.http(url)
            assert code == 200, (url, body)

    def test_lists_exactly_the_routed_models(self, quickstart_gateway: Gateway) -> None:
        code, body = quickstart_gateway.get("/v1/models")
        assert code == 200, body
        assert sorted(m["id"] for m in body["data"]) == ["phi-3-5-mini"]
        assert routed_models(quickstart_gateway.manifests) == ["phi-3-5-mini"]

    def test_chat_reaches_the_model_and_answers_with_its_public_name(
        self, quickstart_gateway: Gateway
    ) -> None:
        stand_in = quickstart_gateway.stand_ins["phi-3-5-mini"]
        before = len(stand_in.requests())
        code, body = quickstart_gateway.post("/v1/chat/completions", chat("phi-3-5-mini"))
        assert code == 200, body
        assert body["choices"][0]["message"]["content"] == "stand-in for phi-3-5-mini"
        # The name the client asked for, not LiteLLM's internal `hosted_vllm/...`.
        assert body["model"] == "phi-3-5-mini"
        seen = stand_in.requests()[before:]
        assert [(r["path"], r["model"]) for r in seen] == [("/v1/chat/completions", "phi-3-5-mini")]

    def test_streamed_chunks_name_the_public_model(self, quickstart_gateway: Gateway) -> None:
        code, raw = harness.http(
            quickstart_gateway.url + "/v1/chat/completions",
            method="POST",
            body=chat("phi-3-5-mini", stream=True),
        )
        assert code == 200, raw
        chunks = [
            json.loads(line[len(b"data: ") :])
            for line in raw.splitlines()
            if line.startswith(b"data: ") and line != b"data: [DONE]"
        ]
        assert chunks, raw
        assert {c["model"] for c in chunks} == {"phi-3-5-mini"}

    def test_a_chat_completion_is_traced_in_mlflow(
        self, quickstart_gateway: Gateway, mlflow_server: MLflowServer
    ) -> None:
        marker = f"gateway-trace-{time.time_ns()}"
        code, body = quickstart_gateway.post(
            "/v1/chat/completions",
            {"model": "phi-3-5-mini", "messages": [{"role": "user", "content": marker}]},
        )
        assert code == 200, body
        experiment = rendered_trace_experiment(quickstart_gateway)
        code_text = f"""
import json, time, mlflow
deadline = time.time() + 60
found = []
while time.time() < deadline:
    traces = mlflow.search_traces(locations=[{experiment!r}], return_type="list")
    found = [t for t in traces if {marker!r} in json.dumps(t.to_dict(), default=str)]
    if found:
        break
    time.sleep(2)
print(json.dumps([t.info.trace_id for t in found]))
"""
        found = mlflow_server.run_client(code_text)
        assert found, (
            f"no trace with {marker} in experiment {experiment}:\n"
            f"{quickstart_gateway.running.log_tail(40)}"
        )


def rendered_trace_experiment(gateway: Gateway) -> str:
    """The experiment id the rendered gateway's OTLP headers name."""
    container = harness.container(gateway.manifests, gateway.deployment)
    env = {v["name"]: v.get("value") for v in container["env"]}
    headers = dict(
        pair.split("=", 1) for pair in (env.get("OTEL_HEADERS") or "").split(",") if pair
    )
    assert "x-mlflow-experiment-id" in headers, env
    assert env.get("OTEL_ENDPOINT", "").endswith("/v1/traces"), env
    return headers["x-mlflow-experiment-id"]


# --------------------------------------------------------------------------- a blocked model


@pytest.fixture(scope="class")
def denied_gateway(hosts: HostMap, suite_dir: Path, log_dir: Path) -> Iterator[Gateway]:
    """multi-model.yaml rendered with mixtral's license not permitted."""
    manifests = harness.render_example(harness.example("multi-model.yaml"), deny=["mixtral"])
    gateway = start_gateway(
        manifests, hosts=hosts, workdir=suite_dir / "gateway-denied", log_dir=log_dir
    )
    yield from stopping(gateway)


class TestBlockedModel:
    def test_lists_only_permitted_models(self, denied_gateway: Gateway) -> None:
        code, body = denied_gateway.get("/v1/models")
        assert code == 200, body
        assert sorted(m["id"] for m in body["data"]) == ["chat", "gpt-oss"]

    def test_no_route_to_the_blocked_model(self, denied_gateway: Gateway) -> None:
        # Something answers on the blocked model's Service address; the gateway must not
        # send it anything.
        blocked = denied_gateway.stand_ins["mixtral"]
        code, body = denied_gateway.post("/v1/chat/completions", chat("mixtral"))
        assert 400 <= code < 500, (code, body)
        assert blocked.requests() == []

    def test_permitted_model_is_served(self, denied_gateway: Gateway) -> None:
        code, body = denied_gateway.post("/v1/chat/completions", chat("chat"))
        assert code == 200, body
        assert body["choices"][0]["message"]["content"] == "stand-in for chat"
        assert body["model"] == "chat"


# --------------------------------------------------------------------------- with a key


@pytest.fixture(scope="class")
def keyed_gateway(hosts: HostMap, suite_dir: Path, log_dir: Path) -> Iterator[Gateway]:
    """external-stores.yaml: the gateway's key comes from the Secret gateway-key/key."""
    manifests = harness.render_example(harness.example("external-stores.yaml"))
    gateway = start_gateway(
        manifests,
        hosts=hosts,
        workdir=suite_dir / "gateway-keyed",
        log_dir=log_dir,
        secrets={("gateway-key", "key"): KEY},
        key=KEY,
    )
    yield from stopping(gateway)


class TestKeyedGateway:
    def test_probes_pass_without_credentials(self, keyed_gateway: Gateway) -> None:
        for _kind, url in harness.probe_urls(
            keyed_gateway.manifests, keyed_gateway.deployment, "127.0.0.1"
        ):
            code, body = harness.http(url)
            assert code == 200, (url, body)

    @pytest.mark.parametrize("key", ["", "sk-wrong"])
    def test_requests_without_the_key_are_refused(self, keyed_gateway: Gateway, key: str) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for method, path, body in (
            ("GET", "/v1/models", None),
            ("POST", "/v1/chat/completions", chat("qwen-7b")),
        ):
            code, out = harness.http(
                keyed_gateway.url + path, method=method, body=body, headers=headers
            )
            if key:
                # LiteLLM looks a key that is not the master key up in its database; with
                # none configured it refuses with 400 "No connected db".
                assert code in (400, 401), (path, code, out)
            else:
                assert code == 401, (path, code, out)
        assert keyed_gateway.stand_ins["qwen-7b"].requests() == []

    def test_requests_with_the_key_are_served(self, keyed_gateway: Gateway) -> None:
        code, body = keyed_gateway.get("/v1/models")
        assert code == 200, body
        assert [m["id"] for m in body["data"]] == ["qwen-7b"]
        code, body = keyed_gateway.post("/v1/chat/completions", chat("qwen-7b"))
        assert code == 200, body
        assert body["model"] == "qwen-7b"
        assert body["choices"][0]["message"]["content"] == "stand-in for qwen-7b"


# --------------------------------------------------------------------------- LoRA adapters


LORA_BASE = "qwen-7b"
LORA_ADAPTERS = ["support-bot", "sql-writer"]


@pytest.fixture(scope="class")
def lora_gateway(hosts: HostMap, suite_dir: Path, log_dir: Path) -> Iterator[Gateway]:
    """examples/lora.yaml: qwen-7b and its two adapters behind the gateway (no key). The
    model's stand-in runs with the rendered args, ``--lora-modules`` included."""
    manifests = harness.render_example(harness.example("lora.yaml"))
    gateway = start_gateway(
        manifests, hosts=hosts, workdir=suite_dir / "gateway-lora", log_dir=log_dir
    )
    yield from stopping(gateway)


class TestLoraGateway:
    def test_each_adapter_is_routed_to_its_base_models_server(self, lora_gateway: Gateway) -> None:
        routes = {
            r["model_name"]: r["litellm_params"]
            for r in gateway_config(lora_gateway.manifests)["model_list"]
        }
        assert sorted(routes) == sorted([LORA_BASE, *LORA_ADAPTERS])
        for adapter in LORA_ADAPTERS:
            assert routes[adapter]["api_base"] == routes[LORA_BASE]["api_base"]
            assert routes[adapter]["model"] == f"hosted_vllm/{adapter}"

    def test_lists_the_model_and_its_adapters(self, lora_gateway: Gateway) -> None:
        code, body = lora_gateway.get("/v1/models")
        assert code == 200, body
        assert sorted(m["id"] for m in body["data"]) == sorted([LORA_BASE, *LORA_ADAPTERS])
        # The model server lists each adapter under the served model, as vLLM does.
        stand_in = lora_gateway.stand_ins[LORA_BASE]
        code, raw = harness.http(f"http://{stand_in.address}:{stand_in.port}/v1/models")
        assert code == 200, raw
        cards = {m["id"]: m for m in json.loads(raw)["data"]}
        assert sorted(cards) == sorted([LORA_BASE, *LORA_ADAPTERS])
        assert all(cards[a]["parent"] == LORA_BASE for a in LORA_ADAPTERS), cards

    @pytest.mark.parametrize("adapter", LORA_ADAPTERS)
    def test_chat_with_an_adapter_reaches_its_base_model_server(
        self, lora_gateway: Gateway, adapter: str
    ) -> None:
        stand_in = lora_gateway.stand_ins[LORA_BASE]
        before = len(stand_in.requests())
        code, body = lora_gateway.post("/v1/chat/completions", chat(adapter))
        assert code == 200, body
        # Served by the base model's server under the adapter's name: vLLM applies the
        # adapter the request names.
        assert body["model"] == adapter
        assert body["choices"][0]["message"]["content"] == f"stand-in for {adapter}"
        seen = stand_in.requests()[before:]
        assert [(r["path"], r["model"]) for r in seen] == [("/v1/chat/completions", adapter)]

    def test_the_base_model_is_still_served(self, lora_gateway: Gateway) -> None:
        stand_in = lora_gateway.stand_ins[LORA_BASE]
        before = len(stand_in.requests())
        code, body = lora_gateway.post("/v1/chat/completions", chat(LORA_BASE))
        assert code == 200, body
        assert body["model"] == LORA_BASE
        assert [r["model"] for r in stand_in.requests()[before:]] == [LORA_BASE]

    def test_an_unknown_adapter_name_is_refused(self, lora_gateway: Gateway) -> None:
        stand_in = lora_gateway.stand_ins[LORA_BASE]
        before = len(stand_in.requests())
        code, body = lora_gateway.post("/v1/chat/completions", chat("support-bot-v2"))
        assert 400 <= code < 500, (code, body)
        assert stand_in.requests()[before:] == []
