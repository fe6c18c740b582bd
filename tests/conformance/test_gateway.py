"""The rendered LiteLLM gateway, run for real (see fixtures_gateway.py).

Each class starts one gateway (they all listen on the rendered port 4000) and stops it
when its tests are done.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import harness
import pytest
from fixtures_gateway import (
    Gateway,
    gateway_config,
    model_servers,
    routed_models,
    start_gateway,
    start_standin,
    stopping,
)
from fixtures_mlflow import MLflowServer
from harness import HostMap, Sample

from aistack.components import GATEWAY_METRICS_PATH

KEY = "sk-conformance-gateway-key"
#: LiteLLM's counter of requests through the proxy, as exposed (a counter: ``_total``)
REQUESTS_COUNTER = "litellm_proxy_total_requests_metric_total"


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


# --------------------------------------------------------------------------- metrics


def metrics_url(gateway: Gateway) -> str:
    """The path the stack's PodMonitor scrapes (``components``' scrape of the gateway, as
    ``render`` writes it into the PodMonitor), on the rendered container's port named
    ``http`` (LiteLLM serves it in the proxy's own process)."""
    port = gateway.port("http")
    assert port is not None, "the rendered gateway container has no port named http"
    return f"http://127.0.0.1:{port}{GATEWAY_METRICS_PATH}"


def get_without_redirects(url: str) -> tuple[int, dict[str, str]]:
    """``GET url`` as a scraper with ``followRedirects: false`` does: the first answer."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def series(samples: list[Sample], name: str, model: str, **labels: str) -> float:
    """The sum of the samples ``name`` for requests that named ``model`` (and ``labels``)."""
    return sum(
        s.value
        for s in samples
        if s.name == name
        and s.labels.get("requested_model") == model
        and all(s.labels.get(k) == v for k, v in labels.items())
    )


def diagnosis(gateway: Gateway, samples: list[Sample]) -> str:
    """What /metrics served, and the end of the gateway's log."""
    log = [ln for ln in gateway.running.log_tail(200).splitlines() if "cost_map" not in ln]
    served = sorted({s.name for s in samples if s.name.startswith("litellm_")})
    return f"litellm series served: {served}\n" + "\n".join(log[-25:])


def count_a_request(
    gateway: Gateway, model: str, key: str | None, scrape_key: str | None = None
) -> list[Sample]:
    """Send one chat request (with ``key``), then scrape the rendered port's /metrics (with
    ``scrape_key``, none by default) until LiteLLM's request counter has counted it (it
    counts in a callback after the answer); the samples then. The request is told apart
    from the other tests' by its User-Agent (a label of the counter)."""
    url = metrics_url(gateway)
    scrape_headers = {"Authorization": f"Bearer {scrape_key}"} if scrape_key else {}
    agent = f"aistack-conformance-{uuid.uuid4().hex[:12]}"
    code, body = harness.http(
        gateway.url + "/v1/chat/completions",
        method="POST",
        body=chat(model),
        headers={**gateway.headers(key), "User-Agent": agent},
    )
    assert code == 200, body
    deadline = time.monotonic() + 30
    samples = harness.scrape(url, headers=scrape_headers)
    while not series(samples, REQUESTS_COUNTER, model, user_agent=agent):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
        samples = harness.scrape(url, headers=scrape_headers)
    counted = series(samples, REQUESTS_COUNTER, model, user_agent=agent, status_code="200")
    assert counted == 1, (
        f"{REQUESTS_COUNTER} for {model} from {agent} is {counted}, not 1\n"
        f"{diagnosis(gateway, samples)}"
    )
    return samples


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
        found = traces_with(mlflow_server, experiment, marker)
        assert found, (
            f"no trace with {marker} in experiment {experiment}:\n"
            f"{quickstart_gateway.running.log_tail(40)}"
        )

    def test_a_clients_trace_context_reaches_the_model_server_and_names_the_trace(
        self, quickstart_gateway: Gateway, mlflow_server: MLflowServer
    ) -> None:
        """One trace per request when the client sends its W3C trace context: the gateway's
        span is in the client's trace, and the model server gets the same context (vLLM's
        tracer continues it). The gateway's own span cannot be the model server's parent:
        LiteLLM writes it after the answer (README, Tracing)."""
        gateway = quickstart_gateway
        assert (
            gateway_config(gateway.manifests)["litellm_settings"][
                "forward_traceparent_to_llm_provider"
            ]
            is True
        )
        stand_in = gateway.stand_ins["phi-3-5-mini"]
        trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        traceparent = f"00-{trace_id}-{parent}-01"
        marker = f"traceparent-{time.time_ns()}"
        before = len(stand_in.requests())
        code, body = harness.http(
            gateway.url + "/v1/chat/completions", method="POST",
            body={"model": "phi-3-5-mini", "messages": [{"role": "user", "content": marker}]},
            headers={"traceparent": traceparent},
        )  # fmt: skip
        assert code == 200, body
        (seen,) = stand_in.requests()[before:]
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert headers.get("traceparent") == traceparent, headers
        # The gateway's span is in that trace (MLflow names OTLP traces tr-<trace id>).
        experiment = rendered_trace_experiment(gateway)
        found = traces_with(mlflow_server, experiment, marker)
        assert [t.removeprefix("tr-") for t in found] == [trace_id], found
        # Without a client's context, the model server is sent none.
        before = len(stand_in.requests())
        code, body = gateway.post(
            "/v1/chat/completions",
            {"model": "phi-3-5-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert code == 200, body
        (seen,) = stand_in.requests()[before:]
        assert "traceparent" not in {k.lower() for k in seen["headers"]}

    def test_metrics_count_a_chat_request_without_a_key(self, quickstart_gateway: Gateway) -> None:
        gateway = quickstart_gateway
        callbacks = gateway_config(gateway.manifests)["litellm_settings"]["callbacks"]
        assert callbacks == ["otel", "prometheus"]
        count_a_request(gateway, "phi-3-5-mini", key=None)

    def test_the_monitors_path_answers_without_a_redirect(
        self, quickstart_gateway: Gateway
    ) -> None:
        # A scrape config with followRedirects: false gets the first answer only. LiteLLM
        # answers /metrics with a redirect to /metrics/: the PodMonitor names the latter.
        doc = harness.example_documents("quickstart.yaml")
        stack = harness.example_stack(doc)
        stack["spec"]["monitoring"] = {"enabled": True}
        path = harness.write_documents(Path(quickstart_gateway.spec.workdir or ".") / "mon.yaml",
                                       [stack])  # fmt: skip
        (monitor,) = [
            m for m in harness.of_kind(harness.render_example(path), "PodMonitor")
            if m["metadata"]["name"].endswith("-gateway")
        ]  # fmt: skip
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["path"] == GATEWAY_METRICS_PATH
        port = quickstart_gateway.port(endpoint["port"])
        code, headers = get_without_redirects(f"http://127.0.0.1:{port}{endpoint['path']}")
        assert code == 200, headers
        assert headers["content-type"].startswith("text/plain"), headers
        code, headers = get_without_redirects(f"http://127.0.0.1:{port}/metrics")
        assert (code, headers.get("location", "").endswith("/metrics/")) == (307, True), headers

    def test_metrics_report_request_latency(self, quickstart_gateway: Gateway) -> None:
        # docs/observability.md: the gateway exports request latency, per public model name.
        samples = count_a_request(quickstart_gateway, "phi-3-5-mini", key=None)
        latency = "litellm_request_total_latency_metric_count"
        assert series(samples, latency, "phi-3-5-mini") >= 1, (
            f"no {latency} for phi-3-5-mini\n{diagnosis(quickstart_gateway, samples)}"
        )


def traces_with(mlflow_server: MLflowServer, experiment: str, marker: str) -> list[str]:
    """The ids of the traces in ``experiment`` that hold ``marker``, as MLflow's own client
    finds them (waiting up to a minute for the first: the gateway exports them after the
    answer)."""
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
    found: list[str] = mlflow_server.run_client(code_text)
    return found


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

    def test_key_holders_read_the_metrics(self, keyed_gateway: Gateway) -> None:
        # The prometheus callback works on a keyed gateway too; only its scraper needs the
        # key, so the stack renders no PodMonitor for it (tests/test_monitoring.py).
        count_a_request(keyed_gateway, "qwen-7b", key=KEY, scrape_key=KEY)

    @pytest.mark.parametrize("key", ["", "sk-wrong"])
    def test_main_ports_metrics_needs_the_key(self, keyed_gateway: Gateway, key: str) -> None:
        url = keyed_gateway.url + "/metrics"
        code, body = harness.http(url, headers={"Authorization": f"Bearer {key}"} if key else {})
        assert code in (401, 403), (code, body[:400])
        code, body = harness.http(url, headers=keyed_gateway.headers())
        assert code == 200, (code, body[:400])


# --------------------------------------------------------------------------- no metrics


@pytest.fixture(scope="class")
def unmonitored_gateway(hosts: HostMap, suite_dir: Path, log_dir: Path) -> Iterator[Gateway]:
    """The quickstart with ``spec.monitoring.enabled: false`` (as ``unmonitored``)."""
    documents = harness.example_documents("quickstart.yaml")
    stack = harness.example_stack(documents)
    stack["metadata"]["name"] = "unmonitored"
    stack["spec"]["monitoring"] = {"enabled": False}
    gateway = start_gateway(
        harness.render_example(harness.write_documents(suite_dir / "unmonitored.yaml", documents)),
        hosts=hosts,
        workdir=suite_dir / "gateway-unmonitored",
        log_dir=log_dir,
    )
    yield from stopping(gateway)


class TestGatewayWithoutMetrics:
    def test_renders_no_prometheus_callback(self, unmonitored_gateway: Gateway) -> None:
        gateway = unmonitored_gateway
        # MLflow is still on: its trace callback stays, alone.
        assert gateway_config(gateway.manifests)["litellm_settings"]["callbacks"] == ["otel"]

    def test_serves_no_litellm_metrics(self, unmonitored_gateway: Gateway) -> None:
        gateway = unmonitored_gateway
        code, body = gateway.post("/v1/chat/completions", chat("phi-3-5-mini"))
        assert code == 200, body
        # The gateway's own /metrics (no key here) counts no requests.
        code, out = harness.http(gateway.url + "/metrics")
        if code == 200:
            samples = harness.prometheus_samples(out.decode())
            assert not [s for s in samples if s.name.startswith("litellm_proxy_")], samples
        else:
            assert code == 404, (code, out[:400])


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


# --------------------------------------------------------------------------- sleeping models


HELD_GAUGE = "aistack_gateway_held_requests"


def held(gateway: Gateway, model: str) -> float | None:
    """What the gateway's /metrics (where its PodMonitor scrapes) says it holds for ``model``."""
    code, out = harness.http(gateway.url + "/metrics")
    assert code == 200, out[:400]
    found = [
        s.value
        for s in harness.prometheus_samples(out.decode())
        if s.name == HELD_GAUGE and s.labels.get("model") == model
    ]
    return found[0] if len(found) == 1 else None


@pytest.fixture(scope="class")
def elastic_gateway(hosts: HostMap, suite_dir: Path, log_dir: Path) -> Iterator[Gateway]:
    """examples/autoscaling.yaml's gateway: ``coder`` may sleep (minReplicas 0), ``chat``
    may not. Its MLflow is not running: the traces' exporter fails off the request path."""
    manifests = harness.render_example(harness.example("autoscaling.yaml"))
    gateway = start_gateway(
        manifests, hosts=hosts, workdir=suite_dir / "gateway-elastic", log_dir=log_dir
    )
    yield from stopping(gateway)


class TestSleepingModel:
    """A request to a model at zero replicas (its Service refuses connections, as Kubernetes
    does without a ready endpoint) is held by the rendered gateway until a server is up,
    then answered; meanwhile the gateway counts it where the model's ScaledObject reads."""

    def test_only_the_model_that_may_sleep_is_held(self, elastic_gateway: Gateway) -> None:
        config = gateway_config(elastic_gateway.manifests)
        assert config["litellm_settings"]["callbacks"][0] == "aistack_hold.proxy_handler_instance"
        # Both gauges exist from the start, at 0: the ScaledObject's query has a series.
        assert held(elastic_gateway, "coder") == 0
        assert held(elastic_gateway, "chat") is None

    def test_a_request_waits_for_the_model_to_wake_and_is_answered(
        self, elastic_gateway: Gateway, suite_dir: Path, log_dir: Path, hosts: HostMap
    ) -> None:
        import threading

        gateway = elastic_gateway
        asleep = gateway.stand_ins.pop("coder")
        asleep.running.stop()
        answer: dict[str, object] = {}

        def ask() -> None:
            answer["reply"] = gateway.post("/v1/chat/completions", chat("coder"))
            answer["at"] = time.monotonic()

        asker = threading.Thread(target=ask)
        asker.start()
        deadline = time.monotonic() + 30
        while held(gateway, "coder") != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert held(gateway, "coder") == 1, gateway.running.log_tail(80)
        # Asleep, the model is still listed, and the other model still answers at once.
        code, body = gateway.get("/v1/models")
        assert code == 200 and "coder" in {m["id"] for m in body["data"]}, body
        code, body = gateway.post("/v1/chat/completions", chat("chat"))
        assert code == 200, body
        time.sleep(3)  # held longer than LiteLLM's own retries would have waited
        assert asker.is_alive() and held(gateway, "coder") == 1
        (svc, dep) = next(
            (s, d)
            for s, d in model_servers(gateway.manifests)
            if s["metadata"]["name"] == asleep.service
        )
        woken = start_standin(gateway.manifests, svc, dep, hosts=hosts,
                              workdir=suite_dir / "gateway-elastic", log_dir=log_dir)  # fmt: skip
        up = time.monotonic()
        gateway.stand_ins["coder"] = woken
        asker.join(60)
        code, body = answer["reply"]  # type: ignore[misc]
        assert code == 200, body
        assert body["model"] == "coder"
        # Answered soon after the server came up (the hold looks every 0.1 s).
        assert float(answer["at"]) - up < 5  # type: ignore[arg-type]
        assert [r["model"] for r in woken.requests()] == ["coder"]
        assert held(gateway, "coder") == 0

    def test_a_held_request_gives_up_after_the_wake_timeout(self, elastic_gateway: Gateway) -> None:
        """As rendered, the wait is the model's wakeTimeoutSeconds (here 900 s): the hook's
        own file says so, read from the ConfigMap the gateway mounts."""
        cm = next(
            m for m in elastic_gateway.manifests
            if m["kind"] == "ConfigMap" and "aistack_hold.py" in m.get("data", {})
        )  # fmt: skip
        assert json.loads(cm["data"]["hold.json"]) == {"coder": {"model": "coder", "wait": 900}}


# --------------------------------------------------------------------------- retries


def retrying_stack(retries: int, wait: int) -> list[harness.Manifest]:
    """The quickstart with a second model that the first falls back to, and the gateway's
    retries set (no MLflow: the tries are what is looked at)."""
    documents = harness.example_documents("quickstart.yaml")
    stack = harness.example_stack(documents)
    first = stack["spec"]["models"][0]
    stack["spec"]["models"] = [first, {**first, "name": "backup"}]
    stack["spec"]["mlflow"] = {"enabled": False}
    stack["spec"]["gateway"] = {
        "fallbacks": [{"model": first["name"], "to": ["backup"]}],
        "retries": retries,
        "retryAfterSeconds": wait,
    }
    return documents


@pytest.fixture(scope="class")
def retrying_gateway(hosts: HostMap, suite_dir: Path, log_dir: Path) -> Iterator[Gateway]:
    workdir = suite_dir / "gateway-retrying"
    path = harness.write_documents(workdir / "stack.yaml", retrying_stack(retries=1, wait=2))
    gateway = start_gateway(
        harness.render_example(path), hosts=hosts, workdir=workdir, log_dir=log_dir
    )
    yield from stopping(gateway)


class TestRetries:
    def test_a_failing_route_is_tried_again_then_its_fallback(
        self, retrying_gateway: Gateway
    ) -> None:
        gateway = retrying_gateway
        router = gateway_config(gateway.manifests)["router_settings"]
        assert (router["num_retries"], router["retry_after"]) == (1, 2)
        first, backup = gateway.stand_ins["phi-3-5-mini"], gateway.stand_ins["backup"]
        code, out = harness.http(
            f"http://{first.address}:{first.port}/standin/fail", method="POST",
            body={"status": 500},
        )  # fmt: skip
        assert code == 200, out
        tried = len(first.requests())
        served = len(backup.requests())
        code, body = gateway.post(
            "/v1/chat/completions",
            {"model": "phi-3-5-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert code == 200, body
        assert body["choices"][0]["message"]["content"] == "stand-in for backup"
        attempts = first.requests()[tried:]
        answered = backup.requests()[served:]
        # One try and one retry (retries: 1), then the fallback once.
        assert [r["model"] for r in attempts] == ["phi-3-5-mini", "phi-3-5-mini"]
        assert [r["model"] for r in answered] == ["backup"]
        # In that order, the retry after the wait (retryAfterSeconds: 2).
        assert attempts[1]["time"] - attempts[0]["time"] >= 2 - 0.1, attempts
        assert answered[0]["time"] >= attempts[1]["time"]
